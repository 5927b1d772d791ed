"""The rungs a video can be encoded to, as data, and the two lists operators pick from them.

Shared by the settings (which validate `VIDFARM_LADDER` and `VIDFARM_STREAM_RUNGS` when a process
starts, so a typo stops the API and the workers at once instead of failing every video) and the
transcoder (which plans the outputs from them). A rung is named by the short side of the displayed
picture, so a portrait phone video gets the same rungs as a landscape one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    name: str
    short_side: int
    maxrate_kbps: int   # cap at 30 fps; higher frame rates get a boost (transcoder.ladder)


# Caps from Apple's HLS authoring ladder for H.264 at 30 fps (the lower of its two bit rates where it
# lists two per size); 480p sits between its 432p (1.1 Mb/s) and 540p (2 Mb/s) rungs. docs/design.md
# has the table with the reasons.
RUNGS: dict[str, Rung] = {
    r.name: r
    for r in (
        Rung("2160p", 2160, 16000),
        Rung("1440p", 1440, 9000),
        Rung("1080p", 1080, 6000),
        Rung("720p", 720, 3000),
        Rung("480p", 480, 1500),
        Rung("360p", 360, 730),
        Rung("240p", 240, 145),
    )
}

# What the product promises as MP4 downloads, and what the stream carries on top of them.
DEFAULT_LADDER = ("1080p", "720p")
DEFAULT_STREAM_RUNGS = ("480p", "360p")
# VIDFARM_STREAM_RUNGS=none: the stream carries the download rungs only (as before stream rungs).
NO_RUNGS = "none"


def parse_rungs(variable: str, raw: str, *, allow_none: bool) -> tuple[str, ...]:
    """A comma-separated list of rung names, validated: ValueError saying what is wrong and what is
    allowed. `none` is the empty list where `allow_none`."""
    if allow_none and raw.strip().lower() == NO_RUNGS:
        return ()
    names = [part.strip() for part in raw.split(",") if part.strip()]
    known = ", ".join(RUNGS)
    if not names:
        hint = f" (or {NO_RUNGS})" if allow_none else ""
        raise ValueError(f"{variable} must list rungs from {known}{hint}, got {raw!r}")
    unknown = [name for name in names if name not in RUNGS]
    if unknown:
        raise ValueError(f"{variable}: unknown rung {', '.join(map(repr, unknown))}; known rungs: {known}")
    repeated = sorted({name for name in names if names.count(name) > 1}, key=names.index)
    if repeated:
        raise ValueError(f"{variable} names {', '.join(repeated)} more than once, got {raw!r}")
    return tuple(names)


def stream_only(ladder: tuple[str, ...] | list[str], stream_rungs: tuple[str, ...]) -> tuple[str, ...]:
    """The stream rungs that are not also downloads: a rung in both lists is a download."""
    return tuple(name for name in stream_rungs if name not in ladder)


ALL_RUNGS = "*"


def parse_floors(variable: str, raw: str) -> tuple[tuple[str, float], ...]:
    """`VIDFARM_VMAF_FLOOR`: one number (every scored rung) or `rung=number` pairs, e.g.
    "1080p=80,720p=78"; ValueError saying what is wrong. The number is a VMAF score (0-100)."""
    pairs = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        name, _, value = part.rpartition("=")
        name = name.strip() or ALL_RUNGS
        if name != ALL_RUNGS and name not in RUNGS:
            raise ValueError(f"{variable}: unknown rung {name!r}; known rungs: {', '.join(RUNGS)}")
        try:
            score = float(value)
        except ValueError as exc:
            raise ValueError(f"{variable} must be a VMAF score or rung=score pairs, got {raw!r}") from exc
        if not 0 <= score <= 100:
            raise ValueError(f"{variable}: a VMAF floor is between 0 and 100, got {score:g}")
        pairs.append((name, score))
    return tuple(pairs)


def show_floors(floors: tuple[tuple[str, float], ...]) -> str:
    return ",".join(f"{score:g}" if name == ALL_RUNGS else f"{name}={score:g}" for name, score in floors)


def floor_of(floors: tuple[tuple[str, float], ...], rung: str) -> float | None:
    """The floor of `rung`: its own, else the one for every rung, else none."""
    named = dict(floors)
    return named.get(rung, named.get(ALL_RUNGS))
