"""Peak memory of a worker's jobs (issue 9): what the worker Deployments' memory limits are sized from.

Runs exactly the ffmpeg commands the chunk, audio and finalize jobs build (`_common.graph_commands`,
which builds them as transcoder.job does) on short generated sources, and reads each ffmpeg's peak
RSS from wait4 (ru_maxrss of that one child). The chunk command is run once per `--threads` value
with the encoder's threads set as the worker sets them from VIDFARM_FFMPEG_THREADS (decoder, encoder
and filter graph); by default 2 and the CPU limit of deploy/k8s/base/worker-cpu.yaml, rounded up as
the downward API rounds it. Audio and finalize (stitch, segment, poster) take no thread options, so
they run once. Then `vidfarm up` with one worker transcodes the first source, and the worker
process's own peak (VmHWM, without its ffmpeg children) is read from /proc.

Sources, a few seconds each (testsrc2 + a tone): 1080p and 4K SDR H.264, 1080p PQ and HLG and 4K PQ
as 10-bit HEVC (tone-mapped by zscale in the chunk job). 1080p sources get the farm's default ladder
(1080p, 720p), 4K ones 2160p, 1440p, 1080p and 720p. Peaks are reached within the first second
(decoder frames, x264 lookahead and frame threads, filter buffers are all allocated up front), so
the length only has to cover a GOP or two.

    python bench/worker_memory.py                                  # everything (about 5 min, 2 cores)
    python bench/worker_memory.py --sources sdr-1080p --threads 2,4,auto --no-worker
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from _common import (
    ROOT,
    GraphCommands,
    LocalFarm,
    cmdline,
    graph_commands,
    ladder_plans,
    machine,
    source_info,
    table,
    temp_dir,
    upload_file,
    wait_terminal,
)

from transcoder.command import X264
from vidfarm.chunks import DEFAULT_CHUNK_SECONDS

WORKER_CPU = ROOT / "deploy" / "k8s" / "base" / "worker-cpu.yaml"
FULL_LADDER = ("2160p", "1440p", "1080p", "720p")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Source:
    name: str
    size: str
    rungs: tuple[str, ...] | None  # None: the farm's default ladder
    encode: tuple[str, ...]  # video encoding options of the generated file


SDR = ("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p")


def hdr(transfer: str) -> tuple[str, ...]:
    """10-bit HEVC tagged BT.2020 + PQ or HLG, as phones record it (what the probe marks for tone mapping)."""
    return ("-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
            "-x265-params", f"log-level=error:colorprim=bt2020:transfer={transfer}:colormatrix=bt2020nc",
            "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc")


SOURCES = {s.name: s for s in (
    Source("sdr-1080p", "1920x1080", None, SDR),
    Source("sdr-2160p", "3840x2160", FULL_LADDER, SDR),
    Source("pq-1080p", "1920x1080", None, hdr("smpte2084")),
    Source("hlg-1080p", "1920x1080", None, hdr("arib-std-b67")),
    Source("pq-2160p", "3840x2160", FULL_LADDER, hdr("smpte2084")),
    # Not run by default (slow to generate on a small machine): the farm accepts up to 8K
    # (VIDFARM_MAX_PIXELS), and decoding and tone mapping work at the source's size.
    Source("pq-4320p", "7680x4320", FULL_LADDER, hdr("smpte2084")),
)}
DEFAULT_SOURCES = ("sdr-1080p", "sdr-2160p", "pq-1080p", "hlg-1080p", "pq-2160p")


def manifest_cpu_limit() -> int:
    """limits.cpu of the worker-cpu container in whole cores, rounded up: what `resourceFieldRef` with
    divisor 1 hands the worker as VIDFARM_FFMPEG_THREADS."""
    deployment = yaml.safe_load(WORKER_CPU.read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    raw = str(container["resources"]["limits"]["cpu"])
    cores = float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    return math.ceil(cores)


def parse_threads(text: str) -> list[int | None]:
    """'2,4,auto' -> [2, 4, None]; 'limit' is the manifest's CPU limit."""
    values: list[int | None] = []
    for word in text.split(","):
        word = word.strip()
        values.append(None if word == "auto" else manifest_cpu_limit() if word == "limit" else int(word))
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3, help="length of each source (default 3)")
    parser.add_argument("--rate", type=int, default=30, help="frame rate of the sources (default 30)")
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help=f"comma-separated, of {', '.join(SOURCES)} (default {','.join(DEFAULT_SOURCES)})")
    parser.add_argument("--threads", default="2,limit",
                        help="VIDFARM_FFMPEG_THREADS values for the chunk job; 'limit' is worker-cpu's CPU "
                             "limit, 'auto' leaves ffmpeg to size its threads (default 2,limit)")
    parser.add_argument("--no-worker", action="store_true", help="skip the worker process measurement")
    args = parser.parse_args()
    args.source_list = [SOURCES[name] for name in args.sources.split(",")]
    args.thread_list = parse_threads(args.threads)
    return args


