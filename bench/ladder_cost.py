"""CPU cost of the streaming ladder: 1080p + 720p alone vs with the stream-only rungs below them.

Every side runs the ffmpeg commands a worker runs for one video (`bench/_common.graph_commands`,
built by transcoder.command's builders): the chunk encode (one decode, `split` into every rung, x264
veryfast), the audio job, finalize's stitches and CMAF segmenting, the poster. The video is one chunk,
so the decode is paid once per side. CPU = user+sys of each ffmpeg from wait4; sides alternate.

    python bench/ladder_cost.py --seconds 10 --reps 3
    python bench/ladder_cost.py --source-encode "-preset veryfast -b:v 16M"   # a phone-like source
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    Measure,
    graph_commands,
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

DOWNLOADS = ("1080p", "720p")
# (label, stream-only rungs) per side; the first is the baseline the others are compared with.
SIDES = (("1080p+720p", ()), ("+480p+360p (default)", ("480p", "360p")), ("+480p+360p+240p", ("480p", "360p", "240p")))
TARGET = 1.35


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="clip length (default 10)")
    parser.add_argument("--size", default="1920x1080", help="clip size (default 1920x1080)")
    parser.add_argument("--rate", type=int, default=30, help="clip frame rate (default 30)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each side (default 3)")
    parser.add_argument("--source-encode", default="-preset ultrafast",
                        help="x264 options of the generated source (default '-preset ultrafast')")
    return parser.parse_args()


def run_side(source: Path, info: SourceInfo, plans: list[OutputPlan], work: Path) -> tuple[Measure, Measure]:
    """(the chunk encode, every command of the graph)."""
    commands = graph_commands(source, info, plans, work, chunk_s=1e9)
    encode = Measure(0.0, 0.0)
    for command in commands.chunks:
        encode = encode + run_measured(command)
    total = encode
    for command in [*commands.audio, *commands.stitch, *commands.package, *commands.poster]:
        total = total + run_measured(command)
    return encode, total


def main() -> None:
    args = parse_args()
    results: dict[str, list[tuple[Measure, Measure]]] = {label: [] for label, _ in SIDES}
    with temp_dir("bench-ladder-") as work:
        source = make_clip(work / "source.mp4", args.seconds, size=args.size, rate=args.rate,
                           encode=args.source_encode.split())
        info = source_info(source)
        plans = {label: ladder_plans(info, DOWNLOADS, streamed) for label, streamed in SIDES}
        for rep in range(args.reps):
            order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
            for index, (label, _) in enumerate(order):
                results[label].append(run_side(source, info, plans[label], work / f"rep{rep}-{index}"))
            print(f"rep {rep + 1}: " + " | ".join(
                f"{label} encode {results[label][-1][0].cpu_s:.2f} s, all {results[label][-1][1].cpu_s:.2f} s"
                for label, _ in SIDES), flush=True)
    report(args, plans, results)


def report(args: argparse.Namespace, plans: dict[str, list[OutputPlan]],
           results: dict[str, list[tuple[Measure, Measure]]]) -> None:
    base_label = SIDES[0][0]
    base_encode = median(m[0].cpu_s for m in results[base_label])
    base_total = median(m[1].cpu_s for m in results[base_label])
    print()
    print(f"clip: {args.size}@{args.rate} {args.seconds:g} s testsrc2+sine (x264 {args.source_encode}); "
          f"x264 veryfast; one chunk; {args.reps} reps; {machine()}")
    print()
    rows = []
    for label, _ in SIDES:
        encode = median(m[0].cpu_s for m in results[label])
        total = median(m[1].cpu_s for m in results[label])
        rungs = ", ".join(f"{p.name} {p.width}x{p.height}" for p in plans[label])
        rows.append([label, rungs, encode, f"{encode / base_encode - 1:+.1%}", total, f"{total / base_total - 1:+.1%}",
                     median(m[1].wall_s for m in results[label])])
    print(table(["ladder", "outputs", "encode CPU s", "vs base", "whole graph CPU s", "vs base", "wall s"], rows))
    default = median(m[1].cpu_s for m in results[SIDES[1][0]]) / base_total
    if min(int(part) for part in args.size.split("x")) < 1080:
        # Below 1080p the base is the 720p download alone: the extra rungs weigh more, by design.
        print(f"\ndefault ladder over the downloads alone: {default - 1:+.1%} (the target is for 1080p sources)")
        return
    verdict = "met" if default <= TARGET else "MISSED"
    print(f"\ntarget: default ladder <= +{TARGET - 1:.0%} CPU over 1080p+720p: {verdict} ({default - 1:+.1%})")


if __name__ == "__main__":
    main()
