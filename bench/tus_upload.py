"""1 GiB through tus (64 MiB PATCHes) vs one multipart POST, on loopback: throughput and API memory.

The same API process (`vidfarm api`, private redis-server, temp dir; see upload_stream.py) takes,
alternately, a multipart `POST /v1/videos` and a tus upload (`POST /v1/uploads`, then PATCHes of
`--chunk-mib`) of the same body: a real 1 s MP4 followed by zero padding, so both are accepted and run
the whole path (stream to disk, probe, promote, catalog row, enqueue). Both bodies are streamed from
generators in 1 MiB pieces with httpx; the time is from the first request to the last response, the
probe included. The API's VmRSS is sampled from /proc every 50 ms. With `--storage s3` both go into
moto's S3 server (its own process) instead of a directory: a tus upload then keeps one multipart
upload open across its PATCHes, with its state and tail in the bucket.

    python bench/tus_upload.py --size-mib 1024 --chunk-mib 64 --reps 2 [--storage s3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
from _common import MotoS3, empty_files, machine, make_clip, median, table, temp_dir
from upload_stream import API_KEY, MIB, RssSampler, baseline_rss, start_api

from vidfarm.localredis import LocalRedis

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TUS = {**AUTH, "Tus-Resumable": "1.0.0"}
BOUNDARY = "vidfarm-bench-boundary"
TIMEOUT = httpx.Timeout(60, read=600)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="body size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--chunk-mib", type=int, default=64, help="tus PATCH size in MiB (default 64)")
    parser.add_argument("--reps", type=int, default=2, help="uploads of each kind (default 2)")
    parser.add_argument("--storage", choices=["dir", "s3"], default="dir",
                        help="a directory (default), or moto's S3 server in its own process")
    return parser.parse_args()


def body_range(head: bytes, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of the body `head` + zeros, in pieces of at most 1 MiB."""
    zeros = bytes(MIB)
    position = start
    while position < end:
        inside_head = position < len(head)
        piece = head[position:min(end, position + MIB)] if inside_head else zeros[:min(MIB, end - position)]
        position += len(piece)
        yield piece


def multipart_post(http: httpx.Client, head: bytes, size: int) -> int:
    preamble = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode()
    epilogue = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield preamble
        yield from body_range(head, 0, size)
        yield epilogue

    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
               "Content-Length": str(len(preamble) + size + len(epilogue))}
    return http.post("/v1/videos", content=body(), headers=headers, timeout=TIMEOUT).status_code


def tus_upload(http: httpx.Client, head: bytes, size: int, chunk: int) -> int:
    created = http.post("/v1/uploads", headers={**TUS, "Upload-Length": str(size),
                                                 "Upload-Metadata": "filename YmlnLm1wNA=="})
    if created.status_code != 201:
        return created.status_code
    offset, status = 0, created.status_code
    while offset < size:
        end = min(size, offset + chunk)
        response = http.patch(created.headers["Location"], content=body_range(head, offset, end), timeout=TIMEOUT,
                              headers={**TUS, "Upload-Offset": str(offset), "Content-Length": str(end - offset),
                                       "Content-Type": "application/offset+octet-stream"})
        status = response.status_code
        if status != 204:
            return status
        offset = int(response.headers["Upload-Offset"])
    return status


@dataclass
class Result:
    kind: str
    status: int
    seconds: float
    peak_growth: int


def measure(kind: str, pid: int, send: Callable[[], int]) -> Result:
    baseline = baseline_rss(pid)
    sampler = RssSampler(pid)
    sampler.start()
    started = time.perf_counter()
    status = send()
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    return Result(kind, status, seconds, max(sampler.stop()) - baseline)


def main() -> None:
    args = parse_args()
    size, chunk = args.size_mib * MIB, args.chunk_mib * MIB
    results: list[Result] = []
    with temp_dir("bench-tus-") as work:
        head = make_clip(work / "head.mp4", 1, size="320x240").read_bytes()
        redis_server = LocalRedis(work / "redis", persistent=False).start()
        moto = MotoS3() if args.storage == "s3" else None
        api, url = start_api(work, redis_server.url, {**moto.env, "VIDFARM_STORAGE_URL": "s3://bench/media"}
                             if moto else None)
        try:
            with httpx.Client(base_url=url) as http:
                kinds = (("multipart POST", lambda: multipart_post(http, head, size)),
                         (f"tus {args.chunk_mib} MiB PATCHes", lambda: tus_upload(http, head, size, chunk)))
                for rep in range(args.reps):
                    for kind, send in kinds:
                        results.append(measure(kind, api.pid, send))
                        r = results[-1]
                        print(f"rep {rep + 1} {kind}: {r.status} {r.seconds:.2f} s {size / r.seconds / 1e6:.0f} MB/s "
                              f"peak RSS +{r.peak_growth / MIB:.1f} MiB", flush=True)
                        if moto:  # keep the disk (or moto's memory) from filling up
                            moto.empty()
                        else:
                            empty_files(work / "storage")
        finally:
            api.terminate()
            api.wait(timeout=30)
            redis_server.stop()
            if moto:
                moto.stop()
    report(args, size, results)


def report(args: argparse.Namespace, size: int, results: list[Result]) -> None:
    rows = [[r.kind, r.status, r.seconds, size / r.seconds / 1e6, r.peak_growth / MIB] for r in results]
    where = "moto's S3 server (own process)" if args.storage == "s3" else "a directory"
    print(f"\nbody: {args.size_mib} MiB (1 s MP4 + zero padding) streamed from generators (1 MiB pieces, httpx, "
          f"loopback) into {where}; API = `vidfarm api` process, RSS from /proc every 50 ms; {machine()}\n")
    print(table(["upload", "HTTP", "total s (incl. probe)", "MB/s", "peak RSS growth MiB"], rows))
    rate = {kind: median(size / r.seconds / 1e6 for r in results if r.kind == kind)
            for kind in dict.fromkeys(r.kind for r in results)}
    post, tus = rate.values()
    growth = max(r.peak_growth for r in results if r.kind != "multipart POST") / MIB
    print(f"\ntarget tus/POST throughput >= 0.8: {'met' if tus / post >= 0.8 else 'MISSED'} "
          f"(median {tus:.0f} vs {post:.0f} MB/s, ratio {tus / post:.2f})")
    print(f"target tus peak RSS growth < 64 MiB: {'met' if growth < 64 else 'MISSED'} (worst {growth:.1f} MiB)")


if __name__ == "__main__":
    main()
