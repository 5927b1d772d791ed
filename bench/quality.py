"""What the ladder's renditions look like (VMAF, PSNR, bits) for several kinds of content, what
scoring them costs as a share of the encode's CPU for several samplings, and what a VMAF floor does.

Every side runs exactly the commands a chunk job builds (the clip is one chunk): the encode
(`transcoder.command.chunk_args`, x264, the farm's ladder with its stream-only rungs) without and
with the scorer's reference frames, the scorer (`transcoder.quality.scorer_args`, imageio-ffmpeg's
libvmaf, the download rungs), and the floor (`transcoder.floor.score_chunk`: the rung encoded again
at the ceiling's caps where its sampled 5th percentile is under the floor). Scoring's cost is what
the reference output adds to the encode plus the scorer's own CPU (both user + sys from wait4), over
the encode without it. The truth every sampling is compared with is every frame scored.

    python bench/quality.py               # 12 s clips, samplings 30x3 (the default), 15x3, 30x1
    python bench/quality.py --quick       # 6 s clips, the default sampling only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

from _common import WHOLE_VIDEO, chunk_command, ladder_plans, machine, run_measured, source_info, table, temp_dir

from transcoder import floor, quality
from transcoder.command import X264, chunk_args
from transcoder.job import first_frame
from transcoder.runner import run_ffmpeg
from vidfarm.chunks import chunk_window
from vidfarm.settings import QUALITY_EVERY, QUALITY_GOP_EVERY

# Synthetic 1080p30 content, from easy to hard for x264 at the ladder's caps.
CONTENT = {
    "slide": "color=c=white:s=1920x1080:r=30:d={d},drawbox=x='mod(t*300,1600)':y=400:w=200:h=200:c=blue:t=fill",
    "flat animation": "testsrc2=s=1920x1080:r=30:d={d}",
    "film grain": "testsrc2=s=1920x1080:r=30:d={d},noise=alls=14:allf=t+u",
    # A zoom into the Mandelbrot set: fine detail everywhere, all of it moving.
    "fractal zoom": "mandelbrot=s=1920x1080:r=30:maxiter=256:end_scale=0.02,trim=duration={d}",
    # A camera pan across a soft, detailed still, with a little sensor noise: what a phone films.
    "camera pan": ("mandelbrot=s=2880x1620:r=30:maxiter=256:start_scale=0.8:end_scale=0.8,trim=duration={d},"
                   "crop=1920:1080:x='t*60':y='t*30',gblur=sigma=1.2,noise=alls=3:allf=t"),
}
EASY = ("slide", "flat animation")
FLOOR = 80.0
FLOOR_RUNG = "1080p"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 s clips, the default sampling only")
    parser.add_argument("--seconds", type=float, help="clip length (default 12, 6 with --quick)")
    parser.add_argument("--sampling", help="samplings to cost, EVERYxGOP_EVERY (default 30x3,15x3,30x1)")
    parser.add_argument("--content", default=",".join(CONTENT), help="which content kinds (default: all)")
    parser.add_argument("--cost-only", action="store_true",
                        help="only what scoring costs (no every-frame truth, no floor): for long chunks")
    args = parser.parse_args()
    args.seconds = args.seconds or (6 if args.quick else 12)
    default = f"{QUALITY_EVERY}x{QUALITY_GOP_EVERY}"
    args.sampling = args.sampling or (default if args.quick else f"{default},15x3,30x1")
    return args


@dataclass
class Clip:
    name: str
    folder: Path
    source: Path
    outputs: list
    fps: Fraction
    frames: int
    gop: int
    width: int
    height: int
    encode_cpu_s: float

    def encoder(self, info):
        window = chunk_window(WHOLE_VIDEO, self.fps, first_frame({"start_s": info.start_s}, self.fps),
                              info.file_start_s)
        return partial(chunk_args, self.source, window=window, frames=None, encoder=X264,
                       deinterlace=info.interlaced, hdr_transfer=info.hdr_transfer)


def make_source(path: Path, lavfi: str, seconds: float) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", lavfi.format(d=seconds), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "8",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def sample(clip: Clip, every: int, gop_every: int) -> quality.ChunkSample:
    return quality.chunk_sample(clip.folder, clip.frames, clip.gop, clip.width, clip.height, every=every,
                                gop_every=gop_every, max_bytes=8 << 30)


def scored_with(clip: Clip, encode, chosen: quality.ChunkSample) -> tuple[float, float, dict]:
    """Encode with the sample's reference and score it: (the CPU the reference added to the encode,
    the scorer's CPU, the scores)."""
    with_reference = run_measured(["ffmpeg", *encode(clip.outputs, reference=chosen.reference)])
    downloads = floor.scored(clip.outputs, ())
    logs = [(plan, path, clip.folder / f"{plan.name}.json") for plan, path in downloads]
    binary = quality.scorer_binary("")
    scorer = run_measured([binary, *quality.scorer_args(chosen, logs, fps=clip.fps, threads=None)])
    chosen.reference.path.unlink()
    paired = chosen.pairs
    scores = {plan.name: quality.combine([quality.read_log(log, paired=paired).as_json()]) for plan, _, log in logs}
    return max(0.0, with_reference.cpu_s - clip.encode_cpu_s), scorer.cpu_s, scores


