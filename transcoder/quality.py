"""What each rendition looks like next to its source: VMAF (model vmaf_v0.6.1) and PSNR, per chunk.

The encode stays on the system ffmpeg (Debian's has no libvmaf). The scorer is a second ffmpeg that
has it: `VIDFARM_QUALITY_SCORER`, or by default the static build inside the pinned `imageio-ffmpeg`
wheel. Where neither runs, renditions are "not scored" and everything else works as before.

Decoding the source a second time would cost more than the 10 % of the encode's CPU the scoring may
spend (a high-bit-rate source decodes in about half the time a veryfast ladder encodes it), so the
encode itself writes the reference: the sampled frames (a few of one GOP in m, see sample_runs), after
the frame-rate converter and the cut, at the source's display size, uncompressed. The scorer reads
those and the same frames of each rendition, decoding only the sampled GOPs (scaled back up to the
source's size, as the VMAF authors recommend for a ladder). transcoder/floor.py acts on the scores.
A chunk's result keeps its per-frame VMAF scores, so the video's mean and 5th percentile are the
frame-weighted combination of its chunks.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg

from transcoder.command import QUIET, ReferenceFrames
from transcoder.ladder import OutputPlan
from transcoder.runner import FfmpegError, FfmpegKilled, FfmpegStalled

log = logging.getLogger(__name__)

VMAF_MODEL = "vmaf_v0.6.1"
LOW_PERCENTILE = 5
REFERENCE_FILE = "reference.nut"
OFF = "off"


@functools.cache
def scorer_binary(configured: str) -> str | None:
    """An ffmpeg whose filters include libvmaf, or None ("not scored"). Checked once per process."""
    if configured.strip().lower() == OFF:
        return None
    candidate = configured.strip() or _bundled_ffmpeg()
    if not candidate:
        return None
    binary = shutil.which(candidate) or candidate
    try:
        listed = subprocess.run([binary, "-hide_banner", "-filters"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("no quality scores: cannot run %s: %s", binary, exc)
        return None
    if " libvmaf " not in listed.stdout:
        log.warning("no quality scores: %s has no libvmaf filter", binary)
        return None
    return binary


def _bundled_ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg  # the optional `quality` extra
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the wheel for another platform, or its binary removed
        return None


@dataclass(frozen=True)
class Run:
    """Frames `first`, `first + step`, ... up to `last` of a chunk are scored (chunk frame numbers).
    `start` is the keyframe the run's GOP opens with: the scorer decodes a rendition from there, and
    nothing before it (every GOP starts with a keyframe, so a seek lands exactly on it)."""

    start: int
    first: int
    last: int
    step: int

    @property
    def frames(self) -> int:
        return (self.last - self.first) // self.step + 1


def sample_runs(frames: int, gop: int, every: int, gop_every: int) -> tuple[Run, ...]:
    """Which frames of a chunk of `frames` are scored: every `every`-th frame of one GOP in
    `gop_every`, those GOPs spread evenly over the chunk, at least one. Decoding is what a sparse
    sample across the whole chunk costs most (bench/quality.py), so the samples are packed into a
    few GOPs and only those are decoded. Inside a GOP they start `every // 2` frames after the
    keyframe: keyframes look better than the frames between them and would weigh too much."""
    if every == 1 and gop_every == 1:
        return (Run(0, 0, frames - 1, 1),)
    gops = math.ceil(frames / gop)
    count = max(1, round(gops / gop_every))
    runs = []
    for index in range(count):
        start = (2 * index + 1) * gops // (2 * count) * gop  # the middle GOP of each 1/count of the chunk
        end = min(frames, start + gop) - 1
        first = start + min(every // 2, end - start)
        runs.append(Run(start, first, first + (end - first) // every * every, every))
    return tuple(runs)


# A sampled frame is fed to libvmaf with the frame before it, and libvmaf scores every other frame
# (`n_subsample`): VMAF's motion term then measures the motion of that frame, not the jump from one
# sample to the next (which inflated sparse samples' scores by up to 3 points). One frame more leads
# the chunk's sample so that the pairs' second frames fall on the frames libvmaf scores; its score
# is dropped. Steps under this are fed as they are (the frames before are samples themselves).
PAIRED_STEP = 6


def paired(runs: Sequence[Run]) -> bool:
    """Whether samples are fed in pairs: each run's frames before its samples (and the lead frame)
    must lie in its GOP, which a chunk's last GOP of one or two frames does not allow."""
    return all(run.step >= PAIRED_STEP and run.first - run.start >= 2 for run in runs)


