"""Inspect an uploaded file with ffprobe and decide whether the farm can transcode it.

Shared by the uploader (reject bad input before anything is queued) and the transcoder (plan the
ladder from display dimensions). This runs the ffprobe binary directly; it imports no ffmpeg code.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from vidfarm.storage import SourceHandle

PROBE_TIMEOUT_S = 60
MAX_FPS = 240.0
# Demuxers that only read still pictures, or that open other files named inside the upload
# (playlists, concat lists): an upload must be a media file, never a pointer to other files.
REJECTED_FORMATS = {"image2", "hls", "concat", "ffconcat", "tee", "lavfi", "dash", "imf", "tty", "subviewer"}
MP4_FORMATS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2"}
INTERLACED_FIELD_ORDERS = {"tt", "bb", "tb", "bt"}
# HDR transfer functions (phones record HLG or PQ by default now); H.264 8-bit renditions are SDR.
HDR_TRANSFERS = {"smpte2084", "arib-std-b67"}
STILL_IMAGE_CODECS = {"png", "mjpeg", "bmp", "tiff", "webp", "gif", "jpegls", "jpeg2000", "pam", "ppm", "qoi"}


class ProbeError(Exception):
    """The file is not something we accept; `code` is stable, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SourceInfo:
    duration_s: float
    width: int            # displayed width: rotation and sample aspect ratio applied
    height: int
    fps: float
    video_codec: str
    audio_codec: str | None
    pix_fmt: str
    rotation: int         # degrees clockwise the player rotates the coded picture
    interlaced: bool = False  # fields, not frames (broadcast, camcorders): deinterlaced on transcode
    hdr_transfer: str | None = None  # "smpte2084" (PQ) or "arib-std-b67" (HLG): tone-mapped to SDR
    # Timestamps of the first video frame and of the file's start (MPEG-TS starts near 1.4 s, say):
    # chunk jobs seek by them and keep the frame grid of the whole video.
    start_s: float = 0.0
    file_start_s: float = 0.0

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


@functools.cache
def safe_demuxers() -> str:
    """Every demuxer but the rejected ones. Over HTTP (an object store's presigned URL) a playlist
    demuxer would fetch any URL the upload names, from inside our network: it must never open."""
    listed = subprocess.run(["ffprobe", "-hide_banner", "-demuxers"], capture_output=True, text=True, check=True)
    names = {n for line in listed.stdout.splitlines() if line[:3].strip().startswith("D") and len(line.split()) > 1
             for n in line.split()[1].split(",")}
    return ",".join(sorted(names - REJECTED_FORMATS))


