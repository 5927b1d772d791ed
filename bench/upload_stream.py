"""A large streamed upload: the API's peak RSS growth and the throughput on loopback.

The API runs as its own process (`vidfarm api`) against a private redis-server and a temp dir; its
VmRSS is sampled from /proc every 50 ms. The body is streamed from a generator in 1 MiB chunks as
`application/octet-stream` with a Content-Length, no file on the client side. By default the body is
a real 1 s MP4 (moov first) followed by zero padding up to the target size: ffprobe reads the MP4
and ignores the padding, so the upload is accepted (201) and the whole accepted path runs (stream to
disk, probe, promote, catalog row, enqueue). `--body zeros` sends only zeros (rejected with 422
after the whole body has been streamed).

    python bench/upload_stream.py --size-mib 4096 --reps 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import ROOT, VIDFARM, empty_files, machine, make_clip, median, rss_bytes, table, temp_dir, wait_until

from vidfarm.localredis import LocalRedis, free_port

MIB = 1024 * 1024
API_KEY = "bench-upload-key"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="body size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--reps", type=int, default=2, help="uploads (default 2)")
    parser.add_argument("--body", choices=["mp4-padded", "zeros"], default="mp4-padded",
                        help="what the body is (default mp4-padded: accepted with 201)")
    return parser.parse_args()


# -- the API process ------------------------------------------------------------------------------


def start_api(work: Path, redis_url: str, extra_env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """`vidfarm api` as its own process; `cwd` may be another checkout of the code (a git worktree)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFARM_")}
    env.update({
        "VIDFARM_HOME": str(work / "home"), "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{work / 'catalog.db'}", "VIDFARM_STORAGE_DIR": str(work / "storage"),
        "VIDFARM_API_KEYS": API_KEY, **(extra_env or {}),
    })
    proc = subprocess.Popen([*VIDFARM, "api", "--port", str(port)], env=env, cwd=cwd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None and sys.exit(f"vidfarm api exited with {proc.returncode}")

    wait_until(ready, 60, what="the API")
    return proc, url


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(rss_bytes(self.pid))
            time.sleep(self.every_s)

    def stop(self) -> list[int]:
        self.done.set()
        self.join()
        return self.samples


def baseline_rss(pid: int, seconds: float = 1.0) -> int:
    sampler = RssSampler(pid)
    sampler.start()
    time.sleep(seconds)
    return int(median(sampler.stop()))


# -- one upload -----------------------------------------------------------------------------------


@dataclass
class Result:
    status: int
    body_s: float        # first byte to last byte handed to the socket
    total_s: float       # request start to response
    peak_growth: int     # bytes over the idle baseline


def body(head: bytes, size: int, sent: list[float]) -> Iterator[bytes]:
    zeros = bytes(MIB)
    yield head
    left = size - len(head)
    while left > 0:
        chunk = zeros if left >= MIB else zeros[:left]
        left -= len(chunk)
        yield chunk
    sent.append(time.perf_counter())


def upload_once(url: str, pid: int, head: bytes, size: int) -> Result:
    baseline = baseline_rss(pid)
    sampler = RssSampler(pid)
    sampler.start()
    sent: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/octet-stream",
               "Content-Length": str(size)}
    started = time.perf_counter()
    response = httpx.post(url + "/v1/videos", params={"filename": "big.mp4"}, headers=headers,
                          content=body(head, size, sent), timeout=httpx.Timeout(60, read=600))
    total = time.perf_counter() - started
    time.sleep(0.2)
    peak = max(sampler.stop())
    return Result(response.status_code, sent[0] - started, total, peak - baseline)


def main() -> None:
    args = parse_args()
    size = args.size_mib * MIB
    results: list[Result] = []
    with temp_dir("bench-upload-") as work:
        head = make_clip(work / "head.mp4", 1, size="320x240").read_bytes() if args.body == "mp4-padded" else b""
        redis_server = LocalRedis(work / "redis", persistent=False).start()
        api, url = start_api(work, redis_server.url)
        try:
            for rep in range(args.reps):
                results.append(upload_once(url, api.pid, head, size))
                r = results[-1]
                print(f"rep {rep + 1}: {r.status} body {r.body_s:.2f} s total {r.total_s:.2f} s "
                      f"peak RSS +{r.peak_growth / MIB:.1f} MiB", flush=True)
                empty_files(work / "storage")  # keep the disk from filling up
        finally:
            api.terminate()
            api.wait(timeout=30)
            redis_server.stop()
    report(args, size, results)


def report(args: argparse.Namespace, size: int, results: list[Result]) -> None:
    rows = [[i + 1, r.status, r.body_s, size / r.body_s / 1e6, r.total_s, size / r.total_s / 1e6,
             r.peak_growth / MIB] for i, r in enumerate(results)]
    print()
    print(f"body: {args.size_mib} MiB {args.body} streamed from a generator (1 MiB chunks, httpx, loopback); "
          f"API = `vidfarm api` process, RSS from /proc every 50 ms; {machine()}")
    print()
    print(table(["rep", "HTTP", "body s", "body MB/s", "total s (incl. probe)", "total MB/s",
                 "peak RSS growth MiB"], rows))
    growth = max(r.peak_growth for r in results) / MIB
    rate = median(size / r.total_s / 1e6 for r in results)
    print(f"\ntarget peak RSS growth < 64 MiB: {'met' if growth < 64 else 'MISSED'} (worst {growth:.1f} MiB)")
    print(f"target >= 200 MB/s: {'met' if rate >= 200 else 'MISSED'} (median {rate:.0f} MB/s end to end)")


if __name__ == "__main__":
    main()
