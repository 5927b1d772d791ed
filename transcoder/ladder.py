"""Encoding profiles as data, apart from command building (as PeerTube keeps them).

A rung is named by the short side of the displayed picture, so a portrait phone video gets the same
rungs as a landscape one. Bitrate caps follow Apple's HLS authoring ladder and PeerTube's targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from vidfarm.chunks import gop_frames, output_fps
from vidfarm.probe import SourceInfo


@dataclass(frozen=True)
class Rung:
    name: str
    short_side: int
    maxrate_kbps: int   # cap at 30 fps; higher frame rates get HIGH_FPS_BOOST more


RUNGS: dict[str, Rung] = {
    r.name: r
    for r in (
        Rung("2160p", 2160, 16000),
        Rung("1440p", 1440, 9000),
        Rung("1080p", 1080, 6000),
        Rung("720p", 720, 3000),
        Rung("480p", 480, 1500),
        Rung("360p", 360, 800),
    )
}

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


def plan_outputs(source: SourceInfo, rungs: Sequence[Rung]) -> list[OutputPlan]:
    """Rungs above the source are skipped (never upscale); a source below every rung gets one
    rendition at its own size."""
    fps = output_fps(source.fps)
    boost = HIGH_FPS_BOOST if fps > 30 else 1.0
    short = min(source.width, source.height)
    plans = [
        OutputPlan(r.name, *scaled_size(source.width, source.height, r.short_side), fps,
                   round(r.maxrate_kbps * boost))
        for r in sorted(rungs, key=lambda r: -r.short_side)
        if r.short_side <= short
    ]
    if plans:
        return plans
    width, height = _fit_level(_even_floor(source.width), _even_floor(source.height))
    # Scale the 720p cap by picture area so small sources get a proportionate budget.
    maxrate = max(MIN_MAXRATE_KBPS, round(RUNGS["720p"].maxrate_kbps * boost * width * height / (1280 * 720)))
    return [OutputPlan(f"{min(width, height)}p", width, height, fps, maxrate)]


def poster_size(source: SourceInfo) -> tuple[int, int]:
    short = min(source.width, source.height)
    return scaled_size(source.width, source.height, min(POSTER_SHORT_SIDE, _even_floor(short)))
