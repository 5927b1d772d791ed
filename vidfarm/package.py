"""HLS and DASH manifests over one set of CMAF segments (fragmented MP4).

ffmpeg cuts the segments (stream copy, at keyframes); everything a player reads about them is
written here from the segments themselves: durations from ffmpeg's cut list, bit rates from the real
segment sizes, codec strings from the real SPS. Pure functions of that data, apart from reading files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from xml.sax.saxutils import quoteattr

from vidfarm import segments
from vidfarm.chunks import GOP_SECONDS

# The names and layout every track folder shares: vidfarm/segments.py, the contract.
AUDIO_FOLDER = segments.AUDIO
AAC_LC_CODECS = segments.AAC_LC_CODECS
INIT_SEGMENT = segments.INIT_SEGMENT
SEGMENTS_PER_CHUNK_GOPS = segments.SEGMENT_GOPS
AUDIO_GROUP = "aac"
MEDIA_PLAYLIST = "index.m3u8"
MASTER_PLAYLIST = "master.m3u8"
DASH_MANIFEST = "manifest.mpd"
SEGMENT_S = SEGMENTS_PER_CHUNK_GOPS * GOP_SECONDS
VIDEO_TIMESCALE = 90000
# Where playback starts (the first variant listed): about what a phone on a slow mobile network gets.
START_BANDWIDTH_BPS = 1_000_000


@dataclass(frozen=True)
class Segment:
    name: str
    duration_s: float
    size_bytes: int


@dataclass(frozen=True)
class Track:
    """One folder of segments: a video rung or the audio."""

    folder: str
    segments: tuple[Segment, ...]
    codecs: str
    width: int = 0
    height: int = 0
    fps: Fraction | None = None
    sample_rate: int = 0
    # While the video is still encoded, the rung's cap: a figure a player may rely on before every
    # segment exists to be measured. None once the track is complete.
    cap_bps: int | None = None

    @property
    def is_video(self) -> bool:
        return self.fps is not None

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    @property
    def peak_bps(self) -> int:
        return max(math.ceil(s.size_bytes * 8 / max(s.duration_s, 1e-3)) for s in self.segments)

    @property
    def average_bps(self) -> int:
        return math.ceil(sum(s.size_bytes for s in self.segments) * 8 / max(self.duration_s, 1e-3))

    @property
    def bandwidth_bps(self) -> int:
        """What a master playlist declares: the cap while growing, the measured peak once complete."""
        return self.cap_bps if self.cap_bps is not None else self.peak_bps


# -- reading what ffmpeg wrote ---------------------------------------------------------------------


def read_cut_list(playlist: Path) -> list[tuple[str, float]]:
    """(segment file, seconds) in order, from the playlist ffmpeg's segmenter wrote."""
    cuts, duration = [], None
    for line in playlist.read_text().splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            cuts.append((line.strip(), duration))
            duration = None
    return cuts


# A closing fragment shorter than this is joined to the segment before it. A track a whole number of
# segments long ends in a lone AAC frame (the encoder's priming puts the sound one frame past the
# picture); hls.js never counts so short a last segment as buffered, and never fires `ended`.
SHORT_TAIL_S = 0.5


def settled_cuts(closed: list[tuple[str, float]], *, ended: bool) -> tuple[list[tuple[str, float]], str | None]:
    """Of the segments ffmpeg closed so far (its cut list), those that can be published now, for good,
    and the name of a short closing fragment to append to the last of them (SHORT_TAIL_S).

    Only the last segment of a track can be short, and it joins the one before, so while ffmpeg runs
    the newest segment is held back (the next may be that tail), and so is the one before a short
    newest. Once ffmpeg has ended, the tail joins its predecessor, which is listed with both durations."""
    if not ended:
        held = 2 if closed and closed[-1][1] < SHORT_TAIL_S else 1
        return closed[:max(len(closed) - held, 0)], None
    if len(closed) >= 2 and closed[-1][1] < SHORT_TAIL_S:
        (name, seconds), (tail, extra) = closed[-2], closed[-1]
        return [*closed[:-2], (name, round(seconds + extra, 6))], tail
    return closed, None


def avc_codecs(init_segment: bytes) -> str:
    """RFC 6381 codec string from the avcC box: profile, constraint flags and level as coded."""
    at = init_segment.find(b"avcC")
    if at < 0 or len(init_segment) < at + 8:
        raise ValueError("no avcC box in the init segment")
    profile, constraints, level = init_segment[at + 5:at + 8]
    return f"avc1.{profile:02x}{constraints:02x}{level:02x}"


# -- HLS --------------------------------------------------------------------------------------------


