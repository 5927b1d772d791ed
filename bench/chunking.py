"""Chunked encoding (issue 13): what it costs, and how much faster N workers make one long video.

(a) Cost: the same source encoded in `--chunk-seconds` chunks and as one chunk, one command after
    the other on one worker's cores, with exactly the ffmpeg commands the chunk, audio and finalize
    jobs build (`_common.graph_commands`). CPU seconds of the chunk jobs + stitching (what chunking
    changes; the audio job is the same either way and shown apart), size of each stitched rung, and
    PSNR of each rung against the source (VMAF too where an ffmpeg with libvmaf is found).
(o) Overhead per chunk length (`--part overhead`): the same source cut into equal chunks of each of
    `--lengths` seconds (whole 6 s segments) against one chunk, on one core: the CPU overhead of the
    chunk jobs + stitching and the size change, per length, and the fixed cost per extra chunk. The
    shortest length within 3 % is vidfarm.chunks.MIN_CHUNK_SECONDS, the floor of the per-video plan.
(b) Speed-up: a private farm (`vidfarm up`) with N workers, each pinned with `taskset` to its own
    `--cores-per-worker` cores so that it stands for one machine; time from upload start to `ready`,
    and the finalize job's own run time from its RQ record.

The source (default 10 min of 1080p30: testsrc2, a mandelbrot zoom, grainy testsrc2 and a game of
life, in turns, with a beeping tone) is generated once and cached under `--cache`.

    python bench/chunking.py                                   # full run: 10 min 1080p, N = 1, 2
    python bench/chunking.py --workers 1,2,4,8 --cores-per-worker 2   # on a 16-core machine
    python bench/chunking.py --seconds 20 --size 640x360 --chunk-seconds 4 --scene-seconds 5  # tiny
    python bench/chunking.py --part overhead --seconds 120 --size 1280x720 --lengths 6,12,18,30,60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis
from _common import (
    ONE_CHUNK_S,
    LocalFarm,
    Measure,
    graph_commands,
    ladder_plans,
    machine,
    run_measured,
    source_info,
    table,
    temp_dir,
    upload_file,
    wait_terminal,
)
from rq import Queue
from rq.registry import FinishedJobRegistry

from transcoder.job import count_frames
from transcoder.ladder import OutputPlan
from vidfarm.chunks import ChunkSpan, chunk_frames, expected_frames, output_fps
from vidfarm.probe import SourceInfo

CPU_TARGET_PCT = 3.0
SIZE_TARGET_PCT = 2.0
PSNR_TARGET_DB = 0.1
FINALIZE_TARGET_PCT = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600, help="source length (default 600)")
    parser.add_argument("--size", default="1920x1080", help="source size (default 1920x1080)")
    parser.add_argument("--rate", type=int, default=30, help="source frame rate (default 30)")
    parser.add_argument("--scene-seconds", type=float, default=20, help="length of each scene (default 20)")
    parser.add_argument("--chunk-seconds", type=float, default=60, help="VIDFARM_CHUNK_SECONDS (default 60)")
    parser.add_argument("--rungs", default=None, help="ladder, e.g. 1080p,720p (default: the farm's)")
    parser.add_argument("--part", choices=("cost", "speedup", "both", "overhead"), default="both")
    parser.add_argument("--lengths", default="6,12,18,30,60",
                        help="chunk lengths in seconds for --part overhead (default 6,12,18,30,60)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of (a), order alternating (default 1)")
    parser.add_argument("--workers", default="1,2", help="values of N for (b), comma-separated (default 1,2)")
    parser.add_argument("--cores-per-worker", type=int, default=1, help="cores pinned to each worker (default 1)")
    parser.add_argument("--first-core", type=int, default=0, help="first core to pin (default 0)")
    parser.add_argument("--gen-jobs", type=int, default=1,
                        help="encode the source's scenes with this many ffmpegs at once, then join them "
                             "(default 1: one ffmpeg for the whole source)")
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "out" / "cache",
                        help="where the generated source is kept (default bench/out/cache)")
    parser.add_argument("--vmaf-ffmpeg", default=None,
                        help="an ffmpeg with libvmaf (default: ffmpeg or imageio-ffmpeg's, if either has it)")
    args = parser.parse_args()
    args.ns = [int(n) for n in args.workers.split(",")]
    args.lengths = [float(s) for s in args.lengths.split(",")]
    last_core = args.first_core + max(args.ns) * args.cores_per_worker
    if args.part != "cost" and last_core > (os.cpu_count() or 1):
        parser.error(f"N={max(args.ns)} x {args.cores_per_worker} cores from core {args.first_core} "
                     f"needs {last_core} cores; this machine has {os.cpu_count()}")
    return args


def cores(worker: int, per_worker: int, first: int) -> str:
    """The taskset core list of worker `worker` (0-based): its own block, no sharing."""
    start = first + worker * per_worker
    return f"{start}-{start + per_worker - 1}"


# -- the source ---------------------------------------------------------------------------------


def scene_graphs(size: str, rate: int, seconds: float) -> list[str]:
    """lavfi graphs of the kinds of scene the source cycles through, all `size` yuv420p."""
    width, height = (int(x) for x in size.split("x"))
    half = f"{width // 2 // 2 * 2}x{height // 2 // 2 * 2}"
    quarter = f"{width // 4}x{height // 4}"
    common = f"format=yuv420p,setsar=1,trim=duration={seconds}"
    return [
        f"testsrc2=size={size}:rate={rate},{common}",  # synthetic motion, sharp text
        # Mandelbrot renders slowly at full size; a half-size zoom scaled up keeps it fine-grained.
        f"mandelbrot=size={half}:rate={rate}:end_pts={seconds * 3},scale={size}:flags=bicubic,{common}",
        f"testsrc2=size={size}:rate={rate},noise=alls=14:allf=t,{common}",  # film grain: costly bits
        f"life=size={quarter}:rate={rate}:mold=10:ratio=0.2:life_color=#ffcc33:death_color=#202060,"
        f"scale={size}:flags=neighbor,{common}",  # many small moving edges
    ]


def make_varied_source(path: Path, seconds: float, size: str, rate: int, scene_s: float) -> Path:
    """Scenes of `scene_s` in turns, concatenated, x264 veryfast CRF 18 (a clean reference for PSNR)
    with a beeping AAC tone. Skipped when `path` already exists."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, round(seconds / scene_s))
    kinds = scene_graphs(size, rate, seconds / count)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    for index in range(count):
        cmd += ["-f", "lavfi", "-i", kinds[index % len(kinds)]]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:beep_factor=4:duration={seconds}"]
    inputs = "".join(f"[{i}:v]" for i in range(count))
    cmd += ["-filter_complex", f"{inputs}concat=n={count}:v=1:a=0[v]", "-map", "[v]", "-map", f"{count}:a",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(path.with_suffix(".part.mp4"))]
    subprocess.run(cmd, check=True)
    path.with_suffix(".part.mp4").rename(path)  # a killed generation never leaves a cached half file
    return path