def select_expr(runs: Sequence[Run], *, pairs: bool, offset: int = 0, lead: bool = True) -> str:
    """A select filter expression true on the frames fed to libvmaf for the runs (each sample, and
    when paired the frame before it, and the lead frame if `lead`), for a stream whose frame 0 is the
    chunk's frame `offset`."""
    terms = []
    for run in runs:
        first, last = run.first - offset, run.last - offset
        sampled = f"not(mod(n-{first},{run.step}))"
        if pairs:
            sampled = f"({sampled}+not(mod(n-{first - 1},{run.step})))"
        terms.append(f"between(n,{first - 1 if pairs else first},{last})*{sampled}")
    if pairs and lead:
        terms.insert(0, f"eq(n,{runs[0].first - offset - 2})")
    return "+".join(terms)


def frames_sampled(runs: Sequence[Run]) -> int:
    return sum(run.frames for run in runs)


@dataclass(frozen=True)
class ChunkSample:
    """What the encode writes for the scorer (the reference), which frames those are, and whether
    they are fed to libvmaf in pairs (see PAIRED_STEP)."""

    reference: ReferenceFrames
    runs: tuple[Run, ...]
    pairs: bool


def rendition_frames(path: Path, runs: Sequence[Run], pairs: bool, fps: Fraction, threads: int):
    """The runs' frames of one rendition, in order, decoding each run's GOP only up to its last
    scored frame. The seek aims half a frame past the keyframe without `accurate_seek`, so it lands
    on that keyframe and drops nothing; select then counts frames from it."""
    parts = []
    for run in runs:
        seek = {"ss": f"{float((run.start + Fraction(1, 2)) / fps):.6f}", "noaccurate_seek": None} if run.start else {}
        # A few frames of slack past the last: packets come in decode order (B-frames).
        limit = {"t": f"{float((run.last - run.start + 4) / fps):.6f}"}
        stream = ffmpeg.input(str(path), threads=threads, **seek, **limit).video
        parts.append(stream.filter("select", select_expr([run], pairs=pairs, offset=run.start, lead=run is runs[0])))
    return parts[0] if len(parts) == 1 else ffmpeg.concat(*parts, v=1, a=0)


def scorer_args(sample: ChunkSample, renditions: Sequence[tuple[OutputPlan, Path, Path]], *, fps: Fraction,
                threads: int | None) -> list[str]:
    """The scorer's arguments: one decode of the reference, one libvmaf (with PSNR) per rendition,
    each writing its per-frame log (JSON) to the given path."""
    reference = sample.reference
    pairs = sample.pairs
    timebase = f"{fps.denominator}/{fps.numerator}"
    # One thread per decoder and filter unless the worker says otherwise: the least CPU per frame,
    # and chunks already run in parallel on every worker.
    n_threads = threads or 1
    ref = ffmpeg.input(str(reference.path), threads=n_threads).video.filter("settb", timebase).filter("setpts", "N")
    copies = ref.filter_multi_output("split", len(renditions)) if len(renditions) > 1 else None
    nodes = []
    for index, (_plan, path, log_path) in enumerate(renditions):
        source = copies.stream(index) if copies is not None else ref
        distorted = (
            rendition_frames(path, sample.runs, pairs, fps, n_threads)
            .filter("settb", timebase).filter("setpts", "N")
            # To the reference's size: bicubic, as the VMAF authors do for a ladder.
            .filter("scale", reference.width, reference.height, flags="bicubic").filter("format", "yuv420p")
        )
        scored = ffmpeg.filter(
            [distorted, source], "libvmaf", model=f"version={VMAF_MODEL}", feature="name=psnr",
            log_fmt="json", log_path=str(log_path), n_threads=n_threads, n_subsample=2 if pairs else 1,
        )
        nodes.append(scored.output("-", format="null"))
    merged = ffmpeg.merge_outputs(*nodes).global_args(*QUIET, "-progress", "pipe:1", "-nostats",
                                                      "-filter_complex_threads", str(n_threads))
    return merged.get_args()


