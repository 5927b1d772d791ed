"""One ffmpeg decoding once and `split`ting into every rendition vs one ffmpeg per rendition.

Both sides run exactly the command a chunk job builds (`transcoder.command.chunk_args`, x264, the
farm's ladder) for the whole video as one chunk; the per-rendition side builds it with one output at
a time. Picture only: since issue 13 the audio is its own job, encoded once whatever the rungs, so
neither side encodes it. Each ffmpeg's own CPU time comes from wait4; the order of the two sides
alternates between repetitions.

    python bench/one_decode.py --seconds 20 --reps 5 --rungs 1080p,720p
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    WHOLE_VIDEO,
    Measure,
    chunk_command,
    ladder_plans,
    machine,
    make_clip,
    median,
    run_measured,
    source_info,
    table,
    temp_dir,
)

from transcoder.ladder import OutputPlan
from vidfarm.probe import SourceInfo


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="clip length (default 10)")
    parser.add_argument("--size", default="1920x1080", help="clip size (default 1920x1080)")
    parser.add_argument("--rate", type=int, default=30, help="clip frame rate (default 30)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each side (default 3)")
    parser.add_argument("--rungs", default="1080p,720p", help="ladder (default 1080p,720p)")
    parser.add_argument("--source-encode", default="-preset ultrafast",
                        help="x264 options of the generated source, e.g. '-preset veryfast -b:v 16M' for a "
                             "phone-like file that costs more to decode (default '-preset ultrafast')")
    return parser.parse_args()


def run_split(source: Path, info: SourceInfo, outputs: list[tuple[OutputPlan, Path]]) -> Measure:
    return run_measured(chunk_command(source, info, outputs, WHOLE_VIDEO))


def run_separate(source: Path, info: SourceInfo, outputs: list[tuple[OutputPlan, Path]]) -> Measure:
    total = Measure(0.0, 0.0)
    for output in outputs:
        total = total + run_measured(chunk_command(source, info, [output], WHOLE_VIDEO))
    return total


def main() -> None:
    args = parse_args()
    with temp_dir("bench-one-decode-") as work:
        source = make_clip(work / "source.mp4", args.seconds, size=args.size, rate=args.rate,
                           encode=args.source_encode.split())
        info = source_info(source)
        plans = ladder_plans(info, args.rungs.split(","))
        outputs = [(plan, work / f"out-{plan.name}.mp4") for plan in plans]
        split: list[Measure] = []
        separate: list[Measure] = []
        for rep in range(args.reps):
            order = [(split, run_split), (separate, run_separate)]
            for results, func in order if rep % 2 == 0 else reversed(order):
                results.append(func(source, info, outputs))
            print(f"rep {rep + 1}: split cpu {split[-1].cpu_s:.2f} s wall {split[-1].wall_s:.2f} s | "
                  f"per-rendition cpu {separate[-1].cpu_s:.2f} s wall {separate[-1].wall_s:.2f} s", flush=True)
    report(args, plans, split, separate)


def report(args: argparse.Namespace, plans: list[OutputPlan], split: list[Measure], separate: list[Measure]) -> None:
    cpu_ratios = [s.cpu_s / o.cpu_s for s, o in zip(separate, split, strict=True)]
    wall_ratios = [s.wall_s / o.wall_s for s, o in zip(separate, split, strict=True)]
    print()
    print(f"clip: {args.size}@{args.rate} {args.seconds:g} s testsrc2+sine (x264 {args.source_encode}); renditions: "
          f"{', '.join(f'{p.name} {p.width}x{p.height}' for p in plans)} (picture only); x264 veryfast; "
          f"{args.reps} reps; "
          f"{machine()}")
    print()
    print(table(
        ["mode", "median CPU s", "median wall s", "min CPU s", "max CPU s"],
        [["one ffmpeg + split", median(m.cpu_s for m in split), median(m.wall_s for m in split),
          min(m.cpu_s for m in split), max(m.cpu_s for m in split)],
         ["one ffmpeg per rendition", median(m.cpu_s for m in separate), median(m.wall_s for m in separate),
          min(m.cpu_s for m in separate), max(m.cpu_s for m in separate)]],
    ))
    print()
    print(table(
        ["ratio (per-rendition / split)", "median of per-rep ratios", "min", "max"],
        [["CPU seconds", median(cpu_ratios), min(cpu_ratios), max(cpu_ratios)],
         ["wall time", median(wall_ratios), min(wall_ratios), max(wall_ratios)]],
    ))
    verdict = "met" if median(cpu_ratios) >= 1.15 else "MISSED"
    print(f"\ntarget >= 1.15x fewer CPU seconds: {verdict} ({median(cpu_ratios):.2f}x)")


if __name__ == "__main__":
    main()
