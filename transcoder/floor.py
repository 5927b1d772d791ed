"""The quality floor, kept chunk by chunk: score a chunk's renditions and encode a rung again where
its 5th-percentile VMAF falls under the rung's floor (`VIDFARM_VMAF_FLOOR`).

The second encode is the same command for that rung alone (same frames, same forced keyframes, so
segments and stitching line up exactly as before) with the rung's caps raised to the ceiling
(`VIDFARM_VMAF_FLOOR_CEILING` times maxrate and bufsize). CRF stays: content the first cap did not
starve comes out the same, so only chunks that needed bits get more. It happens at most once, and
the attempt with the better 5th percentile replaces the rung's MP4 in the attempt folder before
anything reads it. The chunk's result records both attempts' scores and bits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from transcoder import quality
from transcoder.ladder import OutputPlan
from vidfarm import metrics
from vidfarm.rungs import ALL_RUNGS, RUNGS

log = logging.getLogger(__name__)

Outputs = Sequence[tuple[OutputPlan, Path]]
Floors = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Scorer:
    """Scores renditions of one chunk against the reference its encode wrote."""

    binary: str
    sample: quality.ChunkSample
    fps: Fraction
    threads: int | None
    run: Callable[[list[str], str], None]

    def score(self, outputs: Outputs) -> dict[str, dict[str, Any]] | None:
        return quality.score_chunk(self.binary, self.sample, outputs, fps=self.fps, threads=self.threads,
                                   run=self.run)


def floor_for(floors: Floors, plan: OutputPlan) -> float | None:
    """A rung's own floor; the floor for every rung applies to downloads only (the stream-only rungs
    below them are scored at the source's size too, where a 360p rung is never an 80)."""
    named = dict(floors)
    if plan.name in named:
        return named[plan.name]
    return named.get(ALL_RUNGS) if plan.download else None


def may_encode_again(plans: Sequence[OutputPlan], floors: Floors, ceiling: float) -> bool:
    """Whether `score_chunk` may replace a rung's MP4 of these plans: only then must a chunk's
    segments (immutable once recorded) wait for its scores."""
    return ceiling > 1 and any(floor_for(floors, plan) is not None for plan in plans)


def scored(outputs: Outputs, floors: Floors) -> list[tuple[OutputPlan, Path]]:
    """The renditions users see a score of (downloads), and any rung with a floor of its own."""
    return [(plan, path) for plan, path in outputs if plan.download or floor_for(floors, plan) is not None]


def score_chunk(scorer: Scorer | None, outputs: Outputs, encode: Callable[[Outputs], Any], *, floors: Floors,
                ceiling: float) -> dict[str, dict[str, Any]] | None:
    """The chunk's scores by rung (None: not scored), after encoding again (`encode`, the chunk's
    own command for the outputs given) each rung under its floor. Removes the reference."""
    if scorer is None:
        return None
    try:
        chosen = scored(outputs, floors)
        scores = scorer.score(chosen)
        for plan, path in chosen if scores is not None else ():
            floor = floor_for(floors, plan)
            if floor is not None and ceiling > 1 and low(scores[plan.name]) < floor:
                scores[plan.name] = encode_again(scorer, plan, path, scores[plan.name], floor, ceiling, encode)
        return scores
    finally:
        scorer.sample.reference.path.unlink(missing_ok=True)


def encode_again(scorer: Scorer, plan: OutputPlan, path: Path, first: dict[str, Any], floor: float, ceiling: float,
                 encode: Callable[[Outputs], Any]) -> dict[str, Any]:
    """The better of the first attempt and one at the ceiling's caps, with both on record."""
    raised = replace(plan, maxrate_kbps=round(plan.maxrate_kbps * ceiling))
    retry_path = path.with_name(f"{path.stem}.retry{path.suffix}")
    first_bits = path.stat().st_size * 8
    encode([(raised, retry_path)])
    retry = (scorer.score([(raised, retry_path)]) or {}).get(plan.name)
    retry_bits = retry_path.stat().st_size * 8
    better = retry is not None and low(retry) > low(first)
    if better:
        os.replace(retry_path, path)  # before anything reads the rung's MP4
    else:
        retry_path.unlink(missing_ok=True)
    metrics.FLOOR_REENCODES.labels(metrics.rung_label(plan.name, RUNGS), "retry" if better else "first").inc()
    log.info("%s under its floor %g (p5 %.1f): encoded again at %d kb/s, p5 %s; %s kept", plan.name, floor,
             low(first), raised.maxrate_kbps, f"{low(retry):.1f}" if retry else "not scored",
             "the second" if better else "the first")
    record = {"floor": floor, "kept": "retry" if better else "first",
              "first": summary(first, first_bits, plan.maxrate_kbps),
              "retry": summary(retry, retry_bits, raised.maxrate_kbps)}
    return (retry if better else first) | {"floor": record}


def low(score: dict[str, Any]) -> float:
    return quality.percentile(score["vmaf"], quality.LOW_PERCENTILE)


def summary(score: dict[str, Any] | None, bits: int, cap_kbps: int) -> dict[str, Any]:
    combined = quality.combine([score]) or {}
    return {"vmaf_mean": combined.get("vmaf_mean"), "vmaf_p5": combined.get("vmaf_p5"), "bits": bits,
            "cap_kbps": cap_kbps}
