"""Build ffmpeg argument lists from output plans with ffmpeg-python.

One process decodes the source once and `split`s the picture into every rendition. Arguments are
always a list, never a shell string. Keyframes are forced on the same 2 s grid in every rendition so
they can later be packaged for adaptive streaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from transcoder.ladder import GOP_SECONDS, OutputPlan

AUDIO_BITRATE = "128k"
AUDIO_RATE = 48000


@dataclass(frozen=True)
class Encoder:
    """How one video encoder is driven; picked per worker (`--encoder`)."""

    name: str
    codec: str
    options: dict[str, str | int]


X264 = Encoder("x264", "libx264", {"preset": "veryfast", "crf": 23, "sc_threshold": 0, "x264-params": "open-gop=0"})
# NVENC: constant-quality VBR capped like x264; scene-cut keyframes off so only the forced grid remains.
NVENC = Encoder("nvenc", "h264_nvenc", {"preset": "p5", "rc": "vbr", "cq": 23, "no-scenecut": 1, "forced-idr": 1})
ENCODERS = {e.name: e for e in (X264, NVENC)}


def video_options(plan: OutputPlan, encoder: Encoder) -> dict[str, str | int]:
    return {
        "c:v": encoder.codec,
        **encoder.options,
        "profile:v": "high",
        "level:v": "4.2",
        "pix_fmt": "yuv420p",
        "maxrate": f"{plan.maxrate_kbps}k",
        "bufsize": f"{plan.bufsize_kbps}k",
        "g": plan.gop_frames,
        "keyint_min": plan.gop_frames,
        "force_key_frames": f"expr:gte(t,n_forced*{GOP_SECONDS})",
    }


# Tone-mapped pixels are BT.709 SDR; without these tags the renditions would keep the source's HDR tags.
BT709_TAGS = {"color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709"}


def tone_map_to_sdr(picture, transfer: str):
    """HDR (PQ or HLG, BT.2020) to SDR BT.709: linearise, tone-map (Hable), re-encode the curve.
    Without this, 8-bit renditions of phone HDR videos look grey and washed out."""
    return (
        picture.filter("zscale", tin=transfer, min="bt2020nc", pin="bt2020", t="linear", npl=100)
        .filter("format", "gbrpf32le")
        .filter("zscale", p="bt709")
        .filter("tonemap", tonemap="hable", desat=0)
        .filter("zscale", t="bt709", m="bt709", r="tv")
    )


def audio_options() -> dict[str, str | int]:
    return {"c:a": "aac", "b:a": AUDIO_BITRATE, "ac": 2, "ar": AUDIO_RATE}


def transcode_args(
    source: Path, outputs: Sequence[tuple[OutputPlan, Path]], *, has_audio: bool, encoder: Encoder,
    deinterlace: bool = False, hdr_transfer: str | None = None,
) -> list[str]:
    """Arguments (without the leading `ffmpeg`) writing every planned rendition to its path.

    SDR sources keep their YUV matrix and their colour tags (ffmpeg carries them over), so players
    decode renditions exactly like the source; only HDR is converted (to BT.709) and re-tagged.
    """
    stream = ffmpeg.input(str(source))
    fps = outputs[0][0].fps
    picture = stream.video
    if deinterlace:
        # One output frame per input frame (50i -> 25p), so the frame rate the plan assumed holds.
        picture = picture.filter("bwdif", mode="send_frame", deint="interlaced")
    if hdr_transfer:
        picture = tone_map_to_sdr(picture, hdr_transfer)
    # fps before split: constant frame rate, decided once, so every rendition has the same frames.
    picture = picture.filter("fps", fps=f"{fps.numerator}/{fps.denominator}")
    branches = picture.filter_multi_output("split", len(outputs)) if len(outputs) > 1 else None
    nodes = []
    for index, (plan, path) in enumerate(outputs):
        branch = branches.stream(index) if branches is not None else picture
        video = branch.filter("scale", plan.width, plan.height).filter("setsar", 1).filter("format", "yuv420p")
        streams = [video, stream["a:0"]] if has_audio else [video]
        options = video_options(plan, encoder) | (BT709_TAGS if hdr_transfer else {})
        options |= audio_options() if has_audio else {"an": None}
        nodes.append(ffmpeg.output(*streams, str(path), format="mp4", movflags="+faststart", **options))
    merged = ffmpeg.merge_outputs(*nodes).global_args(
        "-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1", "-nostats"
    )
    return merged.overwrite_output().get_args()


def poster_args(source: Path, target: Path, *, at_s: float, width: int, height: int) -> list[str]:
    stream = ffmpeg.input(str(source), ss=f"{at_s:.3f}")
    picture = stream.video.filter("scale", width, height).filter("setsar", 1)
    out = ffmpeg.output(picture, str(target), vframes=1, format="mjpeg", **{"q:v": 3})
    return out.global_args("-hide_banner", "-nostdin", "-loglevel", "error").overwrite_output().get_args()
