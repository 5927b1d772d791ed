"""`vidfarm up` survives its own crashes: nothing it started outlives it, one farm per home, a dead
API or redis-server comes back, and every queue it accepts is served. Real processes, real SIGKILL,
its own real redis-server, real ffmpeg."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import (
    API_KEY,
    ROOT,
    FarmUp,
    make_clip,
    process_gone,
    settings_env,
    upload,
    wait_for,
    wait_until,
)
from tests.test_faults import descendants, ffmpeg_pids
from vidfarm.localredis import free_port
from vidfarm.settings import Settings
from vidfarm.up import UpError, UpOptions, farm_settings, fixed_scale_down, serve_queues

HEARTBEAT_TTL_S = 2


class Up:
    """`vidfarm up` on its own home with its own redis-server, its log kept for assertions."""

    def __init__(self, settings: Settings, tmp_path: Path, *flags: str, wait: bool = True) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"up-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vidfarm", "up", "--port", str(self.port), "--resync", "0.5", *flags],
                env=settings_env(settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = self.client()
        if wait:
            wait_until(self.ready, 30, "vidfarm up to be ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log()
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get("/readyz").status_code == 200
        return False

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                            headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text()

    def child(self, marker: str) -> int:
        """The pid of `up`'s child whose command line holds `marker`."""
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                    return pid
        raise AssertionError(f"no child of vidfarm up runs {marker!r}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.http.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.http.close()


@pytest.fixture
def own_settings(settings) -> Settings:
    """No REDIS_URL: `up` runs its own redis-server, AOF in the home. A lost worker is noticed fast."""
    return replace(settings, redis_url=None, worker_heartbeat_ttl_s=HEARTBEAT_TTL_S)


@pytest.fixture
def start_up(own_settings, tmp_path) -> Iterator:
    started: list[Up] = []

    def _start(*flags: str, wait: bool = True) -> Up:
        up = Up(own_settings, tmp_path, *flags, wait=wait)
        started.append(up)
        return up

    yield _start
    for up in started:
        up.stop()


def vidfarm_up(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidfarm", "up", *args], env=settings_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_sigkill_of_up_leaves_nothing_running_and_a_restart_finishes_every_video(start_up, own_settings, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", "testsrc2=size=1280x720:rate=30:duration=6", True, [])
    up = start_up("--max-workers", "1")
    interrupted = upload(up.http, clip, renditions="720p").json()["id"]
    waiting = upload(up.http, clip, renditions="720p").json()["id"]
    wait_until(lambda: ffmpeg_pids(interrupted), 30, "the transcode to start")
    family = descendants(up.proc.pid)
    assert len(family) >= 4  # redis-server, the API, a worker, its ffmpeg
    up.kill()
    wait_until(lambda: all(process_gone(pid) for pid in family), 2, "every process of the farm to die")

    again = start_up("--max-workers", "1")
    videos = [wait_for(again.http, video_id, timeout_s=90) for video_id in (interrupted, waiting)]
    assert [(v["status"], v["attempts"]) for v in videos] == [("ready", 2), ("ready", 1)]
    leftovers = [*own_settings.storage.path.rglob("*.part"), *own_settings.storage.path.rglob("work/*")]
    assert leftovers == [], "no partial file of the interrupted attempt may be left"


def test_one_up_per_home_and_a_killed_one_does_not_hold_it(start_up, own_settings):
    first = start_up()
    second = vidfarm_up(own_settings, "--port", str(free_port()))
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"Error: another `vidfarm up` (pid {first.proc.pid}) is running on {own_settings.home}"]
    first.kill()
    start_up()  # the kernel dropped the dead one's lock


def test_killed_api_is_back_within_5_s_and_takes_uploads(start_up, clips):
    up = start_up("--max-workers", "1")
    api = up.child("vidfarm api")
    os.kill(api, signal.SIGKILL)
    killed_at = time.monotonic()
    # kill() returns before the process is gone: until then it may still accept a connection and
    # take it down with it.
    wait_until(lambda: process_gone(api), 5, "the API process to be gone")
    # The port stays open in `up` while the API restarts: a new connection waits for it, it is not
    # refused (a kept-alive one died with the old process).
    with up.client() as fresh:
        accepted = upload(fresh, clips["small"])
        assert accepted.status_code == 201, accepted.text
        assert time.monotonic() - killed_at < 5
        assert up.child("vidfarm api") != api
        assert wait_for(fresh, accepted.json()["id"])["status"] == "ready"
    assert "the API exited unexpectedly (signal SIGKILL)" in up.log()


