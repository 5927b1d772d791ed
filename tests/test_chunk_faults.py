"""Faults in the middle of a chunked transcode, for real: a worker SIGKILLed during a chunk, Redis
wiped between chunks, a chunk that cannot be encoded, a re-run racing a slow original. Only what was
lost runs again; what was done is kept byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from rq import Queue

from tests.conftest import BACKENDS, upload, wait_for, wait_until
from tests.test_faults import HEARTBEAT_TTL_S, ffmpeg_pids, make, video
from transcoder import job as job_module
from vidfarm.jobs import new_job_id

RUNG = "360p"
LONG_S = 36


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, worker_heartbeat_ttl_s=HEARTBEAT_TTL_S, max_attempts=3,
                   ladder=(RUNG,))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    # 36 s in 6 s chunks: 6 chunks of 60 frames, each long enough at 640x360 to be caught in the middle.
    folder = tmp_path_factory.mktemp("chunk-faults")
    return make(folder / "long.mp4", f"testsrc2=size=640x360:rate=10:duration={LONG_S}", audio_s=LONG_S)


def tasks(farm, video_id: str) -> dict[str, dict]:
    return {t.name: t for t in farm.catalog.tasks(video_id)}


def done_chunks(farm, video_id: str) -> dict[str, dict]:
    return {n: t for n, t in tasks(farm, video_id).items() if t.kind == "chunk" and t.status == "done"}


def packet_hashes(path: Path) -> list[str]:
    """MD5 of every video packet's bytes (stream copy, nothing decoded)."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
                           "-c", "copy", "-f", "framemd5", "-"], capture_output=True, text=True, check=True)
    return [line.rsplit(",", 1)[1].strip() for line in done.stdout.splitlines() if not line.startswith("#")]


def snapshot(farm, video_id: str, scratch: Path) -> dict[str, tuple[str, int, list[str]]]:
    """Done chunks: the attempt that counts, its frame offset and its packets' hashes (read from
    wherever the backend keeps them; an object store's are downloaded to `scratch`)."""
    return {
        name: (t.result["attempt"], t.start_frame,
               packet_hashes(farm.storage.attempt_file(video_id, t.result["attempt"], f"{RUNG}.mp4", scratch)))
        for name, t in done_chunks(farm, video_id).items()
    }


def assert_kept(farm, http, video_id: str, before: dict, tmp_path: Path) -> None:
    """Chunks done before the fault were not redone, and their bytes are in the published rendition."""
    after = tasks(farm, video_id)
    stitched = tmp_path / "stitched.mp4"
    stitched.write_bytes(http.get(f"/v1/videos/{video_id}/renditions/{RUNG}").content)
    published = packet_hashes(stitched)
    for name, (attempt, start, hashes) in before.items():
        assert after[name].result["attempt"] == attempt and after[name].attempts == 1, name
        assert published[start:start + len(hashes)] == hashes, name


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_worker_killed_during_a_chunk_reruns_only_that_chunk(long_clip, http, farm, start_worker, reconciler,
                                                             tmp_path):
    first = start_worker()
    video_id = upload(http, long_clip).json()["id"]
    wait_until(lambda: len(done_chunks(farm, video_id)) >= 2, 90, "two chunks done")
    def running() -> list[str]:
        return [t.name for t in tasks(farm, video_id).values() if t.status == "running" and t.kind == "chunk"]

    wait_until(running, 30, "a chunk running")
    before = snapshot(farm, video_id, tmp_path / "kept")
    encoders = ffmpeg_pids(video_id)
    # Read again at the last moment: on a busy machine the chunk seen above may be done by now.
    killed = wait_until(running, 30, "a chunk running")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    wait_until(lambda: not any(pid in ffmpeg_pids(video_id) for pid in encoders), 10, "ffmpeg to die")

    start_worker()
    ready = wait_for(http, video_id, timeout_s=180)
    assert ready["status"] == "ready", ready["error"]
    assert ready["attempts"] == 2
    assert [name for name, task in tasks(farm, video_id).items() if task.attempts == 2] == killed
    assert_kept(farm, http, video_id, before, tmp_path)
    assert reconciler == []


