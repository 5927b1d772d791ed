"""Time to playable (issue 20): from the end of an upload to "plays from the start", per length.

A private farm (`vidfarm up`) with N workers, each pinned with `taskset` to its own cores (so each
stands for one machine), idle before each upload. The clock starts when the upload's 201 arrives (the
file is stored, probed and queued); the video resource is then polled every `--poll` seconds for
`playable_at` (the HLS URL plays from there: the first segment of every rung and of the audio
exists) and for `ready`. The median of `--reps` uploads per length is printed beside Mux's published
median time to playable for that length's bucket.

Sources: varied content (sharp synthetic motion, the same under film grain, a game of life, a
scrolling test card, in turns; a beeping tone), generated once per length (x264 ultrafast: a 5 min
source in about a minute) and cached under `--cache`.

    python bench/time_to_playable.py                  # 10 s, 60 s, 5 min of 720p30; N = 2; 3 each
    python bench/time_to_playable.py --quick          # smoke run: 10 s and 20 s of 320x180, once each
    python bench/time_to_playable.py --size 1920x1080 --lengths 10,60,300,1200 --workers 8 --cores-per-worker 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import LocalFarm, machine, median, table, temp_dir, upload_file
from chunking import pin_workers

# Mux's median time from upload to playable, by source length (their published figures): the upper
# bound of each bucket in seconds, and the median.
MUX_MEDIANS_S = ((60, 2.0), (300, 3.3), (1200, 9.0), (3600, 46.4), (float("inf"), 93.5))
MUX_BUCKETS = ("under 1 min", "1-5 min", "5-20 min", "20-60 min", "60 min and over")
TARGET_PLAYABLE_S = 5.0  # on this machine, with a worker idle: every length


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="10,60,300", help="source lengths in seconds (default 10,60,300)")
    parser.add_argument("--size", default="1280x720", help="source size (default 1280x720)")
    parser.add_argument("--rate", type=int, default=30, help="source frame rate (default 30)")
    parser.add_argument("--scene-seconds", type=float, default=5, help="length of each scene (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="N (default 2)")
    parser.add_argument("--cores-per-worker", type=int, default=1, help="cores pinned to each worker (default 1)")
    parser.add_argument("--first-core", type=int, default=0, help="first core to pin (default 0)")
    parser.add_argument("--reps", type=int, default=3, help="uploads per length (default 3)")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between reads of the video (default 0.1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 s and 20 s of 320x180, once each")
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "out" / "cache",
                        help="where the generated sources are kept (default bench/out/cache)")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.size, args.reps = "10,20", "320x180", 1
    args.seconds = [float(x) for x in args.lengths.split(",")]
    if args.first_core + args.workers * args.cores_per_worker > (os.cpu_count() or 1):
        parser.error(f"{args.workers} workers x {args.cores_per_worker} cores do not fit this machine's "
                     f"{os.cpu_count()} cores")
    return args


def scenes(size: str, rate: int, seconds: float) -> list[str]:
    """lavfi graphs of the kinds of scene a source cycles through, all `size` yuv420p: cheap to render
    (bench/chunking.py's mandelbrot zoom takes longer than a 5 min benchmark run)."""
    width, height = (int(x) for x in size.split("x"))
    common = f"format=yuv420p,setsar=1,trim=duration={seconds}"
    return [
        f"testsrc2=size={size}:rate={rate},{common}",  # synthetic motion, sharp text
        f"testsrc2=size={size}:rate={rate},noise=alls=14:allf=t,{common}",  # film grain: costly bits
        f"life=size={width // 4}x{height // 4}:rate={rate}:mold=10:ratio=0.2:life_color=#ffcc33:"
        f"death_color=#202060,scale={size}:flags=neighbor,{common}",  # many small moving edges
        f"smptehdbars=size={size}:rate={rate},scroll=h=0.003:v=0.002,{common}",  # a slow pan
    ]


def make_source(path: Path, seconds: float, size: str, rate: int, scene_s: float) -> Path:
    """Scenes of about `scene_s` in turns, with a beeping AAC tone; skipped when `path` exists."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, round(seconds / scene_s))
    kinds = scenes(size, rate, seconds / count)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    for index in range(count):
        cmd += ["-f", "lavfi", "-i", kinds[index % len(kinds)]]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:beep_factor=4:duration={seconds}"]
    inputs = "".join(f"[{i}:v]" for i in range(count))
    cmd += ["-filter_complex", f"{inputs}concat=n={count}:v=1:a=0[v]", "-map", "[v]", "-map", f"{count}:a",
            "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", "-shortest",
            str(path.with_suffix(".part.mp4"))]
    subprocess.run(cmd, check=True)
    path.with_suffix(".part.mp4").rename(path)  # a killed generation never leaves a cached half file
    return path


def mux_median(seconds: float) -> tuple[str, float]:
    """Mux's bucket for a source of `seconds` and its median time to playable."""
    index = next(i for i, (upper, _) in enumerate(MUX_MEDIANS_S) if seconds < upper)
    return MUX_BUCKETS[index], MUX_MEDIANS_S[index][1]


@dataclass(frozen=True)
class Run:
    seconds: float
    playable_s: float  # 201 -> playable_at seen
    ready_s: float  # 201 -> ready seen
    upload_s: float


def one_upload(http: httpx.Client, source: Path, seconds: float, poll_s: float) -> Run:
    started = time.perf_counter()
    video_id = upload_file(http, source)["id"]
    uploaded = time.perf_counter()
    playable = None
    while True:
        video = http.get(f"/v1/videos/{video_id}").json()
        seen = time.perf_counter() - uploaded
        if playable is None and video["playable_at"]:
            playable = seen
        if video["status"] in ("failed", "canceled"):
            raise RuntimeError(f"video {video_id} ended {video['status']}: {video['error']}")
        if video["status"] == "ready":
            # A video ready between two polls was playable by then at the latest.
            return Run(seconds, seen if playable is None else playable, seen, uploaded - started)
        time.sleep(poll_s)


def wait_idle(http: httpx.Client, timeout_s: float = 600) -> None:
    """Until no queue holds or runs a task: each upload finds its workers idle."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queues = http.get("/v1/farm").json()["queues"].values()
        if all(q["queued"] == 0 and q["running"] == 0 for q in queues):
            return
        time.sleep(0.2)
    raise TimeoutError("the farm did not become idle")


def run(args: argparse.Namespace, sources: dict[float, Path], work: Path) -> list[Run]:
    runs = []
    with LocalFarm(work / "farm", min_workers=args.workers, max_workers=args.workers,
                   scale_down_after_s=3600) as farm:
        farm.wait_workers(args.workers)
        pins = pin_workers(farm, args.cores_per_worker, args.first_core)
        print(f"N={args.workers} workers on cores {', '.join(pins)}", flush=True)
        with farm.client(timeout_s=600) as http:
            for seconds, source in sources.items():
                for rep in range(args.reps):
                    wait_idle(http)
                    runs.append(one_upload(http, source, seconds, args.poll))
                    r = runs[-1]
                    print(f"{seconds:g} s #{rep + 1}: upload {r.upload_s:.1f} s, playable {r.playable_s:.2f} s, "
                          f"ready {r.ready_s:.1f} s after the upload", flush=True)
    return runs


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    rows = []
    for seconds in args.seconds:
        mine = [r for r in runs if r.seconds == seconds]
        playable, ready = median(r.playable_s for r in mine), median(r.ready_s for r in mine)
        bucket, mux = mux_median(seconds)
        verdict = "met" if playable <= TARGET_PLAYABLE_S else "MISSED"
        rows.append([f"{seconds:g}", len(mine), f"{playable:.2f}", f"{min(r.playable_s for r in mine):.2f}",
                     f"{max(r.playable_s for r in mine):.2f}", f"{mux:.1f} ({bucket})",
                     f"<= {TARGET_PLAYABLE_S:g} {verdict}", f"{ready:.1f}"])
    print(f"\nupload complete (201) -> playable / ready, {args.size}@{args.rate} varied sources, "
          f"N={args.workers} x {args.cores_per_worker} core(s), median of {args.reps}; {machine()}\n")
    print(table(["source s", "runs", "playable s (median)", "min", "max", "Mux median s", "target",
                 "ready s (median)"], rows))


def main() -> None:
    args = parse_args()
    name = f"{args.size}-{args.rate}-{args.scene_seconds:g}"
    sources = {seconds: make_source(args.cache / f"playable-{seconds:g}s-{name}.mp4", seconds, args.size, args.rate,
                                    args.scene_seconds)
               for seconds in args.seconds}
    with temp_dir("bench-playable-") as work:
        runs = run(args, sources, work)
    report(args, runs)


if __name__ == "__main__":
    main()
