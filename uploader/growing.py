"""The HLS playlists of a video still encoded, written from the catalog's record of its segments.

While a video is `processing` its segments live in the folders of the attempts that made them
(vidfarm/segments.py says which segment is whose); nothing in storage is a playlist yet. The API
writes the master and media playlists per request from that record, with vidfarm/package.py's
functions, so they have exactly the VOD format of today apart from what growing changes (EVENT
type, a start at 0, no end, bandwidths from the rungs' caps). Pure: no I/O here.
"""

from __future__ import annotations

from fractions import Fraction

from vidfarm import package
from vidfarm.segments import AUDIO, TrackState, segment_name

# A growing playlist is reloaded by players about every target duration; caches may keep it for at
# most half a segment, so a new segment is seen within 3 s of being listed.
GROWING_MAX_AGE_S = package.SEGMENT_S // 2


def track(state: TrackState) -> package.Track:
    """The track as package's playlist writers take it, its segments named as in the folders."""
    segments = tuple(package.Segment(segment_name(s.index), s.duration_s, s.size_bytes) for s in state.segments)
    info = state.info
    if state.name == AUDIO:
        return package.Track(AUDIO, segments, codecs=info["codecs"], sample_rate=info["sample_rate"],
                             cap_bps=info["cap_bps"])
    return package.Track(state.name, segments, codecs=info["codecs"], width=info["width"], height=info["height"],
                         fps=Fraction(info["fps"]), cap_bps=info["cap_bps"])


def master_playlist(state: dict[str, TrackState]) -> str:
    audio = track(state[AUDIO]) if AUDIO in state else None
    return package.master_playlist([track(t) for name, t in state.items() if name != AUDIO], audio)


def playlist(state: dict[str, TrackState], path: str) -> str | None:
    """`master.m3u8` or `<track>/index.m3u8` of the growing stream; None for any other path (or a
    track without a segment yet, which a playable video does not have)."""
    if path == package.MASTER_PLAYLIST:
        return master_playlist(state)
    name, _, file_name = path.partition("/")
    found = state.get(name)
    if file_name != package.MEDIA_PLAYLIST or found is None or not found.segments:
        return None
    return package.media_playlist(track(found), growing=True)
