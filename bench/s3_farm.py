"""The farm end to end on S3 (moto's server, its own process) vs on a directory: the same batch of
clips, the same `vidfarm up` farm settings, wall time from the first upload to the last `ready`.

Two farms run side by side for the whole run (`vidfarm up --min-workers K --max-workers K`, own
Redis and VIDFARM_HOME each, the workers already up); reps alternate which goes first. The S3 farm
has VIDFARM_STORAGE_URL=s3://bench/media: uploads go into multipart uploads, workers read the source
through presigned URLs, write on scratch and upload chunks, renditions and packages; the directory
farm does none of that. The bucket is emptied between reps.

    python bench/s3_farm.py --clips 4 --seconds 10 --workers 2 --reps 3
"""

from __future__ import annotations

import argparse

from _common import LocalFarm, MotoS3, machine, make_clip, median, table, temp_dir
from farm_overhead import Side, parse_args, run_farm


def main() -> None:
    args = parse_args(__doc__, seconds=10, size="1280x720", reps=3)
    runs: dict[str, list[Side]] = {"directory": [], "s3": []}
    with temp_dir("bench-s3-farm-") as work:
        clips = [make_clip(work / "clips" / f"clip{i}.mp4", args.seconds, size=args.size) for i in range(args.clips)]
        moto = MotoS3()
        s3_env = {**moto.env, "VIDFARM_STORAGE_URL": "s3://bench/media"}
        farms = {"directory": LocalFarm(work / "dir-home", min_workers=args.workers, max_workers=args.workers,
                                        scale_down_after_s=600),
                 "s3": LocalFarm(work / "s3-home", min_workers=args.workers, max_workers=args.workers,
                                 scale_down_after_s=600, env=s3_env)}
        try:
            for farm in farms.values():
                farm.start()
                farm.wait_workers(args.workers)
            for rep in range(args.reps):
                order = ["directory", "s3"] if rep % 2 == 0 else ["s3", "directory"]
                for name in order:
                    runs[name].append(run_farm(farms[name], clips))
                moto.empty()
                print(f"rep {rep + 1}: directory {runs['directory'][-1].wall_s:.2f} s, "
                      f"s3 {runs['s3'][-1].wall_s:.2f} s", flush=True)
        finally:
            for farm in farms.values():
                farm.stop()
            moto.stop()
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[Side]]) -> None:
    pairs = list(zip(runs["directory"], runs["s3"], strict=True))
    rows = [[i + 1, d.wall_s, d.cpu_s, s.wall_s, s.cpu_s, s.wall_s / d.wall_s] for i, (d, s) in enumerate(pairs)]
    print(f"\n{args.clips} clips x {args.seconds:g} s {args.size}, {args.workers} workers per farm, default ladder; "
          f"S3 = moto's server (own process, loopback); {machine()}\n")
    print(table(["rep", "directory wall s", "directory CPU s", "S3 wall s", "S3 CPU s", "wall ratio S3/dir"], rows))
    ratio = median(s.wall_s / d.wall_s for d, s in pairs)
    print(f"\ntarget wall ratio <= 1.10: {'met' if ratio <= 1.10 else 'MISSED'} (median {ratio:.3f})")


if __name__ == "__main__":
    main()