@dataclass(frozen=True)
class Row:
    source: str
    job: str
    threads: str
    peak_mib: float
    wall_s: float


def make_source(path: Path, source: Source, seconds: float, rate: int) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={source.size}:rate={rate}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
           *source.encode, "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path


def peak_of(cmd: Sequence[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one command run to completion. ru_maxrss from wait4 is that
    child's own high-water mark (KiB on Linux), so runs do not mask each other as RUSAGE_CHILDREN would."""
    started = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), list(cmd))
    return usage.ru_maxrss * 1024 / MIB, wall


def peak_of_all(cmds: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Commands a job runs one after the other: the highest peak, the total time."""
    results = [peak_of(cmd) for cmd in cmds]
    return max(p for p, _ in results), sum(w for _, w in results)


def measure_source(work: Path, source: Source, args: argparse.Namespace) -> list[Row]:
    path = make_source(work / f"{source.name}.mp4", source, args.seconds, args.rate)
    info = source_info(path)
    plans = ladder_plans(info, source.rungs)
    rows = []
    commands: GraphCommands | None = None
    for threads in args.thread_list:
        # As the worker does: X264 with the threads VIDFARM_FFMPEG_THREADS asked for (None: unset).
        encoder = dataclasses.replace(X264, threads=threads)
        commands = graph_commands(path, info, plans, work / source.name, chunk_s=DEFAULT_CHUNK_SECONDS,
                                  encoder=encoder)
        peak, wall = peak_of_all(commands.chunks)
        label = "auto" if threads is None else str(threads)
        rows.append(Row(source.name, f"chunk ({'+'.join(p.name for p in plans)})", label, peak, wall))
        print(f"{source.name}: chunk, threads {label}: {peak:.0f} MiB, {wall:.1f} s", flush=True)
    assert commands is not None
    for job, cmds in (("audio", commands.audio),
                      ("finalize (stitch+segment+poster)", [*commands.stitch, *commands.package, *commands.poster])):
        peak, wall = peak_of_all(cmds)
        rows.append(Row(source.name, job, "-", peak, wall))
        print(f"{source.name}: {job}: {peak:.0f} MiB, {wall:.1f} s", flush=True)
    return rows


def worker_peak_mib(work: Path, source: Path) -> float:
    """VmHWM of the `vidfarm worker` process (its ffmpeg children not included) after it has run a
    whole video's job graph in a private `vidfarm up` farm (SQLite catalog, local Redis)."""
    farm = LocalFarm(work / "farm", min_workers=1, max_workers=1, scale_down_after_s=3600).start()
    try:
        farm.wait_workers(1)
        with farm.client() as http:
            video = upload_file(http, source)
            status, _ = wait_terminal(http, [video["id"]], poll_s=0.5)[video["id"]]
        if status != "ready":
            raise RuntimeError(f"the video ended {status}")
        peaks = [vm_hwm_mib(pid) for pid in farm.worker_pids() if "worker" in cmdline(pid)]
        if not peaks:
            raise RuntimeError("no worker process found")
        return max(peaks)
    finally:
        farm.stop()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    return 0.0


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    rows: list[Row] = []
    worker = None
    with temp_dir("bench-worker-memory-") as work:
        for source in args.source_list:
            rows += measure_source(work, source, args)
        if not args.no_worker:
            worker = worker_peak_mib(work, work / f"{args.source_list[0].name}.mp4")
    print()
    print(f"machine: {machine()}; ffmpeg: {ffmpeg_version()}; sources {args.seconds:g} s at {args.rate} fps; "
          f"worker-cpu CPU limit: {manifest_cpu_limit()}; run took {time.perf_counter() - started:.0f} s")
    print(table(["source", "job", "threads", "peak RSS MiB", "wall s"],
                [(r.source, r.job, r.threads, round(r.peak_mib), f"{r.wall_s:.1f}") for r in rows]))
    top = max(rows, key=lambda r: r.peak_mib)
    print(f"\nhighest ffmpeg peak: {top.peak_mib:.0f} MiB ({top.source}, {top.job}, threads {top.threads})")
    if worker is not None:
        print(f"worker process peak (VmHWM, after a job): {worker:.0f} MiB")


def ffmpeg_version() -> str:
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout
    return out.split("\n", 1)[0].split(" Copyright")[0].removeprefix("ffmpeg version ")


if __name__ == "__main__":
    main()
