"""Every rendition carries a quality score a user can see: VMAF and PSNR against its source, measured
by the worker per chunk (real ffmpeg, real libvmaf from the imageio-ffmpeg wheel), through the real
farm; without a scorer the video still ends ready, marked not scored. A chunk under the quality floor
is encoded again with higher caps, and the better attempt counts."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import replace
from datetime import datetime
from fractions import Fraction
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import API_KEY, WorkerProcess, upload, wait_for
from tests.test_cli import vidfarm
from tests.test_tus import create as tus_create
from tests.test_tus import patch as tus_patch
from transcoder import floor, quality
from transcoder.command import X264, chunk_args
from transcoder.ladder import OutputPlan
from transcoder.runner import run_ffmpeg
from vidfarm.chunks import ChunkWindow

# 4 s at 25 fps: one chunk (under one 6 s segment) of two GOPs of 50 frames, each scored at frames 5, 15, ..., 45.
SECONDS = 4
EVERY = 10
GOP = 50
EASY = f"testsrc2=size=640x360:rate=25:duration={SECONDS}"
# The same picture under heavy moving noise: far more than the 360p cap can carry.
HARD = f"testsrc2=size=640x360:rate=25:duration={SECONDS},noise=alls=60:allf=t"
NO_LIBVMAF = "ffmpeg"  # the system's (Debian's) ffmpeg: no libvmaf filter

pytestmark = pytest.mark.skipif(quality.scorer_binary("") is None, reason="no ffmpeg with libvmaf installed")


def clip(path: Path, lavfi: str) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", lavfi,
                    "-c:v", "libx264", "-preset", "ultrafast", "-qp", "10", str(path)], check=True)
    return path


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, ladder=("360p",), quality_every=EVERY, quality_gop_every=1)


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
    assert score["frames_scored"] == 2 * 5  # two GOPs of 50 frames, every 10th
    assert 90 <= score["vmaf_p5"] <= score["vmaf_mean"] <= 100
    assert 30 < score["psnr_db"] <= 60
    shown = vidfarm(settings, "status", video["id"], "--url", api.url, "--api-key", API_KEY)
    assert f"VMAF {score['vmaf_mean']:.1f} (p5 {score['vmaf_p5']:.1f})" in shown.stdout, shown.stdout


def test_every_frame_when_the_settings_ask(http, settings, tmp_path):
    video = transcode(http, settings, clip(tmp_path / "easy.mp4", EASY), quality_every=1, quality_gop_every=1)
    assert video["renditions"][0]["quality"]["frames_scored"] == SECONDS * 25


def test_every_frame_when_the_upload_asks(http, settings, tmp_path):
    """`quality=full` on one upload; the farm's sampling stays for the others."""
    source = clip(tmp_path / "easy.mp4", EASY)
    worker = WorkerProcess(replace(settings, quality_gop_every=2))
    try:
        full, sampled = (upload(http, source, **params).json()["id"] for params in ({"quality": "full"}, {}))
        scored = {vid: wait_for(http, vid)["renditions"][0]["quality"]["frames_scored"] for vid in (full, sampled)}
    finally:
        worker.stop()
    assert scored == {full: SECONDS * 25, sampled: 5}  # sampled: one GOP of the chunk's two, every 10th frame
    refused = upload(http, source, quality="best")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_quality", refused.text


def test_every_frame_when_a_resumable_upload_asks(http, settings, tmp_path):
    source = clip(tmp_path / "easy.mp4", EASY).read_bytes()
    refused = tus_create(http, len(source), filename="easy.mp4", quality="every")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_quality", refused.text
    created = tus_create(http, len(source), filename="easy.mp4", quality="full")
    assert created.status_code == 201, created.text
    worker = WorkerProcess(settings)
    try:
        assert tus_patch(http, created.headers["Location"], 0, source).status_code == 204
        video = wait_for(http, created.headers["Vidfarm-Video-Id"])
    finally:
        worker.stop()
    assert video["renditions"][0]["quality"]["frames_scored"] == SECONDS * 25


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
    plan = OutputPlan("360p", 640, 360, Fraction(25), 800)
    window = ChunkWindow(seek_s=0.0, grid_start_frame=0, skip_frames=0)
    digests = []
    for scored in (False, True):
        out = tmp_path / f"out-{scored}.mp4"
        reference = sample_of(tmp_path).reference if scored else None
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