def make_varied_source_parallel(path: Path, seconds: float, size: str, rate: int, scene_s: float,
                                jobs: int) -> Path:
    """The same scenes and encoding as make_varied_source, but each scene encoded by its own ffmpeg,
    `jobs` at a time, then joined by the concat demuxer (stream copy) with the tone added. lavfi
    filters run on one thread and mandelbrot renders about 2 frames/s at 960x540, so the one-command
    generation takes many minutes per minute of 1080p; this one takes about one scene's time per
    `jobs` scenes. The bitstream differs only in a keyframe at each scene start."""
    if path.exists():
        return path
    parts = path.parent / (path.stem + "-scenes")
    parts.mkdir(parents=True, exist_ok=True)
    count = max(1, round(seconds / scene_s))
    kinds = scene_graphs(size, rate, seconds / count)
    files = [parts / f"{index:04d}.mp4" for index in range(count)]

    def one(index: int) -> None:
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        kinds[index % len(kinds)], "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                        "-pix_fmt", "yuv420p", "-threads", "2", str(files[index])], check=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, range(count)))
    listing = parts / "list.txt"
    listing.write_text("".join(f"file '{f.name}'\n" for f in files))
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                    "-i", str(listing), "-f", "lavfi", "-i",
                    f"sine=frequency=440:beep_factor=4:duration={seconds}", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "aac", "-shortest", str(path.with_suffix(".part.mp4"))], check=True)
    path.with_suffix(".part.mp4").rename(path)
    shutil.rmtree(parts)
    return path


