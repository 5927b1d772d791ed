"""Chunked encoding is frame-exact: a video cut into chunks comes out with the very frames, timestamps
and keyframes of the same video encoded in one piece, for every kind of source.

Both encodes run through the real farm (API, Redis, a worker, ffmpeg): one API plans 6 s chunks,
a second API on the same catalog plans one chunk per video.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from tests.conftest import ApiServer, ffprobe, upload, wait_for
from vidfarm.chunks import GOPS_PER_SEGMENT
from vidfarm.farm import Farm

SECONDS = 19  # three chunks of 6 s (the last one 7 s): two joins
RUNGS = "360p,240p"
AAC_FRAME_S = 1024 / 48000
# Every frame moves (scroll), so a frame duplicated or dropped at a join is far less similar to its
# counterpart than the encoder's own noise.
MOVING = "testsrc2=size=640x360:rate={rate}:duration={seconds},scroll=h=0.01"
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
AUDIO = ["-f", "lavfi", "-i", f"sine=frequency=330:duration={SECONDS}", "-c:a", "aac", "-shortest"]


def encode(path: Path, rate: str, args: list[str], *, post: list[str] | None = None) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", MOVING.format(rate=rate, seconds=SECONDS), *AUDIO, *(post or []), *args, str(path)]
    subprocess.run(cmd, check=True)
    return path


def rotated(tmp: Path) -> Path:
    coded = encode(tmp / "coded.mp4", "30", X264)
    out = tmp / "rotated.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(coded), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(out)], check=True)
    return out


SOURCES = {
    "30fps": lambda t: encode(t / "s30.mp4", "30", X264),
    "29.97fps": lambda t: encode(t / "s2997.mp4", "30000/1001", X264),
    "25fps": lambda t: encode(t / "s25.mp4", "25", X264),
    "60fps": lambda t: encode(t / "s60.mp4", "60", X264),
    # A phone's variable frame rate: timestamps jitter around 30 fps on a 90 kHz clock.
    "vfr_phone": lambda t: encode(t / "vfr.mp4", "30", [*X264, "-fps_mode", "vfr", "-video_track_timescale", "90000"],
                                  post=["-vf", "setpts='(N/30+0.011*sin(N))/TB'"]),
    "hevc_10bit": lambda t: encode(t / "hevc.mkv", "30", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt",
                                                           "yuv420p10le", "-x265-params", "log-level=error"]),
    "rotated": rotated,
    "interlaced": lambda t: encode(t / "interlaced.mp4", "50", [
        "-vf", "tinterlace=interleave_top,fieldorder=tff,format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
        "-flags", "+ildct+ilme", "-x264-params", "tff=1"]),
}


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, ladder=tuple(RUNGS.split(",")))


@pytest.fixture
def whole_api(settings):
    """A second API on the same catalog and queues that never splits a video."""
    server = ApiServer(Farm(replace(settings, chunk_seconds=3600.0))).start()
    yield server
    server.stop()


def packets(path: Path) -> list[tuple[str, bool]]:
    info = ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags")
    return sorted(((p["pts_time"], "K" in p["flags"]) for p in info["packets"]), key=lambda p: float(p[0]))


def ssim_per_frame(a: Path, b: Path, shift_a: int = 0, shift_b: int = 0) -> list[float]:
    """SSIM of frame i + shift_a of `a` against frame i + shift_b of `b`, for every i."""
    graph = (f"[0:v]trim=start_frame={shift_a},setpts=PTS-STARTPTS[a];"
             f"[1:v]trim=start_frame={shift_b},setpts=PTS-STARTPTS[b];[a][b]ssim=stats_file=-")
    done = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(a), "-i", str(b),
                           "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True, check=True)
    return [float(v) for v in re.findall(r"All:([0-9.]+)", done.stdout)]


def fetch(client, url: str, target: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text
    target.write_bytes(response.content)
    return target


def audio_duration(path: Path) -> float:
    """End of the last audio packet (Matroska declares no per-stream duration)."""
    packets = ffprobe(path, "-select_streams", "a:0", "-show_entries", "packet=pts_time,duration_time")["packets"]
    return max(float(p["pts_time"]) + float(p.get("duration_time", 0)) for p in packets)


@pytest.mark.parametrize("name", list(SOURCES))
def test_chunked_output_has_the_frames_of_a_single_pass(name, http, api, whole_api, farm, worker, tmp_path):
    source = SOURCES[name](tmp_path)
    chunked = wait_for(http, upload(http, source, renditions=RUNGS).json()["id"])
    with whole_api.client() as whole_http:
        single = wait_for(whole_http, upload(whole_http, source, renditions=RUNGS).json()["id"])
    assert chunked["status"] == single["status"] == "ready", (chunked["error"], single["error"])
    chunks = [t for t in farm.catalog.tasks(chunked["id"]) if t.kind == "chunk"]
    assert len(chunks) >= 3 and len([t for t in farm.catalog.tasks(single["id"]) if t.kind == "chunk"]) == 1
    joins = [t.start_frame for t in chunks[1:]]

    for rung in (r["name"] for r in single["renditions"]):
        a = fetch(http, f"/v1/videos/{chunked['id']}/renditions/{rung}", tmp_path / f"chunked-{rung}.mp4")
        b = fetch(http, f"/v1/videos/{single['id']}/renditions/{rung}", tmp_path / f"single-{rung}.mp4")
        frames_a, frames_b = packets(a), packets(b)
        # Same frame count, same timestamps, keyframes at the same frames.
        assert frames_a == frames_b
        gop = chunks[0].frames // GOPS_PER_SEGMENT  # the first chunk is one segment
        assert [i for i, (_, key) in enumerate(frames_a) if key] == list(range(0, len(frames_a), gop))
        assert all(join % gop == 0 for join in joins)
        # Same pictures: at every join, frame i matches frame i of the single pass far better than its
        # neighbours (a duplicated or dropped frame would shift every later frame by one).
        same = ssim_per_frame(a, b)
        ahead, behind = ssim_per_frame(a, b, shift_b=1), ssim_per_frame(a, b, shift_a=1)
        assert len(same) == len(frames_a)
        for join in joins:
            for i in (join - 1, join):
                assert same[i] > 0.9 and same[i] > ahead[i] + 0.02 and same[i] > behind[i] + 0.02, (
                    rung, i, same[i], ahead[i], behind[i])
        # The source's sound is SECONDS long (containers disagree on how they count the encoder delay).
        assert abs(audio_duration(a) - SECONDS) <= AAC_FRAME_S + 0.001


def test_frame_rate_of_each_source_is_kept(http, worker, tmp_path):
    """The 29.97 source stays 30000/1001 through chunking (no drift to 30)."""
    source = SOURCES["29.97fps"](tmp_path)
    video = wait_for(http, upload(http, source, renditions="360p").json()["id"])
    out = fetch(http, video["renditions"][0]["url"], tmp_path / "out.mp4")
    stream = ffprobe(out, "-select_streams", "v:0", "-show_streams")["streams"][0]
    assert Fraction(stream["avg_frame_rate"]) == Fraction(30000, 1001)