def media_playlist(track: Track, *, growing: bool = False) -> str:
    """The VOD playlist of a finished track; `growing`: the segments that exist so far of a video still
    encoded, as an EVENT playlist (players keep reloading it and never drop a segment) that starts
    at 0, not at the live edge, and has no end yet."""
    # Every EXTINF must fit in the target duration (rounded up, stricter than the spec's rounding).
    target = math.ceil(max(s.duration_s for s in track.segments) - 1e-6)
    kind = ["#EXT-X-PLAYLIST-TYPE:VOD"]
    if growing:
        # A playlist's target duration must not change as it grows: the segments to come are full ones.
        target = max(target, SEGMENT_S)
        kind = ["#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-START:TIME-OFFSET=0,PRECISE=YES"]
    lines = [
        "#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0",
        *kind, "#EXT-X-INDEPENDENT-SEGMENTS", f'#EXT-X-MAP:URI="{INIT_SEGMENT}"',
    ]
    for segment in track.segments:
        lines += [f"#EXTINF:{segment.duration_s:.6f},", segment.name]
    if not growing:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def start_order(videos: Sequence[Track], audio: Track | None) -> list[Track]:
    """The variant players start with first (they take the first one listed: hls.js, Safari), then
    the others highest first. The start is the best variant whose peak fits START_BANDWIDTH_BPS, so a
    phone on a slow network plays within a segment instead of waiting for a 1080p one; a fast network
    climbs after the first segment."""
    ordered = sorted(videos, key=lambda t: -t.height * t.width)
    sound = audio.bandwidth_bps if audio else 0
    start = next((t for t in ordered if t.bandwidth_bps + sound <= START_BANDWIDTH_BPS), ordered[-1])
    return [start, *(t for t in ordered if t is not start)]


def master_playlist(videos: Sequence[Track], audio: Track | None) -> str:
    """Variants in start_order; BANDWIDTH is the peak segment bit rate of picture plus sound,
    AVERAGE-BANDWIDTH the mean over the whole video, both measured on the segments. Of tracks still
    growing (`cap_bps` set), BANDWIDTH is the caps' sum and there is no average yet."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
            f'CHANNELS="2",URI="{audio.folder}/{MEDIA_PLAYLIST}"'
        )
    for video in start_order(videos, audio):
        peak = video.bandwidth_bps + (audio.bandwidth_bps if audio else 0)
        codecs = f"{video.codecs},{audio.codecs}" if audio else video.codecs
        attributes = f"BANDWIDTH={peak},"
        if video.cap_bps is None:
            attributes += f"AVERAGE-BANDWIDTH={video.average_bps + (audio.average_bps if audio else 0)},"
        attributes += (f'CODECS="{codecs}",RESOLUTION={video.width}x{video.height},'
                       f"FRAME-RATE={float(video.fps):.3f}")
        if audio is not None:
            attributes += f',AUDIO="{AUDIO_GROUP}"'
        lines += [f"#EXT-X-STREAM-INF:{attributes}", f"{video.folder}/{MEDIA_PLAYLIST}"]
    return "\n".join(lines) + "\n"


# -- DASH -------------------------------------------------------------------------------------------


def _iso_duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def _timeline(track: Track, timescale: int) -> str:
    """SegmentTimeline with runs of equal durations folded into `r` (repeat) counts."""
    entries: list[list[int]] = []  # [duration, repeats]
    for segment in track.segments:
        ticks = round(segment.duration_s * timescale)
        if entries and entries[-1][0] == ticks:
            entries[-1][1] += 1
        else:
            entries.append([ticks, 0])
    parts = []
    for index, (ticks, repeats) in enumerate(entries):
        start = ' t="0"' if index == 0 else ""
        again = f' r="{repeats}"' if repeats else ""
        parts.append(f'<S{start} d="{ticks}"{again}/>')
    return "".join(parts)


def _representation(track: Track) -> str:
    timescale = VIDEO_TIMESCALE if track.is_video else track.sample_rate
    template = (
        f'<SegmentTemplate timescale="{timescale}" startNumber="0" '
        f'initialization={quoteattr(f"{track.folder}/{INIT_SEGMENT}")} '
        f'media={quoteattr(f"{track.folder}/seg_$Number%05d$.m4s")}>'
        f"<SegmentTimeline>{_timeline(track, timescale)}</SegmentTimeline></SegmentTemplate>"
    )
    if track.is_video:
        fps = track.fps
        return (
            f'<Representation id="{track.folder}" mimeType="video/mp4" codecs="{track.codecs}" '
            f'bandwidth="{track.peak_bps}" width="{track.width}" height="{track.height}" '
            f'frameRate="{fps.numerator}/{fps.denominator}" sar="1:1">{template}</Representation>'
        )
    return (
        f'<Representation id="{track.folder}" mimeType="audio/mp4" codecs="{track.codecs}" '
        f'bandwidth="{track.peak_bps}" audioSamplingRate="{track.sample_rate}">'
        '<AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" '
        f'value="2"/>{template}</Representation>'
    )


def dash_manifest(videos: Sequence[Track], audio: Track | None) -> str:
    duration = max(t.duration_s for t in [*videos, *([audio] if audio else [])])
    ordered = sorted(videos, key=lambda t: -t.height * t.width)
    sets = [
        '<AdaptationSet id="0" contentType="video" segmentAlignment="true" startWithSAP="1">'
        + "".join(_representation(v) for v in ordered) + "</AdaptationSet>"
    ]
    if audio is not None:
        sets.append(
            '<AdaptationSet id="1" contentType="audio" lang="und" segmentAlignment="true" startWithSAP="1">'
            + _representation(audio) + "</AdaptationSet>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" '
        f'type="static" mediaPresentationDuration="{_iso_duration(duration)}" minBufferTime="PT2S">'
        f'<Period id="0" start="PT0S">{"".join(sets)}</Period></MPD>\n'
    )