def run_ffprobe(path: Path | str) -> dict[str, Any]:
    remote = ["-format_whitelist", safe_demuxers()] if str(path).startswith(("http://", "https://")) else []
    cmd = [
        "ffprobe", "-v", "error", "-print_format", "json", *remote,
        "-show_format", "-show_streams", str(path),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProbeError("unreadable", "ffprobe took too long to read the file") from exc
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        detail = reason[-1] if reason else "unknown error"
        raise ProbeError("unreadable", f"not a readable media file: {_without_path(detail, path)}")
    return json.loads(done.stdout or b"{}")


def _without_path(message: str, path: Path | str) -> str:
    # ffprobe prefixes errors with the file path; storage paths are ours, not the client's business.
    return message.replace(f"{path}: ", "").replace(str(path), "input")


def _rate(value: str | None) -> float:
    try:
        rate = float(Fraction(value)) if value and value != "0/0" else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0
    return rate if 0 < rate <= MAX_FPS else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(round(-float(side["rotation"]))) % 360
    tag = stream.get("tags", {}).get("rotate")
    return int(tag) % 360 if tag and tag.lstrip("-").isdigit() else 0


def _display_size(stream: dict[str, Any], rotation: int) -> tuple[int, int]:
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    sar = stream.get("sample_aspect_ratio") or "1:1"
    try:
        num, den = (int(x) for x in sar.split(":"))
        if num > 0 and den > 0:
            width = round(width * num / den)
    except ValueError:
        pass
    return (height, width) if rotation in (90, 270) else (width, height)


def _duration(info: dict[str, Any], stream: dict[str, Any]) -> float:
    for raw in (info.get("format", {}).get("duration"), stream.get("duration")):
        try:
            if raw is not None and float(raw) > 0:
                return float(raw)
        except ValueError:
            continue
    return 0.0


def _seconds(raw: Any) -> float:
    try:
        return float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0


def describe(info: dict[str, Any]) -> SourceInfo:
    """Turn ffprobe's JSON into SourceInfo, or explain why the file is not a video we take."""
    streams = info.get("streams", [])
    fmt = info.get("format", {}).get("format_name", "")
    if set(fmt.split(",")) & REJECTED_FORMATS or fmt.endswith("_pipe"):
        raise ProbeError("not_a_video", f"'{fmt}' is an image or playlist format, not a video file")
    videos = [
        s for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if not videos:
        kind = "audio only" if audios else "no streams"
        raise ProbeError("no_video_stream", f"the file has no video stream ({kind})")
    video = videos[0]
    duration = _duration(info, video)
    if video.get("codec_name") in STILL_IMAGE_CODECS and duration < 0.5:
        raise ProbeError("still_image", "the file is a still image, not a video")
    if duration <= 0:
        raise ProbeError("unknown_duration", "the video's duration cannot be determined")
    rotation = _rotation(video)
    width, height = _display_size(video, rotation)
    if width < 2 or height < 2:
        raise ProbeError("unreadable", "the video stream has no usable picture size")
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) or 25.0
    return SourceInfo(
        duration_s=duration,
        width=width,
        height=height,
        fps=fps,
        video_codec=video.get("codec_name", "unknown"),
        audio_codec=audios[0].get("codec_name", "unknown") if audios else None,
        pix_fmt=video.get("pix_fmt", "unknown"),
        rotation=rotation,
        interlaced=video.get("field_order") in INTERLACED_FIELD_ORDERS,
        hdr_transfer=video.get("color_transfer") if video.get("color_transfer") in HDR_TRANSFERS else None,
        start_s=_seconds(video.get("start_time")),
        file_start_s=_seconds(info.get("format", {}).get("start_time")),
    )


def check_limits(source: SourceInfo, *, max_duration_s: float, max_pixels: int) -> None:
    if source.duration_s > max_duration_s:
        raise ProbeError(
            "too_long", f"the video lasts {source.duration_s:.0f} s; the limit is {max_duration_s:.0f} s"
        )
    if source.width * source.height > max_pixels:
        raise ProbeError(
            "too_many_pixels",
            f"the picture is {source.width}x{source.height}; the limit is {max_pixels} pixels",
        )


def truncated_mp4(source: SourceHandle) -> bool:
    """Whether a top-level MP4/MOV box runs past the end of the file. ffprobe reads only the index
    (moov), so a faststart file cut short probes as complete and would transcode to a video that
    silently stops early; its box sizes still tell that the data is not all there."""
    size = source.size
    offset = 0
    with source.open() as handle:
        while offset + 8 <= size:
            handle.seek(offset)
            header = handle.read(16)
            box_size = int.from_bytes(header[:4], "big")
            if box_size == 1 and len(header) == 16:      # 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            if box_size == 0:                            # "extends to the end of the file"
                return False
            if box_size < 8:                             # not a box layout: let ffmpeg judge it
                return False
            offset += box_size
    return offset > size


def probe(stored: Path | SourceHandle, *, max_duration_s: float, max_pixels: int) -> SourceInfo:
    """A local file, or a stored one (an object store's presigned URL: ffprobe reads only what it needs)."""
    stored = SourceHandle.local(stored) if isinstance(stored, Path) else stored
    if stored.size == 0:
        raise ProbeError("empty_file", "the uploaded file is empty")
    info = run_ffprobe(stored.location)
    source = describe(info)
    check_limits(source, max_duration_s=max_duration_s, max_pixels=max_pixels)
    if set(info.get("format", {}).get("format_name", "").split(",")) & MP4_FORMATS and truncated_mp4(stored):
        raise ProbeError("truncated", "the file is cut short: its MP4 boxes declare more data than it "
                         "holds; upload the complete file")
    return source
