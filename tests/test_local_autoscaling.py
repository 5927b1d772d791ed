"""The autoscaler with the local-process backend, as `vidfarm up` runs it: real Redis, real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FarmUp, make_clip, process_gone, settings_env, upload, wait_for, wait_until
from vidfarm.farm import Farm

SCALE_DOWN_AFTER_S = 3


@pytest.fixture
def farm_up(settings) -> Iterator[httpx.Client]:
    farm = FarmUp(settings, "--min-workers", "0", "--max-workers", "2",
                  "--scale-down-after", str(SCALE_DOWN_AFTER_S), "--resync", "0.5")
    yield farm.client
    assert farm.stop() == 0, "vidfarm up must exit cleanly on SIGTERM"


def workers(client: httpx.Client) -> list[dict]:
    return client.get("/v1/farm").json()["workers"]


def test_burst_from_zero_scales_up_fast_completes_and_returns_to_zero(farm_up, clips):
    assert workers(farm_up) == []
    started = time.monotonic()
    ids = [upload(farm_up, clips["landscape720"]).json()["id"] for _ in range(4)]
    wait_until(lambda: workers(farm_up), 2.0, "a first worker", every_s=0.05)
    assert time.monotonic() - started < 2.0 + 1.0  # uploads included
    wait_until(lambda: len(workers(farm_up)) == 2, 10, "two workers", every_s=0.05)
    finished = [wait_for(farm_up, video_id) for video_id in ids]
    assert [v["status"] for v in finished] == ["ready"] * 4
    assert [v["attempts"] for v in finished] == [1] * 4, "no job may be interrupted or retried"
    status = farm_up.get("/v1/farm").json()["autoscaler"]["pools"]["cpu"]
    assert status["max"] == 2 and status["last_decision"]["reason"]
    wait_until(lambda: workers(farm_up) == [], SCALE_DOWN_AFTER_S + 10, "scale-down to zero", every_s=0.2)


def test_scale_down_never_stops_a_busy_worker(farm_up, clips, tmp_path, settings):
    # 7.9 s at 60 fps: the longest video that is one chunk (a segment and less than a GOP), so one
    # worker holds all of its picture.
    long_clip = make_clip(tmp_path / "long.mp4", "testsrc2=size=1920x1080:rate=60:duration=7.9", True, [])
    long_id = upload(farm_up, long_clip).json()["id"]
    short_id = upload(farm_up, clips["small"]).json()["id"]
    assert wait_for(farm_up, short_id)["status"] == "ready"
    # The short job's worker goes idle and is stopped after SCALE_DOWN_AFTER_S; the one encoding the
    # long video's picture (its one chunk: the audio job is over in a moment) keeps going.
    catalog = Farm(settings).catalog
    chunk = wait_until(lambda: (t := catalog.task(long_id, "chunk-00000")) and t.status == "running" and t,
                       20, "the long video's chunk to run", every_s=0.05)
    wait_until(lambda: len(workers(farm_up)) == 1, SCALE_DOWN_AFTER_S + 15, "the idle worker to go",
               every_s=0.2)
    (survivor,) = workers(farm_up)
    assert survivor["name"] == chunk.worker and survivor["state"] == "busy"
    video = wait_for(farm_up, long_id, timeout_s=180)
    assert video["status"] == "ready" and video["attempts"] == 1


def test_top_shows_the_scaling_picture(farm_up, clips, settings):
    video_id = upload(farm_up, clips["small"]).json()["id"]
    assert wait_for(farm_up, video_id)["status"] == "ready"
    shown = subprocess.run(
        [sys.executable, "-m", "vidfarm", "top", "--once", "--url", str(farm_up.base_url)],
        env=settings_env(settings), capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert "QUEUE" in shown and "cpu" in shown
    pool_line = next(line for line in shown.splitlines() if line.startswith("cpu ") and "[" in line)
    assert pool_line.split()[1:3] == ["0", "2"]  # min and max of the pool
    recent = shown.split("RECENT DECISIONS\n", 1)[1]
    assert recent.startswith(tuple("0123456789")) and " cpu: " in recent  # "HH:MM:SS cpu: <why>"


def test_autoscaler_carries_on_after_redis_comes_back_empty(settings, clips, tmp_path):
    """Redis killed and restarted empty under a running `vidfarm up`: the enqueue listener and the
    controller reconnect, and the next upload still gets a worker and ends ready."""
    from dataclasses import replace

    from vidfarm.localredis import LocalRedis

    own = LocalRedis(tmp_path / "redis", persistent=False).start()
    restarted = LocalRedis(tmp_path / "redis", port=own.port, persistent=False)
    farm = FarmUp(replace(settings, redis_url=own.url), "--max-workers", "1", "--scale-down-after", "1",
                  "--resync", "0.5")
    try:
        before = upload(farm.client, clips["small"]).json()["id"]
        assert wait_for(farm.client, before)["status"] == "ready"
        wait_until(lambda: workers(farm.client) == [], 15, "the workers to stop", every_s=0.2)
        own.proc.kill()
        own.proc.wait()
        time.sleep(2)  # the outage: every Redis user in the farm sees connection errors
        restarted.start()
        after = upload(farm.client, clips["small"])
        assert after.status_code == 201, after.text
        video = wait_for(farm.client, after.json()["id"], timeout_s=60)
        assert video["status"] == "ready" and video["attempts"] == 1
    finally:
        assert farm.stop() == 0
        own.stop()
        restarted.stop()


def test_ctrl_c_stops_the_whole_farm_cleanly(settings):
    farm = FarmUp(settings, "--min-workers", "1", "--max-workers", "1")
    (worker,) = wait_until(lambda: workers(farm.client), 15, "a worker", every_s=0.05)
    os.killpg(farm.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground job
    assert farm.proc.wait(timeout=30) == 0
    assert process_gone(worker["pid"])
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{farm.port}/healthz", timeout=2)


def test_without_a_fixed_delay_idle_workers_go_after_about_a_start(settings, clips):
    """No --scale-down-after: the delay is learned from the starts `up` measured (a local worker starts
    within a second or two, so the 10 s floor), not the 60 s that stands in until one is measured."""
    farm = FarmUp(settings, "--max-workers", "1", "--resync", "0.5")
    try:
        video_id = upload(farm.client, clips["small"]).json()["id"]
        assert wait_for(farm.client, video_id)["status"] == "ready"
        ready_at = time.monotonic()

        def holding() -> str | None:
            decision = farm.client.get("/v1/farm").json()["autoscaler"]["pools"]["cpu"]["last_decision"]
            return decision["message"] if decision and decision["reason"] == "hold_scale_down_delay" else None

        message = wait_until(holding, 10, "the pool to hold its idle worker", every_s=0.1)
        assert "(median start" in message and "of the last 1)" in message, message
        wait_until(lambda: workers(farm.client) == [], 30, "the idle worker to go", every_s=0.2)
        assert time.monotonic() - ready_at < 30  # the configured 60 s would still be holding it
    finally:
        assert farm.stop() == 0