def with_floor(clip: Clip, encode) -> dict:
    """The default sampling with a floor of 80 at 1080p: the floor's record, or the first score."""
    chosen = sample(clip, QUALITY_EVERY, QUALITY_GOP_EVERY)
    run_ffmpeg(encode(clip.outputs, reference=chosen.reference))
    scorer = floor.Scorer(quality.scorer_binary(""), chosen, clip.fps, None,
                          lambda args, binary: run_ffmpeg(args, binary=binary))
    scores = floor.score_chunk(scorer, clip.outputs, lambda outs: run_ffmpeg(encode(outs)),
                               floors=((FLOOR_RUNG, FLOOR),), ceiling=2.0)
    return scores[FLOOR_RUNG]


def measure(name: str, seconds: float, samplings: list[tuple[int, int]], folder: Path, cost_only: bool):
    source = make_source(folder / "source.mp4", CONTENT[name], seconds)
    info = source_info(source)
    plans = ladder_plans(info)
    outputs = [(plan, folder / f"{plan.name}.mp4") for plan in plans]
    encode_cpu = run_measured(chunk_command(source, info, outputs, WHOLE_VIDEO)).cpu_s
    frames = round(seconds * plans[0].fps)
    clip = Clip(name, folder, source, outputs, plans[0].fps, frames, plans[0].gop_frames, info.width, info.height,
                encode_cpu)
    encode = clip.encoder(info)
    truth = {} if cost_only else scored_with(clip, encode, sample(clip, 1, 1))[-1]
    bits = {plan.name: path.stat().st_size * 8 for plan, path in outputs}
    costs, sampled = [], {}
    for every, gop_every in samplings:
        chosen = sample(clip, every, gop_every)
        added, scorer, sampled[(every, gop_every)] = scored_with(clip, encode, chosen)
        costs.append((name, f"{every}x{gop_every}", quality.frames_sampled(chosen.runs), encode_cpu, added, scorer,
                      f"{100 * (added + scorer) / encode_cpu:.1f} %"))
    if cost_only:
        return [], costs
    floored = with_floor(clip, encode)
    rows = []
    default = sampled[samplings[0]]
    for plan, _path in floor.scored(outputs, ()):
        q, s = truth[plan.name], default[plan.name]
        row = [name, plan.name, round(bits[plan.name] / seconds / 1000), q["vmaf_mean"], q["vmaf_p5"], q["psnr_db"],
               f"{s['vmaf_mean']} / {s['vmaf_p5']}"]
        record = floored.get("floor") if plan.name == FLOOR_RUNG else None
        if record:
            kept = record[record["kept"]]
            row += [round(kept["bits"] / seconds / 1000), f"{kept['vmaf_mean']} / {kept['vmaf_p5']}",
                    f"{record['kept']} at {record['retry']['cap_kbps']} kb/s"]
        else:
            row += ["same", "same", "-"]
        rows.append(row)
    return rows, costs


def main() -> None:
    args = parse_args()
    samplings = [tuple(int(n) for n in s.split("x")) for s in args.sampling.split(",")]
    if quality.scorer_binary("") is None:
        sys.exit("no ffmpeg with libvmaf: pip install imageio-ffmpeg (the `quality` extra)")
    quality_rows, cost_rows = [], []
    for name in args.content.split(","):
        with temp_dir("vidfarm-quality-") as folder:
            rows, costs = measure(name, args.seconds, samplings, folder, args.cost_only)
        quality_rows += rows
        cost_rows += costs
        print(f"{name}: {rows} {costs}", file=sys.stderr, flush=True)  # in case a long run is cut short
    every, gop_every = samplings[0]
    print(f"machine: {machine()}; {args.seconds:g} s 1080p30 clips, each one chunk; x264 {X264.options['preset']}")
    print()
    print(table(["content", "rung", "kb/s", "VMAF mean (every frame)", "VMAF p5 (every frame)", "PSNR dB",
                 f"VMAF mean / p5 sampled {every}x{gop_every}", f"kb/s, floor {FLOOR:g} at {FLOOR_RUNG}",
                 "VMAF mean / p5 sampled, floor", "floor: kept"], quality_rows))
    print()
    print(table(["content", "sampling", "frames scored", "encode CPU s", "reference CPU s", "scorer CPU s",
                 "scoring / encode"],
                cost_rows))


if __name__ == "__main__":
    main()
