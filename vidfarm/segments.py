"""Which CMAF segments of a video exist, read from its tasks: pure functions, no I/O.

Segments are 6 s (3 GOPs of 2 s) on the whole video's frame grid: segment n of a video rung holds
output frames [n*S, (n+1)*S), S = SEGMENT_GOPS * gop frames. Chunks start on multiples of S, so a
chunk's segments are a contiguous run from `start_frame // S`; a chunk records them (durations and
sizes) in its one task_done write, or, when it is scored and no VMAF floor may encode it again, just
before its scoring (then they count while it runs). The audio task records its segments while it runs. The files
stay in the attempt folder that made them: `<rung>/init.mp4`, `<rung>/seg_NNNNN.m4s`,
`audio/init.mp4`, `audio/seg_NNNNN.m4s`.

A track's state is the contiguous run of segments from 0 (a gap hides everything after it: players
read a playlist from the start). A video is playable once every rung and the audio have segment 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vidfarm.catalog import Task
from vidfarm.chunks import GOPS_PER_SEGMENT
from vidfarm.states import TaskKind, TaskStatus

SEGMENT_GOPS = GOPS_PER_SEGMENT  # 3 GOPs of 2 s: 6 s segments, Apple's recommended length
AUDIO = "audio"
INIT_SEGMENT = "init.mp4"
AAC_LC_CODECS = "mp4a.40.2"
AUDIO_SAMPLE_RATE = 48000
AUDIO_BPS = 128_000
# The audio track's descriptor (what chunk results' "tracks" say for a video rung).
AUDIO_INFO: dict[str, Any] = {"codecs": AAC_LC_CODECS, "sample_rate": AUDIO_SAMPLE_RATE, "cap_bps": AUDIO_BPS}
_SEGMENT_NAME = re.compile(r"seg_(\d{5,})\.m4s")


def segment_name(index: int) -> str:
    return f"seg_{index:05d}.m4s"


@dataclass(frozen=True)
class Segment:
    index: int
    duration_s: float
    size_bytes: int
    attempt: str  # the job id whose folder holds the file


@dataclass(frozen=True)
class TrackState:
    name: str  # the rung, or "audio"
    segments: tuple[Segment, ...]  # the contiguous run from segment 0
    init_attempt: str | None  # whose init.mp4 is served (chunk 0's for a rung)
    complete: bool  # every segment of the track exists (all chunks done / the audio complete)
    info: dict[str, Any]  # codecs, width, height, fps, cap_bps (a rung); codecs, sample_rate, cap_bps


def current_result(task: Task) -> dict[str, Any] | None:
    """The result written by the task's current attempt: a retried task's old result (another job
    id, its files maybe gone) counts for nothing. The audio counts while it runs; a chunk once done,
    or while it runs once it recorded its segments (before its quality scoring)."""
    result = task.result
    if not result or result.get("attempt") != task.job_id:
        return None
    if task.kind == TaskKind.CHUNK and task.status != TaskStatus.DONE and "segments" not in result:
        return None
    return result


def stream_state(tasks: Sequence[Task]) -> dict[str, TrackState]:
    """Every video rung (once a chunk has said which there are) and "audio" (when the video has an
    audio task), each with its contiguous run of segments."""
    chunks = sorted((t for t in tasks if t.kind == TaskKind.CHUNK), key=lambda t: t.start_frame)
    state = {name: _rung_state(name, chunks) for name in _rung_names(chunks)}
    audio = next((t for t in tasks if t.kind == TaskKind.AUDIO), None)
    if audio is not None:
        state[AUDIO] = _audio_state(audio)
    return state


def _rung_names(chunks: Sequence[Task]) -> list[str]:
    """The rungs of the first chunk that recorded its segments (the first chunk's, once it has: the
    one served)."""
    for task in chunks:
        if (result := current_result(task)) is not None and "tracks" in result:
            return list(result["tracks"])
    return []


def _rung_state(name: str, chunks: Sequence[Task]) -> TrackState:
    segments: list[Segment] = []
    info: dict[str, Any] = {}
    whole = True
    for task in chunks:
        result = current_result(task)
        recorded = (result or {}).get("segments", {}).get(name)
        if result is None or recorded is None or result.get("first_segment") != len(segments):
            whole = False
            break
        info = info or result["tracks"][name]
        segments += [Segment(result["first_segment"] + i, d, size, result["attempt"])
                     for i, (d, size) in enumerate(recorded)]
        whole = whole and task.status == TaskStatus.DONE  # a running chunk may still fail
    first = current_result(chunks[0]) if chunks else None
    init = first["attempt"] if first is not None and segments else None
    return TrackState(name, tuple(segments), init, whole and bool(chunks), info)


def _audio_state(task: Task) -> TrackState:
    result = current_result(task) or {}
    attempt = result.get("attempt")
    segments = tuple(Segment(i, d, size, attempt) for i, (d, size) in enumerate(result.get("segments", ())))
    complete = bool(result.get("complete")) and task.status == TaskStatus.DONE
    return TrackState(AUDIO, segments, attempt if segments else None, complete, dict(AUDIO_INFO))


def is_playable(state: dict[str, TrackState]) -> bool:
    """The first segment of every rung and of the audio exists (and there is at least one rung)."""
    rungs = [t for name, t in state.items() if name != AUDIO]
    return bool(rungs) and all(t.segments for t in state.values())


def locate(state: dict[str, TrackState], relative_path: str) -> tuple[str, str] | None:
    """(attempt, name in its folder) of "<track>/init.mp4" or "<track>/seg_NNNNN.m4s"; None for a
    file that does not exist (yet), or any other path."""
    track_name, _, file_name = relative_path.partition("/")
    track = state.get(track_name)
    if track is None:
        return None
    if file_name == INIT_SEGMENT:
        return (track.init_attempt, relative_path) if track.init_attempt else None
    match = _SEGMENT_NAME.fullmatch(file_name)
    if match is None or segment_name(int(match[1])) != file_name:
        return None
    index = int(match[1])
    if index >= len(track.segments):
        return None
    return track.segments[index].attempt, relative_path
