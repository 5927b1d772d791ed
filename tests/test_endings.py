"""Every way a video ends badly goes through one path (`vidfarm.lifecycle`), so metrics, live events,
webhooks and the jobs agree: bad input at probe time, the worker lost at the last attempt, a chunk
that fails for good, a resumable upload that expires, a DELETE mid-transcode. Each increments the
failure metric with its reason in the process that saw it (here: the API runs in this process, the
reconciler and the failing chunk are run here too, with real Redis, ffmpeg and catalog), publishes the
status event, writes the webhook event in the outbox, and stops the video's other jobs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from rq import Queue

from tests.conftest import API_KEY, FakeClock, upload
from tests.test_tus import create, patch
from transcoder import job as job_module
from uploader.auth import tenant_of
from vidfarm import cancel, events, tus
from vidfarm.catalog import utcnow
from vidfarm.farm import Farm
from vidfarm.jobs import enqueue_graph, plan_tasks
from vidfarm.outbox import EVENT_TYPES
from vidfarm.reconciler import Reconciler
from vidfarm.states import TaskKind, TaskStatus, VideoStatus
from vidfarm.storage import new_video_id

SECONDS = 18.0  # three chunks of 6 s


@pytest.fixture
def settings(settings):
    # Deliveries stay in the outbox, where the test reads them; 6 s chunks make a short clip several.
    return replace(settings, webhook_deliver_in_api=False, chunk_seconds=6.0, ladder=("360p",))


@dataclass
class Ending:
    video_id: str
    status: VideoStatus  # failed or canceled
    reason: str  # the failure metric's label
    has_jobs: bool  # whether the video had a graph of jobs to stop


def failures() -> dict[str, float]:
    """This process's failure counter, by reason."""
    return {sample.labels["reason"]: sample.value for family in REGISTRY.collect()
            if family.name == "vidfarm_failures" for sample in family.samples if sample.name.endswith("_total")}


@pytest.fixture
def status_events(farm: Farm) -> Iterator[Callable[[str], list[dict]]]:
    """Every status event published from now on, by video id (pub/sub, as live streams hear them)."""
    listener = farm.redis.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(events.channel("*"))

    def of(video_id: str) -> list[dict]:
        deadline = time.monotonic() + 1.0  # what was published is all there by then (it is local Redis)
        while time.monotonic() < deadline:
            # None also for the subscription's own confirmation: keep reading until the deadline.
            if (message := listener.get_message(timeout=0.1)) is not None:
                of.seen.append(json.loads(message["data"]))  # type: ignore[attr-defined]
        return [e for e in of.seen if e["id"] == video_id and e["type"] == "status"]  # type: ignore[attr-defined]

    of.seen = []  # type: ignore[attr-defined]
    yield of
    listener.close()


@pytest.fixture
def clip(tmp_path_factory) -> Path:
    """18 s in 6 s chunks: three chunks, audio and finalize."""
    path = tmp_path_factory.mktemp("endings") / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x180:rate=30:duration={SECONDS}", "-f", "lavfi",
                    "-i", f"sine=duration={SECONDS}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


def bad_input_at_probe_time(farm, http, tmp_path, clip) -> Ending:
    body = b"this is no video" * 64
    video_id = create(http, len(body), filename="notes.mp4").headers["Vidfarm-Video-Id"]
    assert patch(http, f"/v1/uploads/{video_id}", 0, body).status_code == 422
    code = farm.catalog.get(video_id, cached=False)["error_code"]
    return Ending(video_id, VideoStatus.FAILED, code, has_jobs=False)


def worker_lost_at_the_last_attempt(farm, http, tmp_path, clip) -> Ending:
    video_id = new_video_id()
    tasks = plan_tasks(video_id, SECONDS, 30.0, True, farm.settings.chunk_seconds)
    video = farm.catalog.create(
        id=video_id, tenant=tenant_of(API_KEY), status=VideoStatus.PROCESSING, attempts=0, filename="a.mp4",
        size_bytes=10, duration_s=SECONDS, width=320, height=180, fps=30.0, video_codec="h264", audio_codec="aac",
        queue="cpu", job_id=None, requested=None, tasks=tasks,
    )
    enqueue_graph(farm.rq_redis, farm.settings, video, tasks)
    farm.catalog.update_task(video_id, "chunk-00000", status=TaskStatus.RUNNING, worker="gone",
                             attempts=farm.settings.max_attempts)
    clock = FakeClock()
    reconciler = Reconciler(farm, clock=clock)
    reconciler.step()  # no live worker has it: lost once that lasts a heartbeat TTL
    clock.now += farm.settings.worker_heartbeat_ttl_s
    reconciler.step()
    return Ending(video_id, VideoStatus.FAILED, "worker_lost", has_jobs=True)


