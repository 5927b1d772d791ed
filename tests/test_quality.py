"""Every rendition carries a quality score a user can see: VMAF and PSNR against its source, measured
by the worker per chunk (real ffmpeg, real libvmaf from the imageio-ffmpeg wheel), through the real
farm; without a scorer the video still ends ready, marked not scored."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from tests.conftest import API_KEY, WorkerProcess, upload, wait_for
from tests.test_cli import vidfarm
from transcoder import quality
from transcoder.command import X264, chunk_args
from transcoder.ladder import OutputPlan
from vidfarm.chunks import ChunkWindow

# 13 s at 10 fps in 6 s chunks: a first chunk of 60 frames (one segment) scored at frames 0, 10, ..., 50,
# and the last of 70 scored at 0, 10, ..., 60. A low rate keeps the test cheap.
SECONDS = 13
RATE = 10
EVERY = 10
EASY = f"testsrc2=size=640x360:rate={RATE}:duration={SECONDS}"
# The same picture under heavy moving noise: far more than the 360p cap can carry.
HARD = f"testsrc2=size=640x360:rate={RATE}:duration={SECONDS},noise=alls=60:allf=t"
NO_LIBVMAF = "ffmpeg"  # the system's (Debian's) ffmpeg: no libvmaf filter

pytestmark = pytest.mark.skipif(quality.scorer_binary("") is None, reason="no ffmpeg with libvmaf installed")


def clip(path: Path, lavfi: str) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", lavfi,
                    "-c:v", "libx264", "-preset", "ultrafast", "-qp", "10", str(path)], check=True)
    return path


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, ladder=("360p",), quality_every=EVERY)


def transcode(http, settings, source: Path, **worker_settings) -> dict:
    worker = WorkerProcess(replace(settings, **worker_settings))
    try:
        created = upload(http, source)
        assert created.status_code == 201, created.text
        return wait_for(http, created.json()["id"])
    finally:
        worker.stop()


def test_an_easy_clip_scores_high_on_every_sampled_frame_of_every_chunk(api, http, settings, tmp_path):
    video = transcode(http, settings, clip(tmp_path / "easy.mp4", EASY))
    assert video["status"] == "ready", video["error"]
    [rendition] = video["renditions"]
    score = rendition["quality"]
    assert score is not None, "not scored"
    assert score["frames_scored"] == 6 + 7  # two chunks of 60 and 70 frames, every 10th
    assert 90 <= score["vmaf_p5"] <= score["vmaf_mean"] <= 100
    assert 30 < score["psnr_db"] <= 60
    shown = vidfarm(settings, "status", video["id"], "--url", api.url, "--api-key", API_KEY)
    assert f"VMAF {score['vmaf_mean']:.1f} (p5 {score['vmaf_p5']:.1f})" in shown.stdout, shown.stdout


def test_every_frame_when_asked(http, settings, tmp_path):
    video = transcode(http, settings, clip(tmp_path / "easy.mp4", EASY), quality_every=1)
    assert video["renditions"][0]["quality"]["frames_scored"] == SECONDS * RATE


def test_a_noisy_clip_scores_far_lower_than_an_easy_one_at_the_same_cap(http, settings, tmp_path):
    easy = transcode(http, settings, clip(tmp_path / "easy.mp4", EASY))["renditions"][0]["quality"]
    hard = transcode(http, settings, clip(tmp_path / "hard.mp4", HARD))["renditions"][0]["quality"]
    assert hard["vmaf_mean"] < easy["vmaf_mean"] - 20, (easy, hard)
    assert hard["vmaf_p5"] < easy["vmaf_p5"] - 20, (easy, hard)
    assert hard["psnr_db"] < easy["psnr_db"], (easy, hard)


@pytest.mark.parametrize("scorer", [NO_LIBVMAF, "off", "/nonexistent/ffmpeg"])
def test_without_a_scorer_the_video_ends_ready_and_says_not_scored(http, settings, tmp_path, scorer):
    video = transcode(http, settings, clip(tmp_path / "easy.mp4", EASY), quality_scorer=scorer)
    assert video["status"] == "ready", video["error"]
    assert [r["quality"] for r in video["renditions"]] == [None]


def test_the_reference_output_leaves_the_renditions_byte_for_byte(tmp_path):
    """Scoring must not change what is encoded: the same chunk with and without the scorer's frames."""
    source = clip(tmp_path / "src.mp4", EASY)
    plan = OutputPlan("360p", 640, 360, Fraction(RATE), 800)
    window = ChunkWindow(seek_s=0.0, grid_start_frame=0, skip_frames=0)
    digests = []
    for scored in (False, True):
        out = tmp_path / f"out-{scored}.mp4"
        reference = quality.reference_for(tmp_path, 640, 360, EVERY) if scored else None
        args = chunk_args(str(source), [(plan, out)], window=window, frames=None, encoder=X264, reference=reference)
        subprocess.run(["ffmpeg", *args], check=True, capture_output=True)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_the_video_score_is_frame_weighted_over_its_chunks():
    short = {"vmaf": [50.0], "psnr_sum": 20.0}
    long = {"vmaf": [90.0] * 9, "psnr_sum": 360.0}
    combined = quality.combine([short, long])
    assert combined == {"vmaf_mean": 86.0, "vmaf_p5": 68.0, "psnr_db": 38.0, "frames_scored": 10}
    assert quality.combine([long, None]) is None, "a score that leaves out a chunk"


def test_a_large_chunk_samples_fewer_frames_than_its_scratch_bound():
    assert quality.sampling_interval(1800, 1920, 1080, 10, 1 << 30) == 10  # 60 s of 1080p30: 560 MB
    every = quality.sampling_interval(1800, 7680, 4320, 10, 1 << 30)  # 8K: 50 MB a frame
    frame_bytes = 7680 * 4320 * 3 // 2
    assert quality.frames_sampled(1800, every) * frame_bytes <= 1 << 30
    assert quality.frames_sampled(1800, every - 1) * frame_bytes > 1 << 30, "no more frames dropped than needed"
