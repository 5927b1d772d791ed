"""The API's CPU time per GiB uploaded: this checkout against an earlier revision, side by side.

Two `vidfarm api` processes, one from this checkout and one from a `git archive` of `--baseline`,
each with its own private redis-server, SQLite catalog and storage directory, take the same streamed
upload (a 1 s MP4 padded with zeros to the size: accepted, so probe, catalog row and enqueue run
too) in alternation. CPU = user + system time of the API process and its children (ffprobe), read
from /proc before and after each upload; it counts work done, so it varies far less on a shared
machine than wall time does.

    python bench/api_cpu.py --baseline 423d37c --size-mib 512 --reps 3
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from _common import ROOT, empty_files, machine, make_clip, median, table, temp_dir, tree_cpu_s
from upload_stream import MIB, start_api, upload_once

from vidfarm.localredis import LocalRedis


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against, e.g. a commit")
    parser.add_argument("--size-mib", type=int, default=512, help="body size in MiB (default 512)")
    parser.add_argument("--reps", type=int, default=3, help="uploads to each API (default 3)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    size = args.size_mib * MIB
    with temp_dir("bench-api-cpu-") as work:
        baseline = work / "baseline"
        unpack(args.baseline, baseline)
        head = make_clip(work / "head.mp4", 1, size="320x240").read_bytes()
        apis: dict[str, tuple] = {}
        try:
            for name, code in (("baseline", baseline), ("this checkout", ROOT)):
                redis_server = LocalRedis(work / name / "redis", persistent=False).start()
                proc, url = start_api(work / name, redis_server.url, cwd=code)
                apis[name] = (proc, url, redis_server)
            cpu: dict[str, list[float]] = {name: [] for name in apis}
            for rep in range(args.reps):
                for name, (proc, url, _) in apis.items():
                    before = tree_cpu_s(proc.pid)
                    result = upload_once(url, proc.pid, head, size)
                    cpu[name].append(tree_cpu_s(proc.pid) - before)
                    print(f"rep {rep + 1} {name}: HTTP {result.status}, {cpu[name][-1]:.2f} s CPU, "
                          f"{result.total_s:.2f} s wall", flush=True)
                    empty_files(work / name / "storage")
        finally:
            for proc, _, redis_server in apis.values():
                proc.terminate()
                proc.wait(timeout=30)
                redis_server.stop()
    report(args, cpu)


def unpack(revision: str, folder: Path) -> None:
    """The revision's files in `folder`: a `git archive`, not a worktree, so the repository (which
    other checkouts share) is left as it was."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)


def report(args: argparse.Namespace, cpu: dict[str, list[float]]) -> None:
    gib = args.size_mib / 1024
    rows = [[name, *(f"{c / gib:.2f}" for c in values), f"{median(values) / gib:.2f}"] for name, values in cpu.items()]
    print(f"\n{args.size_mib} MiB uploads, API CPU s per GiB (process + ffprobe), baseline = {args.baseline}; "
          f"{machine()}\n")
    print(table(["API", *(f"rep {i + 1}" for i in range(args.reps)), "median"], rows))
    ratio = median(cpu["this checkout"]) / median(cpu["baseline"])
    print(f"\nthis checkout / baseline: {ratio:.2f}")


if __name__ == "__main__":
    main()