def test_an_api_killed_after_serving_before_up_saw_it_ready_is_restarted_and_waiting_uploads_served(
        start_up, clips):
    # `up` frozen from the API's start until the API has answered a client and died: what a
    # CPU-starved `up`, slow to see the API ready, lives through. That is a crash, not a failed start.
    up = start_up("--max-workers", "1", wait=False)

    def started_api() -> int | None:
        with contextlib.suppress(AssertionError):
            return up.child("vidfarm api")
        return None

    api = wait_until(started_api, 30, "the API process to start")
    os.kill(up.proc.pid, signal.SIGSTOP)
    try:
        wait_until(up.ready, 30, "the API to answer")
        os.kill(api, signal.SIGKILL)
        wait_until(lambda: process_gone(api), 5, "the API process to be gone")
        with ThreadPoolExecutor(1) as pool, up.client() as fresh:
            waiting = pool.submit(upload, fresh, clips["small"])
            time.sleep(0.5)  # most likely connected by now, waiting in the backlog: nobody accepts
            os.kill(up.proc.pid, signal.SIGCONT)
            accepted = waiting.result()
            assert accepted.status_code == 201, accepted.text
            assert wait_for(fresh, accepted.json()["id"])["status"] == "ready"
    finally:
        os.kill(up.proc.pid, signal.SIGCONT)
    assert "the API exited unexpectedly (signal SIGKILL)" in up.log()


def test_a_taken_port_stops_up_with_one_line(own_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = vidfarm_up(own_settings, "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"Error: port {port} is taken by another process; choose another with --port"]
    assert not (own_settings.home / "redis").exists(), "nothing may start before the port is ours"


def test_killed_redis_comes_back_from_its_aof_and_queued_videos_finish(start_up, clips):
    up = start_up("--max-workers", "1")
    port = int(up.log().split("started redis-server on port ", 1)[1].split()[0])
    store = redis.Redis(port=port)
    store.set("written-before-the-crash", "1")
    ids = [upload(up.http, clips["small"]).json()["id"] for _ in range(3)]
    time.sleep(1.2)  # the AOF is fsynced every second
    os.kill(up.child("redis-server"), signal.SIGKILL)
    wait_until(lambda: "redis-server restarted" in up.log(), 10, "redis-server to be restarted")
    assert store.get("written-before-the-crash") == b"1"
    assert [wait_for(up.http, video_id, timeout_s=60)["status"] for video_id in ids] == ["ready"] * 3


def test_every_accepted_queue_is_served_and_shown(settings, clips):
    farm = FarmUp(settings, "--max-workers", "1")
    try:
        gpu = upload(farm.client, clips["small"], queue="gpu")
        assert gpu.status_code == 201, gpu.text
        assert wait_for(farm.client, gpu.json()["id"])["status"] == "ready"  # no GPU here: the CPU pool takes it
        refused = upload(farm.client, clips["small"], queue="tpu")
        assert refused.status_code == 422
        assert refused.json()["error"]["message"] == "no pool serves queue 'tpu'; served queues: cpu, gpu"
        assert farm.client.get("/v1/farm").json()["autoscaler"]["pools"]["cpu"]["queues"] == ["cpu", "gpu"]
        status = subprocess.run([sys.executable, "-m", "vidfarm", "status", "--url", str(farm.client.base_url)],
                                env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert "queue gpu: 0 queued, 0 running, 0 failed; served by pool cpu" in status.stdout
        assert "pool cpu: queues cpu, gpu;" in status.stdout
    finally:
        assert farm.stop() == 0


def test_up_refuses_what_its_pool_would_not_serve(settings):
    only_cpu = serve_queues(settings, ("cpu",))
    with pytest.raises(ValueError, match="no pool serves queue 'gpu'; served queues: cpu$"):
        only_cpu.queue_for("gpu")
    with pytest.raises(UpError, match="default queue 'cpu'"):
        serve_queues(settings, ("gpu",))


def test_up_plans_chunks_for_its_pool_and_learns_its_scale_down_unless_told(settings):
    options = UpOptions(host="127.0.0.1", port=8123, min_workers=0, max_workers=6, scale_down_after_s=None,
                        resync_s=5.0, encoder="x264", queues=())
    assert farm_settings(settings, options).pool_max_workers == 6  # the API cuts long videos for 6 workers
    assert fixed_scale_down(None) == {}  # PoolConfig's defaults: learned from the starts
    assert fixed_scale_down(3.0) == {"scale_down_after_s": 3.0, "scale_down_min_s": 3.0, "scale_down_max_s": 3.0}


def test_children_read_the_settings_they_were_given(settings, monkeypatch):
    changed = replace(settings, queues=("cpu",), ladder=("720p",), max_duration_s=12.5, stall_timeout_s=7.0,
                      upload_idle_timeout_s=3.0, job_timeout_factor=1.5, max_attempts=5, chunk_seconds=4.0,
                      playback_secret="s3cret", playback_ttl_s=60, max_body_bytes=1000, body_min_rate_bytes_s=10,
                      body_rate_window_s=2.5, header_timeout_s=4.0, max_open_uploads=7)
    env = changed.to_env({"VIDFARM_API_KEYS_FILE": "/nowhere", "PATH": "/bin"})
    assert "VIDFARM_API_KEYS_FILE" not in env and env["PATH"] == "/bin"  # the keys are in VIDFARM_API_KEYS
    monkeypatch.delenv("VIDFARM_API_KEYS_FILE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == changed
