"""A 1 GiB upload through the API into S3 (moto's server, its own process) vs boto3's `upload_file`
of the same bytes to the same server, in the same run: the API's peak RSS growth and its throughput
as a ratio of boto3's.

The API (`vidfarm api`, VIDFARM_STORAGE_URL=s3://bench/media) streams the body into an S3 multipart
upload (8 MiB parts, at most 3 in flight), then probes the stored object through a presigned URL and
records the video. The body is upload_stream.py's: a real 1 s MP4 followed by zero padding, so the
upload is accepted (201) and the whole accepted path runs. boto3's side reads the same bytes from a
file with its defaults (8 MiB parts, 10 threads). Reps alternate the two; the bucket is emptied
between them. `--checksums` runs the API with VIDFARM_S3_CHECKSUMS=1 (a CRC32 on every part, as
boto3 sends by default).

    python bench/s3_upload.py --size-mib 1024 --reps 3 [--checksums]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import MotoS3, machine, make_clip, median, table, temp_dir
from upload_stream import MIB, upload_once

from vidfarm.localredis import LocalRedis


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="body size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--reps", type=int, default=3, help="uploads of each kind (default 3)")
    parser.add_argument("--checksums", action="store_true", help="the API with VIDFARM_S3_CHECKSUMS=1")
    return parser.parse_args()


def write_body(path: Path, head: bytes, size: int) -> Path:
    with path.open("wb") as out:
        out.write(head)
        out.truncate(size)  # zeros, as the API's body; sparse, so the page cache holds little
    return path


def boto3_upload(moto: MotoS3, path: Path) -> float:
    started = time.perf_counter()
    moto.client().upload_file(str(path), moto.bucket, "direct/body")
    return time.perf_counter() - started


def ranged_get_s(moto: MotoS3) -> float:
    """One 64 KiB ranged GET of the object boto3 uploaded: what each of the probe's reads costs here."""
    started = time.perf_counter()
    moto.client().get_object(Bucket=moto.bucket, Key="direct/body", Range="bytes=0-65535")["Body"].read()
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    size = args.size_mib * MIB
    api_rows, direct_s, get_s = [], [], []
    with temp_dir("bench-s3-upload-") as work:
        head = make_clip(work / "head.mp4", 1, size="320x240").read_bytes()
        body_file = write_body(work / "body.mp4", head, size)
        moto = MotoS3()
        redis_server = LocalRedis(work / "redis", persistent=False).start()
        from upload_stream import start_api

        api, url = start_api(work, redis_server.url, {**moto.env, "VIDFARM_STORAGE_URL": "s3://bench/media",
                                                      "VIDFARM_S3_CHECKSUMS": "1" if args.checksums else ""})
        try:
            for rep in range(args.reps):
                direct_s.append(boto3_upload(moto, body_file))
                get_s.append(ranged_get_s(moto))
                moto.empty()
                result = upload_once(url, api.pid, head, size)
                moto.empty()
                api_rows.append(result)
                print(f"rep {rep + 1}: boto3 {direct_s[-1]:.2f} s (a ranged GET {get_s[-1]:.2f} s); "
                      f"API {result.status} {result.total_s:.2f} s, "
                      f"peak RSS +{result.peak_growth / MIB:.1f} MiB", flush=True)
        finally:
            api.terminate()
            api.wait(timeout=30)
            redis_server.stop()
            moto.stop()
    report(args, size, api_rows, direct_s, get_s)


def report(args: argparse.Namespace, size: int, api_rows: list, direct_s: list[float], get_s: list[float]) -> None:
    rows = [[i + 1, d, size / d / 1e6, g, r.status, r.body_s, r.total_s, size / r.total_s / 1e6, d / r.total_s,
             r.peak_growth / MIB] for i, (r, d, g) in enumerate(zip(api_rows, direct_s, get_s, strict=True))]
    checksums = "CRC32 per part" if args.checksums else "no checksums"
    print(f"\n{args.size_mib} MiB into moto's S3 server (own process, loopback); API: {checksums}; {machine()}\n")
    print(table(["rep", "boto3 upload_file s", "boto3 MB/s", "one 64 KiB ranged GET s", "API HTTP",
                 "API body sent s", "API total s", "API MB/s",
                 "ratio API/boto3", "API peak RSS growth MiB"], rows))
    growth = max(r.peak_growth for r in api_rows) / MIB
    ratio = median(d / r.total_s for r, d in zip(api_rows, direct_s, strict=True))
    print(f"\ntarget peak RSS growth < 64 MiB: {'met' if growth < 64 else 'MISSED'} (worst {growth:.1f} MiB)")
    print(f"target throughput ratio >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'} (median {ratio:.2f})")


if __name__ == "__main__":
    main()
