"""Dispatch latency: upload accepted (201 received) -> the worker's ffmpeg running, idle worker up.

A private farm (`vidfarm up --min-workers 1 --max-workers 1`) with its one worker registered and
idle; small clips are uploaded one at a time. A watcher thread polls /proc every 2 ms for an ffmpeg
whose arguments contain the video id. Two readings per upload: when the watcher first saw the
ffmpeg (an upper bound, includes the poll interval) and the ffmpeg's fork time from /proc/PID/stat
(10 ms resolution). The API enqueues before it answers, so the ffmpeg may start before the client
has read the 201: such latencies are <= 0. The next upload waits until the video is ready.

    python bench/dispatch_latency.py --uploads 50
"""

from __future__ import annotations

import argparse
import time

import redis
from _common import (
    LocalFarm,
    ProcWatcher,
    machine,
    make_clip,
    now,
    percentile,
    table,
    temp_dir,
    upload_file,
    wait_terminal,
    wait_until,
)

from vidfarm.presence import PREFIX
from vidfarm.states import VideoStatus, WorkerState


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=20, help="uploads (default 20)")
    parser.add_argument("--seconds", type=float, default=2, help="clip length (default 2)")
    parser.add_argument("--size", default="640x360", help="clip size (default 640x360)")
    return parser.parse_args()


def ffmpeg_label(_pid: int, args: list[str]) -> str | None:
    return " ".join(args) if args and args[0].endswith("ffmpeg") else None


def worker_idle(conn: redis.Redis) -> bool:
    states = [conn.hget(key, "state") for key in conn.keys(PREFIX + "*")]
    return states == [WorkerState.IDLE.encode()]


def one_upload(farm: LocalFarm, conn: redis.Redis, clip, watcher: ProcWatcher) -> tuple[float, float]:
    """(seen - accepted, fork time - accepted) in seconds."""
    wait_until(lambda: worker_idle(conn), 60, what="an idle worker")
    with farm.client() as http:
        video_id = upload_file(http, clip)["id"]
        accepted = now()
        wait_until(lambda: watcher.first(video_id) is not None, 30, poll_s=0.002, what="ffmpeg")
        status, _ = wait_terminal(http, [video_id])[video_id]
    if status != VideoStatus.READY:
        raise RuntimeError(f"video {video_id} ended {status}")
    seen = watcher.first(video_id)
    assert seen is not None
    return seen.seen_at - accepted, seen.started_at - accepted


def main() -> None:
    args = parse_args()
    results: list[tuple[float, float]] = []
    with temp_dir("bench-dispatch-") as work:
        clip = make_clip(work / "clip.mp4", args.seconds, size=args.size)
        with LocalFarm(work / "home", min_workers=1, max_workers=1, scale_down_after_s=600) as farm:
            conn = redis.Redis.from_url(farm.redis_url())
            watcher = ProcWatcher(ffmpeg_label)
            watcher.start()
            try:
                for i in range(args.uploads):
                    results.append(one_upload(farm, conn, clip, watcher))
                    print(f"upload {i + 1}: seen {results[-1][0] * 1000:.0f} ms, "
                          f"forked {results[-1][1] * 1000:.0f} ms", flush=True)
                    time.sleep(0.2)
            finally:
                watcher.stop()
        print(f"farm stopped with SIGTERM; processes left behind: {len(farm.leftovers)}")
    report(args, results)


def report(args: argparse.Namespace, results: list[tuple[float, float]]) -> None:
    seen = [1000 * s for s, _ in results]
    forked = [1000 * f for _, f in results]
    print()
    print(f"{args.uploads} uploads of a {args.size} {args.seconds:g} s clip, one idle worker (x264); {machine()}")
    print()
    print(table(["201 received -> ffmpeg", "p50 ms", "p95 ms", "min ms", "max ms"], [
        ["seen by /proc watcher (2 ms poll)", percentile(seen, 50), percentile(seen, 95), min(seen), max(seen)],
        ["fork time from /proc stat (10 ms res.)", percentile(forked, 50), percentile(forked, 95),
         min(forked), max(forked)],
    ]))
    p50 = percentile(seen, 50)
    print(f"\ntarget p50 <= 100 ms: {'met' if p50 <= 100 else 'MISSED'} ({p50:.0f} ms, watcher reading)")


if __name__ == "__main__":
    main()