def test_a_large_chunk_samples_fewer_frames_than_its_scratch_bound(tmp_path):
    def sampled(width: int, height: int) -> int:
        sample = quality.chunk_sample(tmp_path, 1800, 60, width, height, every=1, gop_every=1, max_bytes=1 << 30)
        return quality.frames_sampled(sample.runs)

    assert sampled(640, 360) == 1800  # 60 s of 360p30: 622 MB
    frame_bytes = 7680 * 4320 * 3 // 2  # 8K: 50 MB a frame
    assert sampled(7680, 4320) >= 10 and sampled(7680, 4320) * frame_bytes <= 1 << 30


def test_samples_are_whole_gop_runs_spread_over_the_chunk_off_the_keyframes():
    assert quality.sample_runs(180, 60, 1, 1) == (quality.Run(0, 0, 179, 1),)
    # Nine GOPs, one in three: the middle GOP of each third, from frame 15 of it, every 30th.
    runs = quality.sample_runs(540, 60, 30, 3)
    assert [(r.start, r.first, r.last) for r in runs] == [(60, 75, 105), (240, 255, 285), (420, 435, 465)]
    # A chunk shorter than one GOP in three still has one, inside it.
    assert quality.sample_runs(40, 60, 30, 3) == (quality.Run(0, 15, 15, 30),)


@pytest.mark.parametrize(("frames", "scored"), [
    (SECONDS * 25, 2 * 7),  # frames 3, 10, ..., 45 of each GOP, each fed with the frame before it
    (GOP + 1, 7 + 1),  # a last GOP of one frame: nothing before it to pair with, so none are paired
])
def test_decoding_only_the_sampled_gops_scores_the_very_frames_a_whole_decode_would(tmp_path, frames, scored):
    """The seek lands exactly on each run's keyframe: a frame off and every score would differ."""
    source = clip(tmp_path / "src.mp4", HARD.replace(f"duration={SECONDS}", f"duration={frames / 25}"))
    plan = OutputPlan("360p", 640, 360, Fraction(25), 730)
    sample = quality.chunk_sample(tmp_path, frames, GOP, 640, 360, every=7, gop_every=1, max_bytes=1 << 30)
    out = tmp_path / "360p.mp4"
    run_ffmpeg(chunk_encoder(source)([(plan, out)], reference=sample.reference))
    # Every run decoded from frame 0 instead, the frames before it dropped by select.
    from_start = replace(sample, runs=tuple(replace(r, start=0) for r in sample.runs))
    scores = [quality.score_chunk(SCORER, each, [(plan, out)], fps=Fraction(25), threads=None, run=scorer_run)
              for each in (sample, from_start)]
    assert scores[0] == scores[1]
    assert len(scores[0]["360p"]["vmaf"]) == scored


def test_a_starved_cap_scores_far_lower_than_a_clean_encode(tmp_path):
    source = clip(tmp_path / "src.mp4", EASY)
    clean, starved = (
        quality.combine([encode_and_score(tmp_path, source, OutputPlan("360p", 640, 360, Fraction(25), kbps),
                                          sample_of(tmp_path))])
        for kbps in (730, 40)
    )
    assert clean["vmaf_p5"] >= 90, clean
    assert starved["vmaf_mean"] < clean["vmaf_mean"] - 30, (clean, starved)


def test_a_chunk_under_the_floor_is_encoded_again_and_scores_higher(tmp_path):
    """A rung whose cap starves it, a floor it misses: encoded again at 20x the cap, the better MP4
    takes the rung's place (same frames, same keyframes), both attempts on record."""
    source = clip(tmp_path / "src.mp4", EASY)
    plan = OutputPlan("360p", 640, 360, Fraction(25), 40)
    out = tmp_path / "360p.mp4"
    sample = sample_of(tmp_path)
    encode = chunk_encoder(source)
    run_ffmpeg(encode([(plan, out)], reference=sample.reference))
    scorer = floor.Scorer(SCORER, sample, Fraction(25), None, scorer_run)
    scores = floor.score_chunk(scorer, [(plan, out)], lambda outs: run_ffmpeg(encode(outs)),
                               floors=(("360p", 90.0),), ceiling=20)
    record = scores["360p"]["floor"]
    assert record["kept"] == "retry" and record["retry"]["cap_kbps"] == 800
    assert record["retry"]["vmaf_p5"] > record["first"]["vmaf_p5"] + 20, record
    assert record["retry"]["bits"] > record["first"]["bits"]
    assert quality.combine([scores["360p"]])["vmaf_p5"] == record["retry"]["vmaf_p5"]
    assert out.stat().st_size * 8 == record["retry"]["bits"], "the rung's MP4 is the second attempt"
    assert keyframes(out) == [0, GOP] and not sample.reference.path.exists()


