"""The farm end to end on a batch of clips vs the same ffmpeg commands run directly, K at a time.

Farm: `vidfarm up --min-workers K --max-workers K` (own Redis, own VIDFARM_HOME in a temp dir), the
K workers already up; every clip is uploaded over HTTP, then we wait until all are ready. Measured
from the first upload's start to the last `ready` seen (status polled every 50 ms); upload time is
shown apart, and the CPU seconds of the whole farm process tree (API, Redis, autoscaler, workers
and their ffmpegs) over the batch, which a noisy shared box disturbs much less than wall time.
Direct: for each clip every ffmpeg the worker runs for its job graph (issue 13), built by the same
builders: the chunk job (`chunk_args`; these clips are one chunk, and `segment_args` per rung), the
audio job (`audio_args`, its segments included), and finalize's stream copies (`stitch_args` per
download) and poster (`poster_args`), one after the other per clip, K clips at a time in a thread pool. (The farm
may run a clip's chunk and audio jobs on two workers at once; over a batch of clips both sides keep
K ffmpegs busy.)

    python bench/farm_overhead.py --clips 8 --seconds 10 --workers 2 --reps 3
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _common import (
    LocalFarm,
    cpu_by_role,
    graph_commands,
    ladder_plans,
    machine,
    make_clip,
    median,
    source_info,
    table,
    temp_dir,
    tree_cpu_s,
    upload_file,
    wait_terminal,
)

from vidfarm.chunks import DEFAULT_CHUNK_SECONDS
from vidfarm.states import VideoStatus


def parse_args(doc: str = __doc__, *, seconds: float = 6, size: str = "1920x1080", reps: int = 2) -> argparse.Namespace:
    """A batch of clips on K workers, reps alternating (s3_farm.py takes the same options)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4, help="clips in the batch (default 4)")
    parser.add_argument("--seconds", type=float, default=seconds, help=f"length of each clip (default {seconds:g})")
    parser.add_argument("--size", default=size, help=f"clip size (default {size})")
    parser.add_argument("--workers", type=int, default=2, help="parallelism K on both sides (default 2)")
    parser.add_argument("--reps", type=int, default=reps, help=f"repetitions, order alternating (default {reps})")
    return parser.parse_args()


@dataclass(frozen=True)
class Side:
    wall_s: float
    cpu_s: float
    upload_s: float
    roles: dict[str, float] | None = None


# -- direct ---------------------------------------------------------------------------------------


def worker_commands(source: Path, out: Path) -> list[list[str]]:
    """What the workers run for one video with the default ladder and chunk length (the farm's
    defaults: `farm_env` passes no VIDFARM_ setting)."""
    info = source_info(source)
    return graph_commands(source, info, ladder_plans(info), out / source.stem, chunk_s=DEFAULT_CHUNK_SECONDS).all


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_direct(clips: list[Path], out: Path, workers: int) -> Side:
    commands = [worker_commands(clip, out) for clip in clips]

    def one(cmds: list[list[str]]) -> None:
        for cmd in cmds:
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    cpu, started = children_cpu_s(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, commands))
    return Side(time.perf_counter() - started, children_cpu_s() - cpu, 0.0)


# -- farm -----------------------------------------------------------------------------------------


def run_farm(farm: LocalFarm, clips: list[Path]) -> Side:
    with farm.client() as http:
        before, cpu, started = cpu_by_role(farm.pid), tree_cpu_s(farm.pid), time.perf_counter()
        ids = [upload_file(http, clip)["id"] for clip in clips]
        uploaded = time.perf_counter() - started
        seen = wait_terminal(http, ids)
        cpu = tree_cpu_s(farm.pid) - cpu
        after = cpu_by_role(farm.pid)
    failed = {vid: status for vid, (status, _) in seen.items() if status != VideoStatus.READY}
    if failed:
        raise RuntimeError(f"videos not ready: {failed}")
    roles = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
    return Side(max(at for _, at in seen.values()) - started, cpu, uploaded, roles)


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    direct: list[Side] = []
    farm_runs: list[Side] = []
    with temp_dir("bench-farm-overhead-") as work:
        clips = [make_clip(work / "clips" / f"clip{i}.mp4", args.seconds, size=args.size)
                 for i in range(args.clips)]
        with LocalFarm(work / "home", min_workers=args.workers, max_workers=args.workers,
                       scale_down_after_s=600) as farm:
            farm.wait_workers(args.workers)
            for rep in range(args.reps):
                out = work / f"direct{rep}"
                out.mkdir()
                runs = [lambda: farm_runs.append(run_farm(farm, clips)),
                        lambda out=out: direct.append(run_direct(clips, out, args.workers))]
                for run in runs if rep % 2 == 0 else reversed(runs):
                    run()
                f, d = farm_runs[-1], direct[-1]
                print(f"rep {rep + 1}: farm {f.wall_s:.2f} s wall {f.cpu_s:.1f} CPU s (upload {f.upload_s:.2f} s), "
                      f"direct {d.wall_s:.2f} s wall {d.cpu_s:.1f} CPU s", flush=True)
        print(f"farm stopped with SIGTERM; processes left behind: {len(farm.leftovers)}")
    report(args, direct, farm_runs)


def report(args: argparse.Namespace, direct: list[Side], farm_runs: list[Side]) -> None:
    pairs = list(zip(direct, farm_runs, strict=True))
    wall = [100 * (f.wall_s / d.wall_s - 1) for d, f in pairs]
    cpu = [100 * (f.cpu_s / d.cpu_s - 1) for d, f in pairs]
    print()
    print(f"batch: {args.clips} clips {args.size}@30 {args.seconds:g} s testsrc2+sine, ladder 1080p+720p "
          f"(chunk + audio + stitch + HLS/DASH segments + poster), x264 veryfast, K={args.workers}; "
          f"{args.reps} reps, order alternating; {machine()}")
    print()
    rows = [[i + 1, d.wall_s, f.wall_s, f.upload_s, w, d.cpu_s, f.cpu_s, c]
            for i, ((d, f), w, c) in enumerate(zip(pairs, wall, cpu, strict=True))]
    rows.append(["median", median(d.wall_s for d in direct), median(f.wall_s for f in farm_runs),
                 median(f.upload_s for f in farm_runs), median(wall), median(d.cpu_s for d in direct),
                 median(f.cpu_s for f in farm_runs), median(cpu)])
    print(table(["rep", "direct wall s", "farm wall s", "farm uploading s", "wall overhead %",
                 "direct CPU s", "farm CPU s", "CPU overhead %"], rows))
    print("(farm wall: first upload start -> last ready; farm CPU: the whole `vidfarm up` process tree)")
    print()
    roles = sorted({role for f in farm_runs for role in f.roles or {}})
    print(table(["farm CPU by process (median over reps)", "CPU s"],
                [[role, median((f.roles or {}).get(role, 0.0) for f in farm_runs)] for role in roles]))
    print(f"\ntarget overhead <= 5 %: wall {'met' if median(wall) <= 5 else 'MISSED'} ({median(wall):.1f} %), "
          f"CPU {'met' if median(cpu) <= 5 else 'MISSED'} ({median(cpu):.1f} %)")


if __name__ == "__main__":
    main()