@dataclass(frozen=True)
class ChunkScore:
    """One rendition of one chunk: VMAF of every scored frame, and the sum of their luma PSNR."""

    vmaf: list[float]
    psnr_sum: float

    def as_json(self) -> dict[str, Any]:
        return {"vmaf": self.vmaf, "psnr_sum": round(self.psnr_sum, 3)}


def read_log(path: Path, *, paired: bool = False) -> ChunkScore:
    frames = json.loads(path.read_text())["frames"]
    if paired:
        frames = frames[1:]  # the lead frame's
    vmaf = [round(float(f["metrics"]["vmaf"]), 3) for f in frames]
    # PSNR of identical pictures is infinite; libvmaf caps it (60 dB at 8 bits), which keeps the sum finite.
    psnr = sum(float(f["metrics"]["psnr_y"]) for f in frames)
    return ChunkScore(vmaf, psnr)


def combine(chunks: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The rendition's quality from its chunks' scores (frame-weighted), or None if any chunk has
    none: a score that silently left out part of the video would be a lie."""
    vmaf: list[float] = []
    psnr_sum = 0.0
    for chunk in chunks:
        if not chunk or not chunk.get("vmaf"):
            return None
        vmaf.extend(chunk["vmaf"])
        psnr_sum += chunk["psnr_sum"]
    if not vmaf:
        return None
    return {
        "vmaf_mean": round(sum(vmaf) / len(vmaf), 2),
        "vmaf_p5": round(percentile(vmaf, LOW_PERCENTILE), 2),
        "psnr_db": round(psnr_sum / len(vmaf), 2),
        "frames_scored": len(vmaf),
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def chunk_sample(folder: Path, frames: int, gop: int, source_width: int, source_height: int, *, every: int,
                 gop_every: int, max_bytes: int) -> ChunkSample:
    """The frames of a chunk of `frames` to score and where the encode writes them. Where they would
    pass `max_bytes` of scratch (uncompressed 4:2:0 at the source's size), fewer are taken: a 60 s
    chunk of an 8K source scored frame by frame never fills a disk."""
    # Even sizes: 4:2:0 chroma needs them; the renditions are scaled to exactly this size.
    width, height = source_width - source_width % 2, source_height - source_height % 2
    runs = sample_runs(frames, gop, every, gop_every)
    frames_fitting = max(1, max_bytes // (width * height * 3 // 2))
    while frames_sampled(runs) > frames_fitting:  # fewer frames per GOP, then fewer GOPs: one frame at least
        every, gop_every = (every * 2, gop_every) if every < gop else (every, gop_every * 2)
        runs = sample_runs(frames, gop, every, gop_every)
    pairs = paired(runs)
    return ChunkSample(ReferenceFrames(folder / REFERENCE_FILE, select_expr(runs, pairs=pairs), width, height),
                       runs, pairs)


def score_chunk(binary: str, sample: ChunkSample, outputs: Sequence[tuple[OutputPlan, Path]], *,
                fps: Fraction, threads: int | None, run) -> dict[str, dict[str, Any]] | None:
    """Each rendition's ChunkScore (as JSON) by rung name, or None where the scorer failed: a score
    is a report on the encode, never a reason to fail it. `run` runs ffmpeg (the attempt's, so a
    cancel stops the scorer too). The reference stays (a rung encoded again is scored against it);
    whoever made it removes it."""
    folder = sample.reference.path.parent
    logs = [(plan, path, folder / f"{path.stem}.vmaf.json") for plan, path in outputs]
    try:
        run(scorer_args(sample, logs, fps=fps, threads=threads), binary)
        return {plan.name: read_log(log_path, paired=sample.pairs).as_json() for plan, _path, log_path in logs}
    except (FfmpegError, FfmpegStalled, FfmpegKilled, OSError, ValueError, KeyError) as exc:
        log.warning("not scored: the scorer failed: %s", exc)
        return None
    finally:
        for _plan, _path, log_path in logs:
            log_path.unlink(missing_ok=True)
