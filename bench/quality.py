"""What the ladder's renditions look like (VMAF, PSNR, bits) for several kinds of content, and what
scoring them costs as a share of the encode's CPU, for several sampling intervals n.

Every side runs exactly the commands a chunk job builds: the encode (`transcoder.command.chunk_args`,
x264, the farm's ladder, the whole clip as one chunk) without and with the scorer's reference frames,
and the scorer (`transcoder.quality.scorer_args`, imageio-ffmpeg's libvmaf). Scoring's cost is what
the reference output adds to the encode plus the scorer's own CPU (both from wait4). The quality
table is at n = 1 (every frame), the truth the sampled scores estimate.

    python bench/quality.py --seconds 6 --every 1,31
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import (
    WHOLE_VIDEO,
    chunk_command,
    ladder_plans,
    machine,
    run_measured,
    source_info,
    table,
    temp_dir,
)

from transcoder import quality
from transcoder.command import X264
from vidfarm.chunks import chunk_window

# Synthetic 1080p30 content, from easy to hard for x264 at the ladder's caps.
CONTENT = {
    "slide": "color=c=white:s=1920x1080:r=30:d={d},drawbox=x='mod(t*300,1600)':y=400:w=200:h=200:c=blue:t=fill",
    "flat animation": "testsrc2=s=1920x1080:r=30:d={d}",
    "noisy gradient": "gradients=s=1920x1080:r=30:d={d}:speed=0.05,noise=alls=4:allf=t",
    "film grain": "testsrc2=s=1920x1080:r=30:d={d},noise=alls=14:allf=t+u",
    # Every pixel a cell that changes each frame: detail no cap at this size can carry.
    "cellular automaton": "cellauto=s=1920x1080:r=30:rule=110:random_fill_ratio=0.5:scroll=1,trim=duration={d}",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6, help="clip length (default 6)")
    parser.add_argument("--every", default="1,31", help="sampling intervals n to cost (default 1,31)")
    parser.add_argument("--content", default=",".join(CONTENT), help="which content kinds (default: all)")
    return parser.parse_args()


def make_source(path: Path, lavfi: str, seconds: float) -> Path:
    import subprocess

    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", lavfi.format(d=seconds), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "8",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def measure(name: str, lavfi: str, seconds: float, intervals: list[int], scorer: str, folder: Path):
    source = make_source(folder / "source.mp4", lavfi, seconds)
    info = source_info(source)
    plans = ladder_plans(info)
    fps = plans[0].fps
    outputs = [(plan, folder / f"{plan.name}.mp4") for plan in plans]
    encode = run_measured(chunk_command(source, info, outputs, WHOLE_VIDEO))
    costs, scores = [], {}
    for every in intervals:
        reference = quality.reference_for(folder, info.width, info.height, every)
        with_reference = run_measured(_with_reference(source, info, outputs, reference))
        logs = [(plan, path, folder / f"{plan.name}.json") for plan, path in outputs]
        scored = run_measured([scorer, *quality.scorer_args(reference, logs, fps=fps, threads=None)])
        added = max(0.0, with_reference.cpu_s - encode.cpu_s)
        share = (added + scored.cpu_s) / encode.cpu_s
        costs.append((name, every, encode.cpu_s, added, scored.cpu_s, f"{100 * share:.1f} %"))
        scores[every] = {plan.name: quality.combine([quality.read_log(log).as_json()]) for plan, _, log in logs}
        reference.path.unlink()
    truth = scores[min(intervals)]
    rows = []
    for plan, path in outputs:
        kbps = round(path.stat().st_size * 8 / seconds / 1000)
        q = truth[plan.name]
        sampled = scores[max(intervals)][plan.name]
        rows.append((name, plan.name, kbps, q["vmaf_mean"], q["vmaf_p5"], q["psnr_db"],
                     f"{sampled['vmaf_mean']} / {sampled['vmaf_p5']}"))
    return rows, costs


def _with_reference(source: Path, info, outputs, reference) -> list[str]:
    """chunk_command with the reference branch, as ChunkAttempt builds it when a scorer is there."""
    from transcoder.command import chunk_args
    from transcoder.job import first_frame

    fps = outputs[0][0].fps
    window = chunk_window(WHOLE_VIDEO, fps, first_frame({"start_s": info.start_s}, fps), info.file_start_s)
    return ["ffmpeg", *chunk_args(source, outputs, window=window, frames=None, encoder=X264,
                                  deinterlace=info.interlaced, hdr_transfer=info.hdr_transfer, reference=reference)]


def main() -> None:
    args = parse_args()
    intervals = sorted(int(n) for n in args.every.split(","))
    scorer = quality.scorer_binary("")
    if scorer is None:
        sys.exit("no ffmpeg with libvmaf: pip install imageio-ffmpeg (the `quality` extra)")
    quality_rows, cost_rows = [], []
    for name in args.content.split(","):
        with temp_dir("vidfarm-quality-") as folder:
            rows, costs = measure(name, CONTENT[name], args.seconds, intervals, scorer, folder)
        quality_rows += rows
        cost_rows += costs
        print(f"{name}: done", file=sys.stderr)
    print(f"machine: {machine()}; {args.seconds:g} s 1080p30 clips; x264 {X264.options['preset']}")
    print()
    print(table(["content", "rung", "kb/s", f"VMAF mean (n={intervals[0]})", f"VMAF p5 (n={intervals[0]})",
                 "PSNR dB", f"VMAF mean / p5 at n={intervals[-1]}"], quality_rows))
    print()
    print(table(["content", "n", "encode CPU s", "reference CPU s", "scorer CPU s", "scoring / encode"], cost_rows))


if __name__ == "__main__":
    main()