def chunk_that_fails_for_good(farm, http, tmp_path, clip) -> Ending:
    # Matroska declares 18 s in its header; the data stops after about half: the last chunk has no
    # pictures to encode. It runs here, with real ffmpeg, as a worker runs it.
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip), "-c", "copy", str(whole)],
                   check=True)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    video_id = upload(http, cut).json()["id"]
    last = max((t for t in farm.catalog.tasks(video_id) if t.kind == TaskKind.CHUNK), key=lambda t: t.start_frame)
    Queue("cpu", connection=farm.rq_redis).remove(last.job_id)  # as a worker's dequeue takes it
    job_module.use_farm(farm)
    assert job_module.ChunkAttempt(farm, video_id, last.name, last.job_id).run() == VideoStatus.FAILED
    code = farm.catalog.get(video_id, cached=False)["error_code"]
    assert code in ("truncated", "media_error")  # cut short, as the chunk past the end finds out
    return Ending(video_id, VideoStatus.FAILED, code, has_jobs=True)


def resumable_upload_expires(farm, http, tmp_path, clip) -> Ending:
    video_id = create(http, 1000).headers["Vidfarm-Video-Id"]
    assert patch(http, f"/v1/uploads/{video_id}", 0, b"x" * 10).status_code == 204
    farm.catalog.update(video_id, updated_at=utcnow() - timedelta(seconds=farm.settings.tus_expiry_s + 1))
    assert tus.sweep_expired(farm) == 1
    return Ending(video_id, VideoStatus.FAILED, tus.EXPIRED, has_jobs=False)


def deleted_mid_transcode(farm, http, tmp_path, clip) -> Ending:
    video_id = upload(http, clip).json()["id"]
    first = farm.catalog.task(video_id, "chunk-00000")
    job_module.use_farm(farm)
    assert job_module.ChunkAttempt(farm, video_id, first.name, first.job_id).claim() is not None  # a worker on it
    assert farm.catalog.get(video_id, cached=False)["status"] == VideoStatus.PROCESSING
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204
    return Ending(video_id, VideoStatus.CANCELED, "canceled", has_jobs=True)


ENDINGS = [bad_input_at_probe_time, worker_lost_at_the_last_attempt, chunk_that_fails_for_good,
           resumable_upload_expires, deleted_mid_transcode]


@pytest.mark.parametrize("end", ENDINGS, ids=[end.__name__ for end in ENDINGS])
def test_every_bad_ending_is_counted_announced_written_and_stops_the_jobs(end, farm, http, status_events, clip,
                                                                          tmp_path):
    webhook = farm.webhooks.create(tenant_of(API_KEY), "http://127.0.0.1:9/hook", EVENT_TYPES)
    before = failures()

    ending = end(farm, http, tmp_path, clip)

    row = farm.catalog.get(ending.video_id, cached=False)
    assert row["status"] == ending.status
    # The metric, with its reason, once.
    assert failures().get(ending.reason, 0.0) == before.get(ending.reason, 0.0) + 1
    # The status event, once, saying how it ended.
    announced = [e for e in status_events(ending.video_id) if e["status"] in (VideoStatus.FAILED, VideoStatus.CANCELED)]
    assert [e["status"] for e in announced] == [ending.status]
    if ending.status == VideoStatus.FAILED:
        assert announced[0]["error"]["code"] == ending.reason
    # The webhook event, in the outbox with the change.
    event = "video.failed" if ending.status == VideoStatus.FAILED else "video.deleted"
    assert [(d["event"], d["video_id"]) for d in farm.webhooks.deliveries(webhook["id"])] == [(event, ending.video_id)]
    # No job of the video is left to run, and a running one sees the cancel flag.
    queue = Queue("cpu", connection=farm.rq_redis)
    left = [job_id for job_id in queue.job_ids + queue.deferred_job_registry.get_job_ids()
            if job_id.startswith(ending.video_id)]
    assert left == []
    assert cancel.requested(farm.redis, ending.video_id) == ending.has_jobs
