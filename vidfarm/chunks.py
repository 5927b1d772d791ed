"""The chunk plan of a video: which output frames each chunk job encodes. Pure arithmetic.

Chunks are cut on the output frame grid (the constant frame rate every rendition gets), never on
seconds of the source, and each is a whole number of GOPs. Every chunk therefore starts with a
keyframe exactly where a single-pass encode would have put one, so the renditions keep keyframes at
the same frames and the HLS/DASH segments line up across rungs and across chunk joins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

GOP_SECONDS = 2
DEFAULT_CHUNK_SECONDS = 60.0
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


def chunk_frames(fps: Fraction, chunk_seconds: float) -> int:
    """`chunk_seconds` rounded to whole GOPs (at least one)."""
    gop = gop_frames(fps)
    return gop * max(1, round(chunk_seconds * float(fps) / gop))


def plan_chunks(duration_s: float, fps: Fraction, chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> list[ChunkSpan]:
    """Full chunks, the last one open-ended so it absorbs the remainder and any error in the declared
    duration. A video shorter than two chunks is one chunk: splitting it would only add overhead."""
    per_chunk = chunk_frames(fps, chunk_seconds)
    count = max(1, expected_frames(duration_s, fps) // per_chunk)
    spans = [ChunkSpan(i, i * per_chunk, per_chunk) for i in range(count - 1)]
    spans.append(ChunkSpan(count - 1, (count - 1) * per_chunk, None))
    return spans


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