def test_a_chunk_over_the_floor_is_left_alone(tmp_path):
    source = clip(tmp_path / "src.mp4", EASY)
    plan = OutputPlan("360p", 640, 360, Fraction(25), 730)
    out = tmp_path / "360p.mp4"
    sample = sample_of(tmp_path)
    encode = chunk_encoder(source)
    run_ffmpeg(encode([(plan, out)], reference=sample.reference))
    before = out.read_bytes()
    scores = floor.score_chunk(floor.Scorer(SCORER, sample, Fraction(25), None, scorer_run), [(plan, out)],
                               lambda outs: pytest.fail("encoded again"), floors=(("*", 80.0),), ceiling=2)
    assert "floor" not in scores["360p"] and out.read_bytes() == before


def playable_before_scored(farm, video: dict) -> bool:
    """Whether the (video-only, one-chunk) video was playable before its chunk ended, scores and all."""
    chunk = farm.catalog.task(video["id"], "chunk-00000")
    return datetime.fromisoformat(video["playable_at"]) < datetime.fromisoformat(chunk.updated_at)


def test_a_scored_chunk_records_its_segments_before_its_scores(farm, http, settings, tmp_path):
    """Scoring every frame takes about as long as the encode: without a floor it cannot change the
    picture, so the video plays before it ends."""
    worker = WorkerProcess(settings)
    try:
        video = wait_for(http, upload(http, clip(tmp_path / "easy.mp4", EASY), quality="full").json()["id"])
    finally:
        worker.stop()
    assert video["status"] == "ready", video["error"]
    assert video["renditions"][0]["quality"]["frames_scored"] == SECONDS * 25
    assert playable_before_scored(farm, video), (video["playable_at"], farm.catalog.task(video["id"], "chunk-00000"))


def test_the_floor_through_the_farm_records_both_attempts(farm, http, settings, tmp_path):
    video = transcode(http, settings, clip(tmp_path / "hard.mp4", HARD), vmaf_floor=(("360p", 99.0),))
    assert video["status"] == "ready", video["error"]
    # Segments are immutable once listed: a rung the floor may encode again is cut once scored.
    assert not playable_before_scored(farm, video)
    chunks = [t.result["quality"]["360p"]["floor"] for t in farm.catalog.tasks(video["id"]) if t.kind == "chunk"]
    assert chunks and all(c["retry"]["cap_kbps"] == 2 * c["first"]["cap_kbps"] for c in chunks), chunks
    assert all(c["retry"]["vmaf_p5"] > c["first"]["vmaf_p5"] for c in chunks), chunks
    # What users see is the kept attempts' score: above what the first attempts scored.
    first_mean = sum(c["first"]["vmaf_mean"] for c in chunks) / len(chunks)
    assert video["renditions"][0]["quality"]["vmaf_mean"] > first_mean, (video["renditions"], chunks)


SCORER = quality.scorer_binary("") or "ffmpeg"


def sample_of(folder: Path) -> quality.ChunkSample:
    return quality.chunk_sample(folder, SECONDS * 25, GOP, 640, 360, every=EVERY, gop_every=1, max_bytes=1 << 30)


def chunk_encoder(source: Path):
    window = ChunkWindow(seek_s=0.0, grid_start_frame=0, skip_frames=0)
    return partial(chunk_args, str(source), window=window, frames=None, encoder=X264)


def scorer_run(args: list[str], binary: str) -> None:
    run_ffmpeg(args, binary=binary)


def encode_and_score(folder: Path, source: Path, plan: OutputPlan, sample: quality.ChunkSample) -> dict:
    out = folder / f"{plan.name}.mp4"
    run_ffmpeg(chunk_encoder(source)([(plan, out)], reference=sample.reference))
    return quality.score_chunk(SCORER, sample, [(plan, out)], fps=Fraction(25), threads=None, run=scorer_run)[plan.name]


def keyframes(path: Path) -> list[int]:
    shown = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=key_frame",
                            "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.split()
    return [index for index, key in enumerate(shown) if key.startswith("1")]
