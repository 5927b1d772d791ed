"""Encoding profiles as data, apart from command building (as PeerTube keeps them).

The rungs themselves (names, short sides, bit-rate caps) are in vidfarm.rungs; here they become the
outputs of one video: sizes, frame rate, caps, and which outputs are MP4 downloads and which are
only streamed (HLS/DASH rungs below the downloads, for slow networks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from vidfarm.chunks import gop_frames, output_fps
from vidfarm.probe import SourceInfo
from vidfarm.rungs import RUNGS, Rung

__all__ = ["RUNGS", "OutputPlan", "Rung", "plan_outputs", "poster_size", "rungs_named"]

HIGH_FPS_BOOST = 1.5
POSTER_SHORT_SIDE = 720
# H.264 level 4.2 allows at most 8704 macroblocks per frame (about 1080p at any aspect ratio).
LEVEL_42_MAX_FRAME_MBS = 8704
MIN_MAXRATE_KBPS = 300


@dataclass(frozen=True)
class OutputPlan:
    name: str
    width: int
    height: int
    fps: Fraction
    maxrate_kbps: int
    # False: a stream-only rung, in the HLS/DASH package but not published as an MP4 download.
    download: bool = True

    @property
    def bufsize_kbps(self) -> int:
        return 2 * self.maxrate_kbps

    @property
    def gop_frames(self) -> int:
        return gop_frames(self.fps)


def rungs_named(names: Sequence[str]) -> list[Rung]:
    """Raises KeyError naming the first unknown rung."""
    return [RUNGS[name] for name in names]


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _even_floor(value: int) -> int:
    return max(2, value - value % 2)


def _fit_level(width: int, height: int) -> tuple[int, int]:
    """Shrink (keeping the aspect ratio) until the frame fits H.264 level 4.2."""
    scale = 1.0
    while math.ceil(width * scale / 16) * math.ceil(height * scale / 16) > LEVEL_42_MAX_FRAME_MBS:
        scale *= 0.98
    return (_even(width * scale), _even(height * scale)) if scale < 1.0 else (width, height)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    short = min(width, height)
    factor = short_side / short
    size = (_even(width * factor), _even(height * factor))
    return _fit_level(*size)


def plan_outputs(source: SourceInfo, rungs: Sequence[Rung], stream_rungs: Sequence[Rung] = ()) -> list[OutputPlan]:
    """The downloads (`rungs`) and, below the best of them, the stream-only rungs, highest first.

    Rungs above the source are skipped (never upscale). A source below every download rung gets one
    download at its own size, and the stream-only rungs below that. A stream-only rung never sits
    above the best download: the stream's top rung is always a file users can also download."""
    fps = output_fps(source.fps)
    boost = HIGH_FPS_BOOST if fps > 30 else 1.0
    short = min(source.width, source.height)
    downloads = [_plan(source, r, fps, boost) for r in _highest_first(rungs) if r.short_side <= short]
    if not downloads:
        downloads = [_own_size(source, fps, boost)]
    top = min(downloads[0].width, downloads[0].height)
    names = {plan.name for plan in downloads}
    streamed = [
        replace(_plan(source, r, fps, boost), download=False)
        for r in _highest_first(stream_rungs) if r.short_side < top and r.name not in names
    ]
    return sorted(downloads + streamed, key=lambda p: -p.width * p.height)


def _highest_first(rungs: Sequence[Rung]) -> list[Rung]:
    return sorted(rungs, key=lambda r: -r.short_side)


def _plan(source: SourceInfo, rung: Rung, fps: Fraction, boost: float) -> OutputPlan:
    width, height = scaled_size(source.width, source.height, rung.short_side)
    return OutputPlan(rung.name, width, height, fps, round(rung.maxrate_kbps * boost))


def _own_size(source: SourceInfo, fps: Fraction, boost: float) -> OutputPlan:
    width, height = _fit_level(_even_floor(source.width), _even_floor(source.height))
    # Scale the 720p cap by picture area so small sources get a proportionate budget.
    maxrate = max(MIN_MAXRATE_KBPS, round(RUNGS["720p"].maxrate_kbps * boost * width * height / (1280 * 720)))
    return OutputPlan(f"{min(width, height)}p", width, height, fps, maxrate)


def poster_size(source: SourceInfo) -> tuple[int, int]:
    short = min(source.width, source.height)
    return scaled_size(source.width, source.height, min(POSTER_SHORT_SIDE, _even_floor(short)))
