"""What taking the next job costs Redis, by the number of tenants with work (issue 20).

A private redis-server (no persistence). For each tenant count T, every tenant has jobs waiting in
its later-chunks queue only and is announced at both levels as an enqueue does (so the first pop also
drops all T tenants from the first-chunk level), and 2,000 jobs are taken with
`vidfarm.queues.Dispatcher.pop` (RQ's job fetch, the same for any dispatch, is left out). Reported:
Redis commands per pop (from INFO commandstats: the EVALSHA and every command it ran), the server's
time per pop (the script's usec), and the client's round trip.

    .venv/bin/python bench/dispatch_cost.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rq import Queue  # noqa: E402

from vidfarm.localredis import LocalRedis  # noqa: E402
from vidfarm.queues import Dispatcher, announce, task_queue  # noqa: E402

POPS = 2000


def fill(conn: redis.Redis, tenants: int) -> None:
    per_tenant = -(-POPS // tenants) + 1
    pipe = conn.pipeline(transaction=False)
    for n in range(tenants):
        key = Queue(task_queue("cpu", f"tenant-{n}", first=False), connection=conn).key
        pipe.rpush(key, *(f"job-{n}-{i}" for i in range(per_tenant)))
    pipe.execute()
    announce(conn, "cpu", [f"tenant-{n}" for n in range(tenants)], wake=False)


def stats(conn: redis.Redis) -> dict[str, dict[str, float]]:
    return {name.removeprefix("cmdstat_"): value for name, value in conn.info("commandstats").items()}


def measure(conn: redis.Redis, tenants: int) -> tuple[float, float, float]:
    conn.flushall()
    fill(conn, tenants)
    dispatcher = Dispatcher(conn, ["cpu"])
    dispatcher.pop()  # loads the script
    conn.config_resetstat()
    started = time.perf_counter()
    for _ in range(POPS):
        assert dispatcher.pop() is not None
    round_trip_us = (time.perf_counter() - started) / POPS * 1e6
    counted = stats(conn)
    commands = sum(s["calls"] for s in counted.values()) / POPS
    return commands, counted["evalsha"]["usec"] / POPS, round_trip_us


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = LocalRedis(Path(folder), persistent=False).start()
        conn = redis.Redis.from_url(server.url)
        print("| tenants with work | Redis commands per pop | server µs per pop | round trip µs |")
        print("|-------------------|------------------------|-------------------|---------------|")
        try:
            for tenants in (1, 10, 100, 1000):
                commands, server_us, round_trip_us = measure(conn, tenants)
                print(f"| {tenants:>17} | {commands:>22.1f} | {server_us:>17.1f} | {round_trip_us:>13.1f} |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
