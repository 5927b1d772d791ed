"""Sources as they arrive from the world: rotated phone clips, anamorphic pixels, HEVC 10-bit,
VP9/Opus, ProRes, 5.1 audio, high frame rates, very short clips. All end as H.264/AAC renditions."""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from tests.conftest import ffprobe, upload, wait_for

LAVFI_AUDIO = ["-f", "lavfi", "-i", "sine=frequency=300:duration=1"]


def encode(path: Path, video: str, args: list[str], audio: list[str] | None = None) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", video]
    cmd += (audio if audio is not None else []) + args + [str(path)]
    subprocess.run(cmd, check=True)
    return path


def rotated(tmp: Path) -> Path:
    landscape = encode(tmp / "coded.mp4", "testsrc2=size=1280x720:rate=30:duration=1",
                       ["-c:v", "libx264", "-preset", "ultrafast"])
    out = tmp / "rotated.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(landscape), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(out)], check=True)
    return out


# name -> (builder, expected {rendition: (width, height)}, has audio)
SOURCES = {
    "rotated_phone": (rotated, {"720p": (720, 1280)}, False),
    "anamorphic_pal": (lambda t: encode(t / "pal.mp4", "testsrc2=size=720x576:rate=25:duration=1",
                                        ["-vf", "setsar=16/15", "-c:v", "libx264", "-preset", "ultrafast"]),
                       {"576p": (768, 576)}, False),
    "hevc_10bit_mkv": (lambda t: encode(t / "hevc.mkv", "testsrc2=size=1280x720:rate=30:duration=1",
                                        ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                                         "-x265-params", "log-level=error", "-c:a", "aac", "-shortest"],
                                        LAVFI_AUDIO),
                       {"720p": (1280, 720)}, True),
    "vp9_opus_webm": (lambda t: encode(t / "vp9.webm", "testsrc2=size=640x360:rate=30:duration=1",
                                       ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                                        "-c:a", "libopus", "-shortest"], LAVFI_AUDIO),
                      {"360p": (640, 360)}, True),
    "prores_444_mov": (lambda t: encode(t / "prores.mov", "testsrc2=size=640x360:rate=24:duration=1",
                                        ["-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"]),
                       {"360p": (640, 360)}, False),
    "surround_5_1": (lambda t: encode(t / "surround.mp4", "testsrc2=size=640x360:rate=30:duration=1",
                                      ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac", "6",
                                       "-shortest"], LAVFI_AUDIO),
                     {"360p": (640, 360)}, True),
    "high_fps_120": (lambda t: encode(t / "fast.mp4", "testsrc2=size=640x360:rate=120:duration=1",
                                      ["-c:v", "libx264", "-preset", "ultrafast"]),
                     {"360p": (640, 360)}, False),
    "very_short": (lambda t: encode(t / "short.mp4", "testsrc2=size=640x360:rate=30:duration=0.2",
                                    ["-c:v", "libx264", "-preset", "ultrafast"]),
                   {"360p": (640, 360)}, False),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_real_world_sources_become_standard_renditions(name, http, worker, tmp_path):
    build, expected, has_audio = SOURCES[name]
    source = build(tmp_path)
    created = upload(http, source)
    assert created.status_code == 201, created.text
    video = wait_for(http, created.json()["id"])
    assert video["status"] == "ready", video["error"]
    assert {r["name"]: (r["width"], r["height"]) for r in video["renditions"]} == expected
    for rendition in video["renditions"]:
        path = tmp_path / f"out-{rendition['name']}.mp4"
        path.write_bytes(http.get(rendition["url"]).content)
        info = ffprobe(path, "-show_streams")
        out_video = next(s for s in info["streams"] if s["codec_type"] == "video")
        audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
        assert (out_video["codec_name"], out_video["pix_fmt"]) == ("h264", "yuv420p")
        assert (out_video["width"], out_video["height"]) == expected[rendition["name"]]
        assert out_video.get("sample_aspect_ratio", "1:1") in ("1:1", "0:1")
        assert not any("rotation" in side for side in out_video.get("side_data_list", []))
        assert Fraction(out_video["avg_frame_rate"]) <= 60
        assert [(a["codec_name"], a["channels"]) for a in audio] == ([("aac", 2)] if has_audio else [])


