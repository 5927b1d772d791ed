"""Load: N concurrent uploads of small clips against a running local farm; none may be lost.

Starts `vidfarm up` as a subprocess with its own VIDFARM_HOME (its own Redis, SQLite catalog and
storage, autoscaled workers from zero), then fires every upload at once from a thread pool (one
HTTP connection each). Measured per video: upload latency (request start -> 201) and end-to-end
time (request start -> `ready` seen by one list poll every 100 ms). Afterwards every video must be
`ready` with its renditions, the listing must hold exactly the accepted ids, and a sample of
renditions is downloaded and checked with ffprobe.

    python bench/load_uploads.py            # 100 uploads, 100 at once
    python bench/load_uploads.py --count 200 --concurrency 50
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _common import LocalFarm, machine, make_clip, percentile, table, temp_dir, wait_terminal

from vidfarm.states import VideoStatus


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="uploads (default 100, at most 200)")
    parser.add_argument("--concurrency", type=int, default=100, help="uploads in flight at once (default 100)")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 2,
                        help="farm's worker limit (default: CPU count)")
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="length of the 320x240 clip (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (farm home, logs)")
    return parser.parse_args()


def upload_one(http: httpx.Client, clip: bytes, index: int) -> tuple[str | None, float, float, str]:
    """(video id or None, start perf_counter, seconds to the answer, error text)."""
    started = time.perf_counter()
    try:
        response = http.post("/v1/videos", params={"filename": f"load-{index:03d}.mp4"}, content=clip,
                             headers={"Content-Type": "video/mp4"})
    except httpx.HTTPError as exc:
        return None, started, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        return None, started, elapsed, f"{response.status_code} {response.text[:200]}"
    return response.json()["id"], started, elapsed, ""


def check_rendition(http: httpx.Client, video: dict, folder: Path) -> None:
    for rendition in video["renditions"]:
        path = folder / f"{video['id']}-{rendition['name']}.mp4"
        path.write_bytes(http.get(rendition["url"]).content)
        out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", str(path)],
                             capture_output=True, check=True)
        duration = float(json.loads(out.stdout)["format"]["duration"])
        if abs(duration - video["source"]["duration_s"]) > 0.15:
            raise AssertionError(f"{video['id']} {rendition['name']}: {duration} s")


def main() -> int:
    args = parse_args()
    if args.count > 200:
        raise SystemExit("--count: at most 200 (the poller reads one page of 200)")
    with temp_dir("vidfarm-load-", keep=args.keep) as work:
        clip = make_clip(work / "clip.mp4", args.clip_seconds, size="320x240", rate=25).read_bytes()
        farm = LocalFarm(work / "home", min_workers=0, max_workers=args.max_workers, scale_down_after_s=60,
                         log_path=work / "up.log")
        with farm:
            limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
            with farm.client(timeout_s=300) as poller, httpx.Client(
                base_url=farm.url, headers=poller.headers, timeout=300, limits=limits,
            ) as http:
                began = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                    results = list(pool.map(lambda i: upload_one(http, clip, i), range(args.count)))
                uploaded_s = time.perf_counter() - began
                accepted = {vid: (start, took) for vid, start, took, _ in results if vid}
                errors = [err for vid, _, _, err in results if not vid]
                seen = wait_terminal(poller, accepted, poll_s=0.1, timeout_s=900)
                all_done_s = time.perf_counter() - began

                listing = poller.get("/v1/videos", params={"limit": 200}).json()["items"]
                by_id = {v["id"]: v for v in listing}
                lost = sorted(set(accepted) - set(by_id))
                not_ready = sorted(vid for vid, (status, _) in seen.items() if status != VideoStatus.READY)
                without_renditions = sorted(vid for vid in accepted if not by_id.get(vid, {}).get("renditions"))
                sample = random.Random(1).sample(sorted(accepted), min(5, len(accepted)))
                for vid in sample:
                    check_rendition(poller, by_id[vid], work)
                attempts = [by_id[vid]["attempts"] for vid in accepted if vid in by_id]

        upload_lat = [took for _, took in accepted.values()]
        end_to_end = [seen[vid][1] - start for vid, (start, _) in accepted.items()]
        rows = [(name, min(values), percentile(values, 50), percentile(values, 95), max(values))
                for name, values in (("upload latency (request -> 201)", upload_lat),
                                     ("end to end (request -> ready seen)", end_to_end))]
        print(f"machine: {machine()}")
        print(f"command: python bench/load_uploads.py --count {args.count} --concurrency {args.concurrency} "
              f"--max-workers {args.max_workers} --clip-seconds {args.clip_seconds}")
        print(f"clip: 320x240 25 fps {args.clip_seconds:g} s with AAC audio, {len(clip)} bytes")
        print(f"accepted {len(accepted)}/{args.count}, ready {len(seen) - len(not_ready)}, lost {len(lost)}, "
              f"not ready {len(not_ready)}, without renditions {len(without_renditions)}, "
              f"errors {len(errors)}, attempts > 1: {sum(1 for a in attempts if a > 1)}")
        print(f"all uploads answered in {uploaded_s:.1f} s; all ready after {all_done_s:.1f} s "
              f"({len(accepted) / all_done_s:.2f} videos/s)")
        print(table(["seconds", "min", "p50", "p95", "max"], rows))
        if farm.leftovers:
            print(f"processes outlived `vidfarm up`: {farm.leftovers}")
        for err in errors[:5]:
            print("error:", err)
        ok = (len(accepted) == args.count and not lost and not not_ready and not without_renditions
              and not farm.leftovers)
        print("RESULT:", "all accepted, all ready, none lost" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
