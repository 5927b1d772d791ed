"""Redis clients an API process holds for open live event streams (`GET /v1/videos/{id}/events`).

One `vidfarm api` process with its own redis-server, SQLite catalog and storage; one queued video (no
worker, so its streams stay open). The bench counts Redis's clients (`CLIENT LIST`, less its own
connection) before any request, after a warm-up of plain requests at the streams' concurrency (the
API's ordinary connection pool grows with concurrent requests, streams or not), and with all streams
open; then publishes one event on the video's channel, as a worker does, and times its arrival at
every stream; then asks for one stream more than the per-key cap allows. With `--baseline REV`, the
same on the code of an earlier revision (extracted with `git archive`, no worktree) for comparison.

    python bench/event_streams.py --streams 200 --concurrency 50 --baseline 0911e98

Target (issue 18): growth <= 2 Redis clients per API process with 200 streams open.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import redis
from _common import ROOT, machine, make_clip, percentile, table, temp_dir
from upload_stream import API_KEY, start_api

from vidfarm import events
from vidfarm.localredis import LocalRedis

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MARKER = 12.5  # a progress value the video never has: it can only come from the published event


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="event streams to open (default 200)")
    parser.add_argument("--concurrency", type=int, default=50, help="streams opened at once (default 50)")
    parser.add_argument("--baseline", help="also measure this git revision, e.g. a commit before the hub")
    return parser.parse_args()


def clients(conn: redis.Redis) -> int:
    return len(conn.client_list()) - 1  # less this bench's own connection


async def open_stream(client: httpx.AsyncClient, path: str, gate: asyncio.Semaphore, opened: list[float],
                      arrivals: list[float], stop: asyncio.Event) -> None:
    """Holds a place at the gate until its first event arrives: at most `concurrency` opening at once."""
    await gate.acquire()
    try:
        async with client.stream("GET", path) as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream refused: {response.status_code} {await response.aread()!r}")
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    break
            gate.release()
            gate = None
            opened.append(time.monotonic())
            async for line in lines:
                if line.startswith("data: ") and json.loads(line[6:]).get("progress") == MARKER:
                    arrivals.append(time.monotonic())
                    break
            await stop.wait()
    finally:
        if gate is not None:
            gate.release()


async def measure_streams(url: str, conn: redis.Redis, video_id: str, streams: int, concurrency: int) -> dict:
    path = f"/v1/videos/{video_id}/events"
    limits = httpx.Limits(max_connections=streams + concurrency + 5, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=120, limits=limits) as client:
        # Warm-up: the same concurrency with plain reads, so the pool's growth is not counted as streams'.
        for _ in range(3):
            await asyncio.gather(*(client.get(f"/v1/videos/{video_id}") for _ in range(concurrency)))
        warm = clients(conn)
        stop, gate = asyncio.Event(), asyncio.Semaphore(concurrency)
        opened: list[float] = []
        arrivals: list[float] = []
        started = time.monotonic()
        tasks = [asyncio.create_task(open_stream(client, path, gate, opened, arrivals, stop)) for _ in range(streams)]
        deadline = started + 120
        while len(opened) < streams and time.monotonic() < deadline:
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise failed[0].exception()
            await asyncio.sleep(0.01)
        open_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # the API subscribes; a connection per stream would show by now
        with_streams = clients(conn)
        sent = time.monotonic()
        events.publish(conn, video_id, "progress", status="queued", progress=MARKER)
        deadline = sent + 30
        while len(arrivals) < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        latencies = [(t - sent) * 1000 for t in arrivals]
        async with client.stream("GET", path, timeout=10) as extra:
            pass  # its status is all that counts (a stream the API accepts would stay open)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"warm": warm, "with_streams": with_streams, "open_s": open_s, "received": len(arrivals),
            "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
            "max_ms": max(latencies) if latencies else float("nan"), "extra": extra.status_code}


def run(code: Path, label: str, work: Path, clip: Path, args: argparse.Namespace) -> list[object]:
    server = LocalRedis(work / "redis", persistent=False).start()
    # The cap: exactly the streams measured, so the one more the bench asks for is over it.
    api, url = start_api(work, server.url, {"VIDFARM_MAX_EVENT_STREAMS_PER_TENANT": str(args.streams)}, cwd=code)
    try:
        conn = redis.Redis.from_url(server.url)
        idle = clients(conn)
        with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as http, clip.open("rb") as handle:
            created = http.post("/v1/videos", files={"file": (clip.name, handle, "video/mp4")})
            created.raise_for_status()
        result = asyncio.run(measure_streams(url, conn, created.json()["id"], args.streams, args.concurrency))
        growth = result["with_streams"] - result["warm"]
        return [label, args.streams, idle, result["warm"], result["with_streams"], growth, f"{result['open_s']:.1f}",
                f"{result['received']}/{args.streams}", result["p50_ms"], result["max_ms"], result["extra"]]
    finally:
        api.terminate()
        api.wait(timeout=30)
        server.stop()


def extract(revision: str, into: Path) -> Path:
    """The code of `revision` as plain files (`git archive`): no worktree, nothing in the repository changes."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    args = parse_args()
    with temp_dir("bench-event-streams-") as work:
        clip = make_clip(work / "clip.mp4", 1, size="320x240")
        codes = [(ROOT, "this checkout")]
        if args.baseline:
            codes.insert(0, (extract(args.baseline, work / "baseline-code"), f"baseline {args.baseline}"))
        rows = [run(code, label, work / f"run{i}", clip, args) for i, (code, label) in enumerate(codes)]
    print(f"{machine()}; {args.streams} streams on one video, opened {args.concurrency} at a time\n")
    print(table(["code", "streams", "Redis clients idle", "after warm-up", "with streams open",
                 "growth", "open (s)", "event received", "p50 (ms)", "max (ms)", "one more stream"], rows))


if __name__ == "__main__":
    main()