@pytest.mark.slow
def test_redis_wiped_between_chunks_requeues_exactly_what_is_missing(long_clip, http, farm, settings, start_worker,
                                                                      reconciler, tmp_path):
    start_worker()
    video_id = upload(http, long_clip).json()["id"]
    wait_until(lambda: len(done_chunks(farm, video_id)) >= 2, 90, "two chunks done")
    before = snapshot(farm, video_id, tmp_path / "kept")
    redis.Redis.from_url(settings.redis_url).flushall()
    ready = wait_for(http, video_id, timeout_s=180)
    assert ready["status"] == "ready", ready["error"]
    assert_kept(farm, http, video_id, before, tmp_path)
    assert all(t.status == "done" for t in tasks(farm, video_id).values())
    assert reconciler == []


@pytest.mark.slow
def test_a_chunk_that_fails_for_good_fails_the_video_and_stops_the_others(long_clip, http, farm, settings,
                                                                          start_worker, reconciler, tmp_path):
    # Matroska declares 36 s in its header; the data stops after about half: the chunks past the cut
    # have no pictures to encode.
    whole = tmp_path / "whole.mkv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(long_clip), "-c", "copy", str(whole)],
                   check=True)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    start_worker()
    start_worker()
    video_id = upload(http, cut).json()["id"]
    failed = wait_for(http, video_id, timeout_s=120)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "truncated", failed["error"]
    assert "ends early" in failed["error"]["message"]
    # The siblings stop: nothing queued, nothing running, nothing half written left behind.
    wait_until(lambda: not ffmpeg_pids(video_id), 10, "no ffmpeg left for the video")
    assert Queue("cpu", connection=farm.rq_redis).count == 0
    wait_until(lambda: not farm.storage.work_root(video_id).exists(), 10, "the chunk files removed")
    assert not farm.storage.rendition_path(video_id, RUNG).exists()


def test_a_rerun_racing_a_slow_original_cannot_corrupt_the_chunk(long_clip, http, farm, tmp_path):
    """No worker runs: the test plays both attempts itself, interleaved the worst way."""
    job_module.use_farm(farm)
    video_id = upload(http, long_clip).json()["id"]
    name = "chunk-00001"
    original = job_module.ChunkAttempt(farm, video_id, name, tasks(farm, video_id)[name].job_id)
    video_row, task = original.claim()
    original.folder.mkdir(parents=True)  # as run() does before work()
    # The original looks dead; the reconciler hands the chunk to a new attempt, which finishes first.
    rerun_id = new_job_id(video_id, name)
    assert farm.catalog.update_task(video_id, name, expect={"job_id": task.job_id}, job_id=rerun_id,
                                    status="queued")
    assert job_module.ChunkAttempt(farm, video_id, name, rerun_id).run() == "done"
    rerun_files = packet_hashes(farm.storage.work_dir(video_id, rerun_id) / f"{RUNG}.mp4")
    # The slow original finishes its encode after all: its result must not count, nor touch the rerun's.
    result = original.work(video_row, task)
    assert original.record(video_row, result) == "canceled"
    final = tasks(farm, video_id)[name]
    assert (final.status, final.result["attempt"]) == ("done", rerun_id)
    assert not original.folder.exists()
    assert packet_hashes(farm.storage.work_dir(video_id, rerun_id) / f"{RUNG}.mp4") == rerun_files
    assert video(http, video_id)["status"] == "processing"


def test_delete_mid_transcode_removes_every_job_and_every_file(long_clip, http, farm, settings, start_worker):
    start_worker()
    video_id = upload(http, long_clip).json()["id"]
    wait_until(lambda: len(done_chunks(farm, video_id)) >= 1, 90, "a chunk done")
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204
    # No job of the graph is left to run: queued chunks, audio, and finalize waiting on them.
    queue = Queue("cpu", connection=farm.rq_redis)
    assert queue.count == 0 and queue.deferred_job_registry.count == 0
    wait_until(lambda: not ffmpeg_pids(video_id), 10, "the running chunk's ffmpeg to stop")
    folder = settings.storage.path / "videos" / video_id
    wait_until(lambda: not folder.exists(), 10, "the video's files removed")
    time.sleep(2)  # a chunk that was running when DELETE came must not write anything back
    assert not folder.exists()
    assert video(http, video_id)["status"] == "canceled"
