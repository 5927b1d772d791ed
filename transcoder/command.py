"""Build ffmpeg argument lists from output plans with ffmpeg-python.

One process decodes the source once and `split`s the picture into every rendition. Arguments are
always a list, never a shell string. Keyframes are forced on the same 2 s grid in every rendition so
they can later be packaged for adaptive streaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from transcoder.ladder import OutputPlan
from vidfarm.chunks import ChunkWindow
from vidfarm.segments import AUDIO_SAMPLE_RATE, INIT_SEGMENT

AUDIO_BITRATE = "128k"
AUDIO_RATE = AUDIO_SAMPLE_RATE
CUT_LIST = "ffmpeg.m3u8"  # the segmenter's own playlist: which segments closed, and their durations


@dataclass(frozen=True)
class Encoder:
    """How one video encoder is driven; picked per worker (`--encoder`)."""

    name: str
    codec: str
    options: dict[str, str | int]
    # Threads per decoder, encoder and filter graph. None lets ffmpeg size them from the machine's
    # cores, which in a container are the node's, not the CPU limit's (see thread_args).
    threads: int | None = None


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
        # By frame number, not time: chunks start on a GOP boundary, so every chunk and every rung
        # puts keyframes on the same frames as a single-pass encode would.
        "force_key_frames": f"expr:eq(mod(n,{plan.gop_frames}),0)",
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


def thread_args(threads: int | None) -> list[str]:
    """Global options bounding the filter graph's threads.

    In a pod limited to 4 CPUs on a 96-core node, ffmpeg would start ~96 threads per decoder, encoder
    and filter graph: throttled by the limit anyway, and each thread's buffers cost memory (measured:
    424 MiB peak at 2 threads, 2.6 GiB at 96). Every filter here runs in one -filter_complex graph.
    """
    return [] if threads is None else ["-filter_complex_threads", str(threads)]


def audio_options() -> dict[str, str | int]:
    return {"c:a": "aac", "b:a": AUDIO_BITRATE, "ac": 2, "ar": AUDIO_RATE}


@dataclass(frozen=True)
class ReferenceFrames:
    """Every n-th picture the encode reads, uncompressed at the source's display size: what the
    quality scorer compares the renditions with (see transcoder/quality.py)."""

    path: Path
    every: int
    width: int
    height: int


def sample_expr(every: int) -> str:
    """Frames 0, n, 2n, ... of a stream whose frame numbers start at 0 (the chunk's first frame)."""
    return f"not(mod(n,{every}))"


def reference_output(branch, reference: ReferenceFrames, fps: Fraction):
    # Consecutive timestamps at the plan's rate: the muxer neither drops nor repeats a sampled frame.
    picture = (
        branch.filter("select", sample_expr(reference.every))
        .filter("settb", f"{fps.denominator}/{fps.numerator}").filter("setpts", "N")
        .filter("scale", reference.width, reference.height).filter("setsar", 1).filter("format", "yuv420p")
    )
    return ffmpeg.output(picture, str(reference.path), format="nut", an=None, **{"c:v": "rawvideo"})


QUIET = ("-hide_banner", "-nostdin", "-loglevel", "error")
PROGRESS = ("-progress", "pipe:1", "-nostats")


def chunk_args(
    source: Path | str, outputs: Sequence[tuple[OutputPlan, Path]], *, window: ChunkWindow, frames: int | None,
    encoder: Encoder, deinterlace: bool = False, hdr_transfer: str | None = None,
    reference: ReferenceFrames | None = None,
) -> list[str]:
    """Arguments (without the leading `ffmpeg`) encoding one chunk's frames into every planned rung:
    video only, timestamps from 0. The whole video is the chunk starting at frame 0 with no end.

    Timestamps are kept as they are in the source (`-copyts`) and the frame-rate converter's grid is
    anchored at an absolute frame, so frame k of the output is the same source frame whether the video
    is encoded in one piece or in chunks; the cut is made on those frames, after the converter.
    `reference` adds one more branch of the same frames (sampled) for the quality scorer; the
    renditions' bytes do not change.
    SDR sources keep their YUV matrix and their colour tags (ffmpeg carries them over), so players
    decode renditions exactly like the source; only HDR is converted (to BT.709) and re-tagged.
    """
    seek = {"ss": f"{window.seek_s:.6f}"} if window.seek_s > 0 else {}
    codec_threads = {} if encoder.threads is None else {"threads": encoder.threads}
    stream = ffmpeg.input(str(source), copyts=None, **seek, **codec_threads)  # threads: the decoder's
    fps = outputs[0][0].fps
    picture = stream.video
    if deinterlace:
        # One output frame per input frame (50i -> 25p), so the frame rate the plan assumed holds.
        picture = picture.filter("bwdif", mode="send_frame", deint="interlaced")
    if hdr_transfer:
        picture = tone_map_to_sdr(picture, hdr_transfer)
    grid_start_s = Fraction(window.grid_start_frame) / fps
    # fps before split: constant frame rate, decided once, so every rendition has the same frames.
    picture = picture.filter("fps", fps=f"{fps.numerator}/{fps.denominator}", start_time=f"{float(grid_start_s):.9f}")
    cut = {"start_frame": window.skip_frames} | ({"end_frame": window.skip_frames + frames} if frames else {})
    picture = picture.filter("trim", **cut).filter("setpts", "PTS-STARTPTS")
    branch_count = len(outputs) + (1 if reference else 0)
    branches = picture.filter_multi_output("split", branch_count) if branch_count > 1 else None
    nodes = []
    for index, (plan, path) in enumerate(outputs):
        branch = branches.stream(index) if branches is not None else picture
        video = branch.filter("scale", plan.width, plan.height).filter("setsar", 1).filter("format", "yuv420p")
        options = video_options(plan, encoder) | (BT709_TAGS if hdr_transfer else {}) | codec_threads
        nodes.append(ffmpeg.output(video, str(path), format="mp4", an=None, **options))
    if reference is not None:
        nodes.append(reference_output(branches.stream(len(outputs)), reference, fps))
    merged = ffmpeg.merge_outputs(*nodes).global_args(*QUIET, *PROGRESS, *thread_args(encoder.threads))
    return merged.overwrite_output().get_args()


def audio_args(source: Path | str, target: Path, stream_folder: Path, *, start_s: float, segment_s: float) -> list[str]:
    """The whole first audio track as AAC, its time 0 at the video's first frame (`start_s`, on the
    source's clock): what comes earlier is cut, a late start is padded with silence, so the track
    lines up with the stitched picture. Two outputs of one decode: `target` (an MP4 the downloads
    are stitched with) and the stream's CMAF segments in `stream_folder`, each closed segment listed
    in its cut list as soon as it is written, so they can be published while the rest is encoded.
    The AAC encoder is deterministic: both outputs hold the same packets."""
    stream = ffmpeg.input(str(source), copyts=None)
    audio = stream["a:0"].filter("asetpts", f"PTS-{start_s:.6f}/TB").filter(
        "aresample", AUDIO_RATE, **{"async": 1, "first_pts": 0}
    ).filter_multi_output("asplit", 2)
    download = ffmpeg.output(audio.stream(0), str(target), format="mp4", vn=None, **audio_options())
    segments = ffmpeg.output(audio.stream(1), str(stream_folder / CUT_LIST), vn=None, **audio_options(),
                             **cmaf_options(stream_folder, segment_s, growing=True))
    merged = ffmpeg.merge_outputs(download, segments)
    return merged.global_args(*QUIET, *PROGRESS).overwrite_output().get_args()


def stitch_args(concat_list: Path, audio: Path | None, target: Path) -> list[str]:
    """Stream copy: the rung's chunks one after another, plus the audio track, as one MP4."""
    # auto_convert off: packets are copied byte for byte (every chunk of a rung has the same SPS/PPS,
    # so none need the parameter sets repeated in band, which the conversion would add to each IDR).
    picture = ffmpeg.input(str(concat_list), f="concat", safe=0, auto_convert=0)
    streams = [picture["v:0"]] + ([ffmpeg.input(str(audio))["a:0"]] if audio else [])
    out = ffmpeg.output(*streams, str(target), format="mp4", c="copy", movflags="+faststart")
    return out.global_args(*QUIET).overwrite_output().get_args()


def concat_list(chunks: Sequence[Path]) -> str:
    """The concat demuxer's list file; paths are ours (storage), quoted as it requires."""
    return "".join("file '{}'\n".format(str(p).replace("'", "'\\''")) for p in chunks)


def segment_args(source: Path, stream: str, folder: Path, segment_s: float, *, first: int = 0) -> list[str]:
    """Stream copy of one stream (`v:0` or `a:0`) into CMAF segments of `segment_s`, cut at keyframes
    (see cmaf_options), numbered from `first`."""
    out = ffmpeg.input(str(source))[stream].output(str(folder / CUT_LIST), c="copy",
                                                   **cmaf_options(folder, segment_s, first=first))
    return out.global_args(*QUIET).overwrite_output().get_args()


def cmaf_options(folder: Path, segment_s: float, *, first: int = 0, growing: bool = False) -> dict[str, str | int]:
    """CMAF segments (fragmented MP4) of `segment_s`, cut at the first keyframe at or after each
    multiple: init.mp4, seg_{first:05d}.m4s, ... and ffmpeg's own playlist (CUT_LIST), which we read
    back. `growing`: the playlist is rewritten as each segment closes (an EVENT playlist).

    With B-frames the first picture decodes before it is shown (DTS < PTS = 0). By default ffmpeg
    shifts every timestamp up to make DTS non-negative and hides the shift in an edit list, which
    Media Source Extensions ignore: in hls.js and dash.js the picture then starts 2 frames late, out
    of sync with the sound and past the manifests' end. Negative composition offsets (trun v1, as
    CMAF expects) keep the first picture at PTS 0 = tfdt, with no shift and no edit list."""
    return {
        "format": "hls", "hls_time": f"{segment_s:.6f}", "hls_playlist_type": "event" if growing else "vod",
        "hls_segment_type": "fmp4", "hls_fmp4_init_filename": INIT_SEGMENT, "start_number": first,
        "hls_segment_filename": str(folder / "seg_%05d.m4s"), "hls_list_size": 0,
        "avoid_negative_ts": "disabled", "hls_segment_options": "movflags=+negative_cts_offsets",
    }


def poster_args(source: Path | str, target: Path, *, at_s: float, width: int, height: int) -> list[str]:
    stream = ffmpeg.input(str(source), ss=f"{at_s:.3f}")
    picture = stream.video.filter("scale", width, height).filter("setsar", 1)
    out = ffmpeg.output(picture, str(target), vframes=1, format="mjpeg", **{"q:v": 3})
    return out.global_args(*QUIET).overwrite_output().get_args()