# -- (a) cost of chunking -----------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    mode: str
    chunks: int
    chunk_jobs: Measure
    audio: Measure
    stitch: Measure
    renditions: dict[str, Path]

    @property
    def picture_cpu_s(self) -> float:
        return self.chunk_jobs.cpu_s + self.stitch.cpu_s


def run_all(commands: Sequence[list[str]], pin: str) -> Measure:
    total = Measure(0.0, 0.0)
    for cmd in commands:
        total = total + run_measured(["taskset", "-c", pin, *cmd])
    return total


def encode(source: Path, info: SourceInfo, plans: list[OutputPlan], folder: Path, mode: str, chunk_s: float,
           pin: str, spans: Sequence[ChunkSpan] | None = None) -> Encoded:
    shutil.rmtree(folder, ignore_errors=True)
    graph = graph_commands(source, info, plans, folder, chunk_s=chunk_s, spans=spans)
    chunk_jobs = run_all(graph.chunks, pin)
    audio = run_all(graph.audio, pin)
    stitch = run_all(graph.stitch, pin)
    return Encoded(mode, len(graph.chunks), chunk_jobs, audio, stitch, graph.renditions)


def ffmpeg_has(binary: str, name: str) -> bool:
    try:
        listed = subprocess.run([binary, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f" {name} " in listed.stdout


def vmaf_ffmpeg(choice: str | None) -> str | None:
    """An ffmpeg that has the libvmaf filter, or None: Debian's has not; imageio-ffmpeg's may."""
    candidates = [choice] if choice else ["ffmpeg"]
    if not choice:
        try:
            import imageio_ffmpeg

            candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
        except ImportError:
            pass
    return next((c for c in candidates if ffmpeg_has(c, "libvmaf")), None)


def score(binary: str, rendition: Path, source: Path, info: SourceInfo, metric: str) -> float:
    """`psnr` (average dB over Y, U, V) or `libvmaf` of a rendition scaled back to the source size."""
    graph = (f"[0:v]scale={info.width}:{info.height}:flags=bicubic,setpts=PTS-STARTPTS[d];"
             f"[1:v]setpts=PTS-STARTPTS[r];[d][r]{metric}")
    done = subprocess.run([binary, "-hide_banner", "-nostdin", "-i", str(rendition), "-i", str(source),
                           "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True, check=True)
    pattern = r"average:([\d.]+|inf)" if metric == "psnr" else r"VMAF score: ([\d.]+)"
    found = re.findall(pattern, done.stderr)
    if not found:
        raise RuntimeError(f"no {metric} result from ffmpeg: {done.stderr[-500:]}")
    return float(found[-1])


def part_cost(args: argparse.Namespace, source: Path, info: SourceInfo, plans: list[OutputPlan],
              work: Path) -> None:
    pin = cores(0, args.cores_per_worker, args.first_core)
    modes = [("one chunk", ONE_CHUNK_S), (f"{args.chunk_seconds:g} s chunks", args.chunk_seconds)]
    runs: dict[str, list[Encoded]] = {name: [] for name, _ in modes}
    for rep in range(args.reps):
        for name, chunk_s in modes if rep % 2 == 0 else reversed(modes):
            runs[name].append(encode(source, info, plans, work / name.replace(" ", "-"), name, chunk_s, pin))
            e = runs[name][-1]
            print(f"(a) rep {rep + 1} {name}: {e.chunks} chunk(s), picture {e.picture_cpu_s:.1f} CPU s, "
                  f"wall {e.chunk_jobs.wall_s + e.stitch.wall_s:.1f} s", flush=True)
    one, chunked = (runs[name] for name, _ in modes)
    print_cost_cpu(one, chunked, pin)
    print_cost_quality(args, one[-1], chunked[-1], source, info, plans)


def print_cost_cpu(one: list[Encoded], chunked: list[Encoded], pin: str) -> None:
    rows = [[e.mode, rep + 1, e.chunks, e.chunk_jobs.cpu_s, e.stitch.cpu_s, e.picture_cpu_s, e.audio.cpu_s,
             e.chunk_jobs.wall_s + e.stitch.wall_s]
            for rep, pair in enumerate(zip(one, chunked, strict=True)) for e in pair]
    print(f"\n(a) cost of chunking, commands run one after the other pinned to cores {pin}\n")
    print(table(["mode", "rep", "chunk jobs", "chunk jobs CPU s", "stitch CPU s", "picture CPU s",
                 "audio CPU s (same job)", "picture wall s"], rows))
    overheads = [100 * (c.picture_cpu_s / o.picture_cpu_s - 1) for o, c in zip(one, chunked, strict=True)]
    worst = max(overheads)
    verdict = "met" if worst <= CPU_TARGET_PCT else "MISSED"
    print(f"\nCPU overhead of chunking (chunk jobs + stitch): {', '.join(f'{o:+.2f} %' for o in overheads)} "
          f"per rep; target <= {CPU_TARGET_PCT:g} %: {verdict}")


def print_cost_quality(args: argparse.Namespace, one: Encoded, chunked: Encoded, source: Path, info: SourceInfo,
                       plans: list[OutputPlan]) -> None:
    vmaf = vmaf_ffmpeg(args.vmaf_ffmpeg)
    rows, verdicts = [], []
    for plan in plans:
        a, b = one.renditions[plan.name], chunked.renditions[plan.name]
        size_pct = 100 * (b.stat().st_size / a.stat().st_size - 1)
        psnr_a, psnr_b = (score("ffmpeg", r, source, info, "psnr") for r in (a, b))
        row = [plan.name, count_frames(a), count_frames(b), a.stat().st_size / 1e6, b.stat().st_size / 1e6,
               f"{size_pct:+.2f}", f"{psnr_a:.3f}", f"{psnr_b:.3f}", f"{psnr_b - psnr_a:+.3f}"]
        if vmaf:
            row += [f"{score(vmaf, r, source, info, 'libvmaf'):.2f}" for r in (a, b)]
        rows.append(row)
        verdicts.append(abs(size_pct) <= SIZE_TARGET_PCT and abs(psnr_b - psnr_a) <= PSNR_TARGET_DB)
    headers = ["rung", "frames one", "frames chunked", "MB one", "MB chunked", "size %", "PSNR one dB",
               "PSNR chunked dB", "PSNR delta dB"] + (["VMAF one", "VMAF chunked"] if vmaf else [])
    print(f"\n(a) stitched renditions (video + audio) vs the source; VMAF: {vmaf or 'no ffmpeg with libvmaf found'}\n")
    print(table(headers, rows))
    print(f"\nsize within {SIZE_TARGET_PCT:g} % and PSNR within {PSNR_TARGET_DB:g} dB in every rung: "
          f"{'met' if all(verdicts) else 'MISSED'}")


# -- (o) overhead per chunk length --------------------------------------------------------------


def equal_spans(info: SourceInfo, length_s: float) -> list[ChunkSpan]:
    """Chunks of `length_s` (whole segments) from frame 0, the last one open-ended: the per-video
    plan's later chunks, without its short first chunk, so that each row has one length."""
    fps = output_fps(info.fps)
    per_chunk = chunk_frames(fps, length_s)
    count = max(1, expected_frames(info.duration_s, fps) // per_chunk)
    return [ChunkSpan(i, i * per_chunk, None if i == count - 1 else per_chunk) for i in range(count)]


def part_overhead(args: argparse.Namespace, source: Path, info: SourceInfo, plans: list[OutputPlan],
                  work: Path) -> None:
    pin = cores(0, args.cores_per_worker, args.first_core)
    rows, chosen = [], None
    for rep in range(args.reps):
        one = encode(source, info, plans, work / "one", "one chunk", ONE_CHUNK_S, pin)
        one_bytes = sum(p.stat().st_size for p in one.renditions.values())
        print(f"(o) rep {rep + 1} one chunk: picture {one.picture_cpu_s:.1f} CPU s", flush=True)
        for length in args.lengths:
            split = encode(source, info, plans, work / "split", f"{length:g} s", length, pin, equal_spans(info, length))
            cpu_pct = 100 * (split.picture_cpu_s / one.picture_cpu_s - 1)
            size_pct = 100 * (sum(p.stat().st_size for p in split.renditions.values()) / one_bytes - 1)
            per_chunk = (split.picture_cpu_s - one.picture_cpu_s) / max(1, split.chunks - 1)
            rows.append([rep + 1, f"{length:g}", split.chunks, one.picture_cpu_s, split.picture_cpu_s,
                         f"{cpu_pct:+.2f}", f"{size_pct:+.2f}", f"{per_chunk:.2f}"])
            print(f"(o) rep {rep + 1} {length:g} s: {split.chunks} chunks, CPU {cpu_pct:+.2f} %", flush=True)
            if rep == args.reps - 1 and chosen is None and cpu_pct <= CPU_TARGET_PCT:
                chosen = length
    print(f"\n(o) overhead per chunk length against one chunk, pinned to cores {pin}\n")
    print(table(["rep", "chunk s", "chunks", "one chunk CPU s", "split CPU s", "CPU overhead %", "size %",
                 "CPU s per extra chunk"], rows))
    print(f"\nshortest length within {CPU_TARGET_PCT:g} % CPU (last rep): "
          f"{'none' if chosen is None else f'{chosen:g} s'}")


# -- (b) speed-up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FarmRun:
    workers: int
    ready_s: float  # upload start -> ready seen
    upload_s: float
    encode_s: float  # run time of the chunk and audio jobs, summed
    finalize_s: float


def pin_workers(farm: LocalFarm, per_worker: int, first: int) -> list[str]:
    """Each worker (and every thread of it, and the ffmpegs it starts later) on its own cores."""
    pins = []
    for index, pid in enumerate(sorted(farm.worker_pids())):
        pins.append(cores(index, per_worker, first))
        subprocess.run(["taskset", "-a", "-p", "-c", pins[-1], str(pid)], check=True, stdout=subprocess.DEVNULL)
    return pins


def job_times(farm: LocalFarm, video_id: str, wait_s: float = 10.0) -> tuple[float, float]:
    """(chunk + audio jobs, finalize) run seconds from RQ's records of the finished jobs. The video is
    `ready` a moment before RQ files the finalize job as finished: wait up to `wait_s` for its record."""
    queue = Queue("cpu", connection=redis.Redis.from_url(farm.redis_url()))
    deadline = time.monotonic() + wait_s
    while True:
        ids = [i for i in FinishedJobRegistry(queue=queue).get_job_ids() if i.startswith(video_id)]
        spans = {i: (job.ended_at - job.started_at).total_seconds()
                 for i, job in zip(ids, queue.job_class.fetch_many(ids, connection=queue.connection), strict=True)
                 if job is not None and job.started_at and job.ended_at}
        if any("-finalize-" in i for i in spans) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    finalize = sum(s for i, s in spans.items() if "-finalize-" in i)
    return sum(spans.values()) - finalize, finalize


def run_farm(args: argparse.Namespace, source: Path, workers: int, work: Path) -> FarmRun:
    env = {"VIDFARM_CHUNK_SECONDS": f"{args.chunk_seconds:g}"}
    if args.rungs:
        env["VIDFARM_LADDER"] = args.rungs
    home = work / f"farm-{workers}"
    farm = LocalFarm(home, min_workers=workers, max_workers=workers, scale_down_after_s=3600, env=env)
    try:
        with farm:
            farm.wait_workers(workers)
            pins = pin_workers(farm, args.cores_per_worker, args.first_core)
            with farm.client(timeout_s=600) as http:
                started = time.perf_counter()
                video_id = upload_file(http, source)["id"]
                uploaded = time.perf_counter() - started
                status, seen_at = wait_terminal(http, [video_id], poll_s=0.2, timeout_s=24 * 3600)[video_id]
            if status != "ready":
                raise RuntimeError(f"N={workers}: the video ended {status}")
            encode_s, finalize_s = job_times(farm, video_id)
    except Exception:
        # The farm's log lives in the temporary folder, which is deleted on the way out: show its end.
        with contextlib.suppress(OSError):
            print(f"--- last lines of {farm.log_path}:\n" + "\n".join(farm.log_path.read_text().splitlines()[-40:]))
        raise
    print(f"(b) N={workers} (cores {', '.join(pins)}): ready after {seen_at - started:.1f} s, "
          f"finalize {finalize_s:.2f} s", flush=True)
    return FarmRun(workers, seen_at - started, uploaded, encode_s, finalize_s)


def speedup_target(n: int) -> float:
    """Issue 13: T(2) <= 0.55 T(1) on the 2-core box; T(N) <= T(1) / (0.7 N) on a bigger one."""
    return 0.55 if n == 2 else 1 / (0.7 * n)


def part_speedup(args: argparse.Namespace, source: Path, work: Path) -> None:
    runs = [run_farm(args, source, n, work) for n in args.ns]
    base = next((r for r in runs if r.workers == 1), None)
    rows = []
    for r in runs:
        ratio = r.ready_s / base.ready_s if base else float("nan")
        verdict = "" if r.workers == 1 or not base else ("met" if ratio <= speedup_target(r.workers) else "MISSED")
        finalize_pct = 100 * r.finalize_s / base.encode_s if base else float("nan")
        rows.append([r.workers, r.ready_s, base.ready_s / r.ready_s if base else "-", f"{ratio:.3f}",
                     f"<= {speedup_target(r.workers):.3f} {verdict}" if r.workers > 1 else "-", r.upload_s,
                     r.encode_s, r.finalize_s, f"{finalize_pct:.2f}"])
    print(f"\n(b) speed-up: {args.cores_per_worker} core(s) per worker (taskset), "
          f"VIDFARM_CHUNK_SECONDS={args.chunk_seconds:g}\n")
    print(table(["N", "T(N) upload->ready s", "T(1)/T(N)", "T(N)/T(1)", "target", "upload s",
                 "chunk+audio jobs s (sum)", "finalize s", "finalize % of 1-worker encode"], rows))
    print(f"(1-worker encode = the chunk and audio jobs' run time summed at N=1; "
          f"finalize target <= {FINALIZE_TARGET_PCT:g} %)")


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    name = f"varied-{args.seconds:g}s-{args.size}-{args.rate}-{args.scene_seconds:g}"
    if args.gen_jobs > 1:
        source = make_varied_source_parallel(args.cache / f"{name}-scenes.mp4", args.seconds, args.size, args.rate,
                                             args.scene_seconds, args.gen_jobs)
    else:
        source = make_varied_source(args.cache / f"{name}.mp4", args.seconds, args.size, args.rate,
                                    args.scene_seconds)
    info = source_info(source)
    plans = ladder_plans(info, args.rungs.split(",") if args.rungs else None)
    print(f"source: {source} ({source.stat().st_size / 1e6:.1f} MB, {info.duration_s:.1f} s, "
          f"{info.width}x{info.height}@{info.fps:g}); renditions: {', '.join(p.name for p in plans)}; "
          f"chunks of {args.chunk_seconds:g} s; {machine()}", flush=True)
    with temp_dir("bench-chunking-") as work:
        if args.part == "overhead":
            part_overhead(args, source, info, plans, work)
        if args.part in ("cost", "both"):
            part_cost(args, source, info, plans, work)
        if args.part in ("speedup", "both"):
            part_speedup(args, source, work)


if __name__ == "__main__":
    main()