def detected_fields(path: Path) -> dict[str, int]:
    """ffmpeg's idet filter: how many frames look interlaced (combing) vs progressive."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-i", str(path), "-vf", "idet", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    line = next(x for x in done.stderr.splitlines() if "Multi frame detection" in x)
    counts = re.findall(r"(TFF|BFF|Progressive):\s*(\d+)", line)
    return {name: int(value) for name, value in counts}


def test_interlaced_sources_are_deinterlaced(http, worker, tmp_path):
    # Blurred: idet mistakes testsrc2's razor-sharp edges for combing even in progressive video.
    source = encode(tmp_path / "interlaced.mp4", "testsrc2=size=1280x720:rate=50:duration=2,gblur=sigma=2",
                    ["-vf", "tinterlace=interleave_top,fieldorder=tff,format=yuv420p", "-c:v", "libx264",
                     "-preset", "ultrafast",
                     "-flags", "+ildct+ilme", "-x264-params", "tff=1"])
    assert detected_fields(source)["TFF"] > 40  # the test clip really is combed
    video = wait_for(http, upload(http, source).json()["id"])
    assert video["status"] == "ready", video["error"]
    path = tmp_path / "out.mp4"
    path.write_bytes(http.get(video["renditions"][0]["url"]).content)
    fields = detected_fields(path)
    assert fields["Progressive"] > 4 * (fields["TFF"] + fields["BFF"]), fields
    assert Fraction(ffprobe(path, "-show_streams")["streams"][0]["avg_frame_rate"]) == 25


@pytest.mark.parametrize("transfer", ["smpte2084", "arib-std-b67"])
def test_hdr_sources_are_tone_mapped_to_sdr(transfer, http, worker, tmp_path):
    """Phones record HDR (HLG or PQ) by default; 8-bit H.264 renditions must be honest BT.709 SDR."""
    source = encode(tmp_path / "hdr.mp4", "testsrc2=size=1280x720:rate=30:duration=1",
                    ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                     "-x265-params", f"log-level=error:colorprim=bt2020:transfer={transfer}:colormatrix=bt2020nc",
                     "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc"])
    video = wait_for(http, upload(http, source).json()["id"])
    assert video["status"] == "ready", video["error"]
    path = tmp_path / "out.mp4"
    path.write_bytes(http.get(video["renditions"][0]["url"]).content)
    out = ffprobe(path, "-show_streams")["streams"][0]
    assert (out["pix_fmt"], out["color_transfer"], out["color_primaries"], out["color_space"]) == (
        "yuv420p", "bt709", "bt709", "bt709")
    # Tone mapping changes the pixels, not just the tags: a plain 10 -> 8 bit conversion (HDR code
    # values shown as if they were SDR) is visibly brighter and flatter.
    naive = tmp_path / "naive.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(source), "-vf", "format=yuv420p",
                    "-c:v", "libx264", "-preset", "ultrafast", str(naive)], check=True)
    assert abs(mean_luma(path) - mean_luma(naive)) > 10


def mean_luma(path: Path) -> float:
    done = subprocess.run(["ffmpeg", "-hide_banner", "-i", str(path), "-vf",
                           "signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    values = [float(line.split("=")[1]) for line in done.stdout.splitlines() if "YAVG=" in line]
    return sum(values) / len(values)


def mean_rgb(path: Path) -> list[float]:
    """Average R, G, B of the first frame as a player shows it (decoded with the file's own tags)."""
    raw = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-frames:v", "1",
                          "-vf", "scale=64:36:flags=area,format=rgb24", "-f", "rawvideo", "-"],
                         capture_output=True, check=True).stdout
    return [sum(raw[i::3]) / (len(raw) // 3) for i in range(3)]


@pytest.mark.parametrize(("matrix", "size"), [("smpte170m", "640x480"), ("bt709", "1280x720"), (None, "1280x720")])
def test_colors_survive_the_transcode(matrix, size, http, worker, tmp_path):
    tags = ["-colorspace", matrix, "-color_primaries", "bt709" if matrix == "bt709" else "smpte170m",
            "-color_trc", "bt709" if matrix == "bt709" else "smpte170m"] if matrix else []
    source = encode(tmp_path / "bars.mp4", f"smptehdbars=size={size}:rate=30:duration=1",
                    ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *tags])
    video = wait_for(http, upload(http, source).json()["id"])
    assert video["status"] == "ready", video["error"]
    path = tmp_path / "out.mp4"
    path.write_bytes(http.get(video["renditions"][0]["url"]).content)
    out = ffprobe(path, "-show_streams")["streams"][0]
    assert out.get("color_space") == matrix  # the source's tags carried over; untagged stays untagged
    assert all(abs(a - b) < 1.5 for a, b in zip(mean_rgb(path), mean_rgb(source), strict=True)), (
        mean_rgb(path), mean_rgb(source))
