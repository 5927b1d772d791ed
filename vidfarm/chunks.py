"""The chunk plan of a video: which output frames each chunk job encodes. Pure arithmetic.

Chunks are cut on the output frame grid (the constant frame rate every rendition gets), never on
seconds of the source, and each is a whole number of 6 s segments (3 GOPs of 2 s). Every chunk
therefore starts with a keyframe exactly where a single-pass encode would have put one, and at a
segment boundary, so a chunk job can write its own final segments: they line up across rungs and
across chunk joins, and only the video's last segment may be short.

The plan (docs/chunking.md): the first chunk is one segment, so that the first segment of a video
exists a few seconds after its upload; the later chunks split the rest evenly into lengths of whole
segments, at most `chunk_seconds` each, enough of them to keep every worker of the pool busy
(`workers`) as long as no chunk goes under `min_chunk_seconds` (below that the fixed cost of a
chunk job outweighs what the split gains; bench/chunking.py measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

GOP_SECONDS = 2
GOPS_PER_SEGMENT = 3  # 6 s segments, Apple's recommended length; vidfarm/package.py cuts these
DEFAULT_CHUNK_SECONDS = 60.0
DEFAULT_POOL_MAX_WORKERS = 10  # deploy/k8s/base/pools.yaml's max for the cpu pool
# The shortest later chunk whose fixed cost (job start, the seek from the source keyframe before it,
# the warm-up decoded twice, the encoders' start) stays within 3 % of its encode: about 1.6 CPU s a
# chunk at 720p, 3 % at 52 s, rounded up to whole segments (bench/chunking.py --part overhead,
# BENCHMARKS.md "Chunk length and overhead").
MIN_CHUNK_SECONDS = 54.0
# A video of this many segments, plus less than a GOP, is one chunk: see plan_chunks.
SINGLE_CHUNK_SEGMENTS = 1
MAX_FPS = 60.0


def _snap_rate(fps: float) -> Fraction:
    """Recover exact NTSC rates (29.97 -> 30000/1001) that float storage blurred."""
    whole = round(fps)
    ntsc = round(fps * 1.001)
    if abs(fps - whole) > 0.001 and abs(fps * 1.001 - ntsc) < 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def output_fps(source_fps: float) -> Fraction:
    """Keep the source rate up to 60; above, divide by the smallest integer that gets under 60
    (120 -> 60, 100 -> 50) so motion stays even."""
    rate = _snap_rate(source_fps)
    if rate <= MAX_FPS:
        return rate
    return rate / math.ceil(rate / MAX_FPS)


@dataclass(frozen=True)
class ChunkSpan:
    index: int
    start_frame: int
    frames: int | None  # None: to the end of the source (the last chunk), whatever its true length

    @property
    def end_frame(self) -> int | None:
        return None if self.frames is None else self.start_frame + self.frames


def gop_frames(fps: Fraction) -> int:
    return max(1, round(fps * GOP_SECONDS))


def expected_frames(duration_s: float, fps: Fraction) -> int:
    """What the constant-rate output should hold; the exact count is known once the last chunk ends."""
    return max(1, round(duration_s * fps))


def segment_frames(fps: Fraction) -> int:
    return GOPS_PER_SEGMENT * gop_frames(fps)


def chunk_frames(fps: Fraction, chunk_seconds: float) -> int:
    """`chunk_seconds` rounded to whole segments (at least one)."""
    segment = segment_frames(fps)
    return segment * max(1, round(chunk_seconds * float(fps) / segment))


def plan_chunks(duration_s: float, fps: Fraction, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, workers: int = 1,
                min_chunk_seconds: float = MIN_CHUNK_SECONDS) -> list[ChunkSpan]:
    """A first chunk of one segment, then `later_chunk_segments` of the whole segments left; the last
    chunk is open-ended, so it absorbs the short last segment and any error in the declared duration.

    Any video longer than its first segment cuts that segment off as its own chunk, so that a 12 s
    video plays once 6 s are encoded, not 12. The rest must hold a GOP at least: a second chunk of a
    few frames would save nothing, and the declared duration (the container's, audio included) may
    promise frames the picture does not have, which a chunk of its own could not encode."""
    segment = segment_frames(fps)
    total = expected_frames(duration_s, fps)
    if total < SINGLE_CHUNK_SEGMENTS * segment + gop_frames(fps):
        return [ChunkSpan(0, 0, None)]
    max_segments = chunk_frames(fps, chunk_seconds) // segment
    min_segments = max(1, round(min_chunk_seconds * float(fps) / segment))
    # Under two whole segments the rest is one open-ended chunk (its length is never read: 0).
    later = later_chunk_segments(total // segment - 1, workers, max_segments, min_segments) or [0]
    lengths = [1, *later]
    spans, start = [], 0
    for index, length in enumerate(lengths):
        last = index == len(lengths) - 1
        spans.append(ChunkSpan(index, start, None if last else length * segment))
        start += length * segment
    return spans


def later_chunk_segments(segments: int, workers: int, max_segments: int, min_segments: int) -> list[int]:
    """Lengths (in segments, summing to `segments`) of the chunks after the first, longest first.

    The count is the fewest whole waves of `workers` chunks that keep each chunk within
    `max_segments` (a long video keeps every worker busy, and a wave does not end with a few workers
    idle), lowered so that no chunk goes under `min_segments`; `max_segments` wins over the minimum
    (it is the operator's explicit bound). The lengths differ by one segment at most: the same
    work per chunk, so the chunks of a wave end together."""
    if segments <= 0:
        return []
    fewest = math.ceil(segments / max_segments)
    waves = workers * math.ceil(fewest / max(1, workers))
    count = max(fewest, min(waves, segments // min_segments), 1)
    base, extra = divmod(segments, count)
    return [base + 1] * extra + [base] * (count - extra)


@dataclass(frozen=True)
class ChunkWindow:
    """How one chunk job reads the source. `seek_s` (relative to the start of the file, as ffmpeg's
    input `-ss` takes it) lands a little before the chunk so that decoders and filters that look at
    neighbouring frames (deinterlacing, the frame-rate converter) have warmed up by its first frame.
    `grid_start_frame` is the absolute output frame (timestamps kept with `-copyts`) where the
    frame-rate converter starts its grid; frames from there up to the chunk are dropped again."""

    seek_s: float
    grid_start_frame: int
    skip_frames: int


# Long enough for every filter that looks at neighbouring frames (the deinterlacer, the frame-rate
# converter, which holds the last frame before each slot); each second is decoded twice, so short.
WARMUP_SECONDS = 1.0


def chunk_window(span: ChunkSpan, fps: Fraction, first_frame: int, file_start_s: float) -> ChunkWindow:
    """`first_frame` is the absolute index (timestamp x fps, rounded) of the source's first video frame:
    frame 0 of the plan. Absolute indices make the grid identical however far into the file we seek."""
    warmup = min(span.start_frame, math.ceil(WARMUP_SECONDS * fps))
    grid_start = first_frame + span.start_frame - warmup
    # Input seeking decodes from the source keyframe before the target and drops what precedes the
    # target; the converter pads its grid from the first frame it gets, inside the warm-up.
    seek_s = max(0.0, float(Fraction(grid_start) / fps) - file_start_s)
    if span.start_frame == 0:
        seek_s = 0.0
    return ChunkWindow(seek_s=seek_s, grid_start_frame=grid_start, skip_frames=warmup)
