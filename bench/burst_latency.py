"""Burst latency on the local backend: from 0 workers, one upload -> a new worker process running.

A private farm (`vidfarm up --min-workers 0 --max-workers M --scale-down-after 1`). Each burst is
one small upload; the clock starts when the 201 is received (the API enqueues and notifies the
autoscaler before answering). Three readings: the worker's fork time (/proc/PID/stat, 10 ms
resolution), when a /proc watcher (2 ms poll) first saw the `vidfarm worker` process, and when its
presence hash `vidfarm:worker:*` appeared in Redis (registered, ready to take jobs). Between bursts
we wait for the video to be ready and the pool to be back at 0 workers (the controller resyncs every
5 s, so that takes a few seconds).

    python bench/burst_latency.py --bursts 20
"""

from __future__ import annotations

import argparse
import time

import redis
from _common import (
    LocalFarm,
    ProcWatcher,
    is_worker,
    machine,
    make_clip,
    median,
    now,
    parent_of,
    table,
    temp_dir,
    upload_file,
    wait_terminal,
    wait_until,
)

from vidfarm.presence import PREFIX
from vidfarm.states import VideoStatus


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=10, help="bursts (default 10)")
    parser.add_argument("--max-workers", type=int, default=1, help="pool maximum (default 1)")
    return parser.parse_args()


def registered(conn: redis.Redis) -> bool:
    return bool(conn.keys(PREFIX + "*"))


def one_burst(farm: LocalFarm, conn: redis.Redis, clip) -> tuple[float, float, float, float]:
    """(forked, seen, registered, upload request started) in seconds relative to the 201."""
    wait_until(lambda: not farm.worker_pids() and not registered(conn), 120, poll_s=0.2, what="0 workers")
    watcher = ProcWatcher(lambda pid, args: "worker" if is_worker(args) and parent_of(pid) == farm.pid else None)
    watcher.start()
    try:
        with farm.client() as http:
            started = now()
            video_id = upload_file(http, clip)["id"]
            accepted = now()
            wait_until(lambda: registered(conn), 30, poll_s=0.002, what="a registered worker")
            ready_at = now()
            wait_until(lambda: watcher.first("worker") is not None, 5, poll_s=0.002, what="the worker process")
            status, _ = wait_terminal(http, [video_id])[video_id]
    finally:
        watcher.stop()
    if status != VideoStatus.READY:
        raise RuntimeError(f"video {video_id} ended {status}")
    seen = watcher.first("worker")
    assert seen is not None
    return seen.started_at - accepted, seen.seen_at - accepted, ready_at - accepted, started - accepted


def main() -> None:
    args = parse_args()
    results: list[tuple[float, float, float, float]] = []
    with temp_dir("bench-burst-") as work:
        clip = make_clip(work / "clip.mp4", 1, size="320x240")
        with LocalFarm(work / "home", min_workers=0, max_workers=args.max_workers, scale_down_after_s=1) as farm:
            conn = redis.Redis.from_url(farm.redis_url())
            for i in range(args.bursts):
                results.append(one_burst(farm, conn, clip))
                forked, seen, ready, _ = (1000 * x for x in results[-1])
                print(f"burst {i + 1}: forked {forked:.0f} ms, seen {seen:.0f} ms, registered {ready:.0f} ms",
                      flush=True)
                time.sleep(0.5)
        print(f"farm stopped with SIGTERM; processes left behind: {len(farm.leftovers)}")
    report(args, results)


def report(args: argparse.Namespace, results: list[tuple[float, float, float, float]]) -> None:
    *columns, starts = list(zip(*results, strict=True))
    since_start = [[x - s for x, s in zip(col, starts, strict=True)] for col in columns]
    names = ["process spawned (fork time, /proc stat)", "process seen by /proc watcher",
             "worker registered (presence hash in Redis)"]
    print()
    print(f"{args.bursts} bursts of one upload (320x240 1 s clip) from 0 workers, max {args.max_workers}, "
          f"scale-down-after 1 s; {machine()}")
    print()
    print(table(["event", "after 201: median ms", "min ms", "max ms", "after upload start: median ms"],
                [[name, 1000 * median(col), 1000 * min(col), 1000 * max(col), 1000 * median(other)]
                 for name, col, other in zip(names, columns, since_start, strict=True)]))
    print(f"(upload request start -> 201: median {-1000 * median(starts):.0f} ms; negative 'after 201' values: "
          "the autoscaler acted before the client had read the answer)")
    spawned, ready = median(columns[0]), median(columns[2])
    print(f"\ntarget <= 1 s: process spawned {'met' if spawned <= 1 else 'MISSED'} ({1000 * spawned:.0f} ms); "
          f"worker registered {'met' if ready <= 1 else 'MISSED'} ({1000 * ready:.0f} ms)")


if __name__ == "__main__":
    main()
