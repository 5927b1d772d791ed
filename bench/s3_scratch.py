"""What a worker writes to its scratch disk with S3 storage, per job: the figure the S3 component's
`ephemeral-storage` request and `sizeLimit` are sized from (deploy/k8s/components/s3).

A `vidfarm up` farm on moto's S3 server (one worker, x264, the default ladder) transcodes one clip cut
into chunks of --chunk seconds; a sampler sums the bytes under the farm's scratch directory every
--every-ms and keeps each job's peak (each job works in a folder named after its RQ job id; the job's
task comes from RQ). The peaks are then given per second of source: a chunk job holds its own
chunk's renditions only, the finalize job every rendition of the video (downloaded chunks, stitched
downloads and the HLS/DASH package).

    python bench/s3_scratch.py --seconds 12 --chunk 4 --size 1920x1080
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from pathlib import Path

import redis
from _common import LocalFarm, MotoS3, machine, make_clip, table, temp_dir, upload_file, wait_terminal
from rq.job import Job

MIB = 1024 * 1024


class ScratchSampler(threading.Thread):
    """Peak bytes of every job folder under `scratch`, sampled until stopped."""

    def __init__(self, scratch: Path, every_s: float) -> None:
        super().__init__(daemon=True)
        self.scratch, self.every_s = scratch, every_s
        self.peaks: dict[str, int] = {}
        self.total_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            for folder in self.scratch.glob("*"):
                size = folder_bytes(folder)
                total += size
                self.peaks[folder.name] = max(self.peaks.get(folder.name, 0), size)
            self.total_peak = max(self.total_peak, total)
            time.sleep(self.every_s)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`; whatever the job removes meanwhile counts as gone."""
    total = 0
    for parent, _, files in os.walk(folder):  # os.walk skips directories that vanish mid-walk
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(parent, name)).st_size
    return total


def task_of(conn: redis.Redis, job_id: str) -> str:
    try:
        task = Job.fetch(job_id, connection=conn).args[1]
    except Exception:  # noqa: BLE001 - a job RQ already dropped: report it unnamed
        return "unknown"
    return "chunk" if str(task).startswith("chunk") else str(task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--chunk", type=float, default=4)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--every-ms", type=float, default=20)
    args = parser.parse_args()
    with temp_dir("bench-s3-scratch-") as work:
        clip = make_clip(work / "clip.mp4", args.seconds, size=args.size)
        moto = MotoS3()
        env = {**moto.env, "VIDFARM_STORAGE_URL": "s3://bench/media", "VIDFARM_CHUNK_SECONDS": str(args.chunk)}
        home = work / "home"
        farm = LocalFarm(home, min_workers=1, max_workers=1, scale_down_after_s=600, env=env)
        sampler = ScratchSampler(home / "scratch", args.every_ms / 1000)
        try:
            farm.start()
            farm.wait_workers(1)
            sampler.start()
            with farm.client() as http:
                video = upload_file(http, clip)
                status = wait_terminal(http, [video["id"]])[video["id"]][0]
            sampler.done.set()
            sampler.join()
            conn = redis.Redis.from_url(farm.redis_url())
            by_task: dict[str, list[int]] = {}
            for job_id, peak in sampler.peaks.items():
                by_task.setdefault(task_of(conn, job_id), []).append(peak)
        finally:
            farm.stop()
            moto.stop()
    report(args, status, by_task, sampler.total_peak)


def report(args: argparse.Namespace, status: str, by_task: dict[str, list[int]], total_peak: int) -> None:
    print(f"\n{args.seconds:g} s {args.size} clip, chunks of {args.chunk:g} s, default ladder, x264, one worker; "
          f"S3 = moto's server; video {status}; {machine()}\n")
    rows = []
    for task, peaks in sorted(by_task.items()):
        covers = args.chunk if task == "chunk" else args.seconds
        rows.append([task, len(peaks), max(peaks) / MIB, covers, max(peaks) / covers / MIB])
    print(table(["job", "jobs", "peak scratch MiB", "source s it covers", "MiB per source second"], rows))
    print(f"\npeak of the whole scratch directory: {total_peak / MIB:.2f} MiB")
    per_s = {task: max(peaks) / (args.chunk if task == "chunk" else args.seconds) for task, peaks in by_task.items()}
    if "chunk" in per_s and "finalize" in per_s:
        print(f"finalize / chunk, per source second: {per_s['finalize'] / per_s['chunk']:.2f}x")
    print_caps()


def print_caps() -> None:
    """The bound real sources approach: a chunk's renditions at the ladder's caps (testsrc2 is easy)."""
    from transcoder.ladder import HIGH_FPS_BOOST, RUNGS
    from vidfarm.settings import Settings

    settings = Settings.from_env()
    longest_chunk_s = 2 * settings.chunk_seconds  # the last chunk takes the remainder: under two lengths
    rows = []
    for name, rungs in (("default (" + ", ".join(settings.ladder) + ")", settings.ladder),
                        ("4K (2160p, 1440p, 1080p, 720p)", ("2160p", "1440p", "1080p", "720p"))):
        kbps = sum(RUNGS[r].maxrate_kbps for r in rungs) * HIGH_FPS_BOOST
        mib_s = kbps * 1000 / 8 / MIB
        rows.append([name, round(kbps), mib_s, mib_s * longest_chunk_s, 3 * mib_s * 3600 / 1024])
    print(f"\nat the ladder's caps, 60 fps sources; longest chunk {longest_chunk_s:g} s; finalize taken as 3x "
          "the renditions:\n")
    print(table(["ladder", "renditions kbit/s", "MiB per source second", "longest chunk MiB",
                 "finalize GiB per source hour"], rows))


if __name__ == "__main__":
    main()
