"""Faults, for real: killed workers, a wiped or vanished Redis, a database that goes away, a full or
read-only disk, a hung ffmpeg, poison input, SIGTERM. Nothing accepted is lost, nothing stays
`processing`, failures say why, and no partial file is ever visible.

Workers are real `vidfarm worker` processes; the reconciler runs in a thread of the test, as it runs
in a thread of `vidfarm up` (or of the cluster autoscaler).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import (
    API_KEY,
    PG_URL,
    ROOT,
    ApiServer,
    WorkerProcess,
    answers,
    ffprobe,
    pg_available,
    process_gone,
    reconciling,
    upload,
    wait_for,
    wait_until,
)
from vidfarm import presence
from vidfarm.catalog import Catalog
from vidfarm.farm import Farm
from vidfarm.localredis import LocalRedis, free_port

HEARTBEAT_TTL_S = 5


@pytest.fixture
def settings(settings):
    """A dead worker is noticed after one heartbeat TTL (5 s) instead of the default 10 s."""
    return replace(settings, worker_heartbeat_ttl_s=HEARTBEAT_TTL_S, max_attempts=3)


# -- clips ------------------------------------------------------------------------------------------


def make(path: Path, lavfi: str, *extra: str, audio_s: float | None = None) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", lavfi]
    if audio_s:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={audio_s}", "-c:a", "aac", "-shortest"]
    subprocess.run([*cmd, "-c:v", "libx264", "-preset", "ultrafast", *extra, str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def fault_clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fault-clips")
    clips = {
        # Long enough (a few seconds of x264 at 720p on two cores) to be killed in the middle: 60 fps,
        # so that each of its two 6 s chunks holds as many frames as 12 s at 30 fps.
        "long": make(d / "long.mp4", "testsrc2=size=1280x720:rate=60:duration=12", audio_s=12),
        "short": make(d / "short.mp4", "testsrc2=size=640x360:rate=25:duration=4", audio_s=4),
        # Small on disk, big once transcoded at CRF 23: fills a small disk in the middle of a write.
        "dense": make(d / "dense.mp4", "testsrc2=size=1280x720:rate=30:duration=6", "-crf", "51"),
    }
    data = make(d / "fast.mp4", "testsrc2=size=640x360:rate=25:duration=4", "-movflags", "+faststart").read_bytes()
    offset = data.index(b"mdat") - 4
    size = int.from_bytes(data[offset:offset + 4], "big")
    poison = d / "poison.mp4"
    poison.write_bytes(data[: offset + 8] + random.Random(7).randbytes(size - 8) + data[offset + size:])
    clips["poison"] = poison
    return clips


# -- helpers ----------------------------------------------------------------------------------------


def ffmpeg_pids(marker: str) -> list[int]:
    """ffmpeg processes whose command line mentions `marker` (a video id or a storage path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ffmpeg") and any(marker.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def video(http: httpx.Client, video_id: str) -> dict:
    return http.get(f"/v1/videos/{video_id}").json()


def assert_renditions_valid(http: httpx.Client, ready: dict, source: Path, folder: Path) -> None:
    """Every rendition downloads, decodes as H.264 with the source's length and frame count."""
    src = ffprobe(source, "-show_format", "-show_streams")
    src_video = next(s for s in src["streams"] if s["codec_type"] == "video")
    src_frames = int(src_video["nb_frames"])
    names = [r["name"] for r in ready["renditions"]]
    assert names and len(names) == len(set(names)), names
    for rendition in ready["renditions"]:
        response = http.get(rendition["url"])
        assert response.status_code == 200
        path = folder / f"{ready['id']}-{rendition['name']}.mp4"
        path.write_bytes(response.content)
        out = ffprobe(path, "-count_frames", "-show_format", "-show_streams", "-select_streams", "v:0")
        stream = out["streams"][0]
        assert stream["codec_name"] == "h264"
        assert (stream["width"], stream["height"]) == (rendition["width"], rendition["height"])
        assert abs(int(stream["nb_read_frames"]) - src_frames) <= 1, (stream["nb_read_frames"], src_frames)
        assert abs(float(out["format"]["duration"]) - float(src["format"]["duration"])) <= 0.15
        assert rendition["size_bytes"] == len(response.content)


def assert_storage_clean(settings, ready: list[dict]) -> None:
    """No partial or duplicate file anywhere: each video folder holds exactly its published files."""
    leftovers = [p for p in settings.storage.path.rglob("*.part")]
    assert leftovers == [], leftovers
    assert not any((settings.storage.path / "incoming").iterdir())
    for item in ready:
        folder = settings.storage.path / "videos" / item["id"]
        expected = {"source", "poster.jpg", "stream"} | {f"{r['name']}.mp4" for r in item["renditions"]}
        assert {p.name for p in folder.iterdir()} == expected  # no chunk or package work left over


def never_stuck_processing(http: httpx.Client) -> None:
    items = http.get("/v1/videos", params={"limit": 200}).json()["items"]
    assert not [v["id"] for v in items if v["status"] in ("queued", "processing")]


# -- killed workers ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_transcode_runs_again_within_60s(fault_clips, http, settings, start_worker, reconciler,
                                                           tmp_path):
    first = start_worker()
    video_id = upload(http, fault_clips["long"]).json()["id"]
    wait_until(lambda: video(http, video_id)["progress"] >= 5, 60, "the transcode to get going")
    # An encoder, not the moment between two chunks or while a chunk is scored (another binary).
    encoders = wait_until(lambda: ffmpeg_pids(video_id), 30, "an ffmpeg encoding the video")
    folder = settings.storage.path / "videos" / video_id

    # What a node loss or the OOM killer does: SIGKILL to the worker's whole process group.
    os.killpg(first.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    first.proc.wait(timeout=10)
    wait_until(lambda: all(process_gone(p) for p in encoders), 10, "ffmpeg to die with its worker")
    assert list(folder.glob("*.mp4")) == [], "a partial rendition became visible"
    assert video(http, video_id)["status"] == "processing"

    start_worker()  # the replacement pod
    again = wait_until(lambda: (v := video(http, video_id))["attempts"] == 2 and v, 60, "the second attempt")
    assert time.monotonic() - killed_at < 60
    assert again["status"] in ("processing", "ready")
    ready = wait_for(http, video_id, timeout_s=120)
    assert ready["status"] == "ready", ready["error"]
    assert ready["attempts"] == 2 and ready["error"] is None
    assert_renditions_valid(http, ready, fault_clips["long"], tmp_path)
    assert_storage_clean(settings, [ready])
    assert reconciler == []
    # The killed attempt's job is forgotten, not left to RQ to count as running or failed later.
    assert http.get("/v1/farm").json()["queues"]["cpu"] == {"queued": 0, "running": 0, "failed": 0}


@pytest.fixture
def chaos_settings(settings):
    return replace(settings, max_attempts=10)


@pytest.mark.slow
def test_chaos_workers_killed_at_random_while_new_ones_start(fault_clips, tmp_path, chaos_settings):
    settings = chaos_settings
    settings.home.mkdir(parents=True, exist_ok=True)
    farm = Farm(settings)
    api = ApiServer(farm).start()
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20240601")))
    workers = [WorkerProcess(settings) for _ in range(2)]
    kills = {"busy": 0, "idle": 0}
    done = threading.Event()

    def chaos() -> None:
        """Every 2-5 s kill a random worker (its whole group, or the worker alone: its ffmpeg must
        die with it either way) and start a replacement, until all is ready or 6 kills happened."""
        while not done.wait(rng.uniform(2.0, 5.0)) and sum(kills.values()) < 6:
            alive = [w for w in workers if w.proc.poll() is None]
            if not alive:
                continue
            victim = rng.choice(alive)
            busy = any(p.name == victim.name and p.video_id for p in presence.all_workers(farm.redis))
            if rng.random() < 0.5:
                os.killpg(victim.proc.pid, signal.SIGKILL)
            else:
                victim.proc.kill()
            victim.proc.wait()
            kills["busy" if busy else "idle"] += 1
            workers.append(WorkerProcess(settings))

    try:
        with api.client() as http, reconciling(farm) as errors:
            ids = [upload(http, fault_clips["short"] if i % 2 else fault_clips["long"]).json()["id"]
                   for i in range(6)]
            killer = threading.Thread(target=chaos, daemon=True)
            killer.start()
            finished = [wait_for(http, i, timeout_s=150) for i in ids]
            done.set()
            killer.join(timeout=30)
            for item in finished:
                assert item["status"] == "ready", item
                source = fault_clips["short"] if ids.index(item["id"]) % 2 else fault_clips["long"]
                assert_renditions_valid(http, item, source, tmp_path)
            assert kills["busy"] >= 1, f"no kill hit a busy worker ({kills}); the test proved nothing"
            assert any(item["attempts"] >= 2 for item in finished)
            assert_storage_clean(settings, finished)
            never_stuck_processing(http)
            assert errors == []
            wait_until(lambda: not ffmpeg_pids(str(settings.storage.path)), 10, "no ffmpeg left running")
    finally:
        done.set()
        for worker in workers:
            worker.stop(timeout_s=10)
        api.stop()


# -- Redis ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_wiped_with_accepted_uploads_all_end_ready(fault_clips, http, settings, start_worker, reconciler,
                                                         tmp_path):
    worker = start_worker()
    ids = [upload(http, fault_clips["short"]).json()["id"] for _ in range(4)]
    wait_until(lambda: any(video(http, i)["status"] == "processing" for i in ids), 60, "one video processing")
    # Redis loses everything (a restart without persistence): queue, registries, presence, cache.
    redis.Redis.from_url(settings.redis_url).flushall()
    finished = [wait_for(http, i, timeout_s=90) for i in ids]
    for item in finished:
        assert item["status"] == "ready", item
        assert_renditions_valid(http, item, fault_clips["short"], tmp_path)
    assert_storage_clean(settings, finished)
    assert worker.proc.poll() is None, "the worker did not survive the wipe"
    assert reconciler == []


@pytest.mark.slow
def test_redis_briefly_unreachable(fault_clips, settings, tmp_path):
    """Redis away: reads still work, an upload is accepted and queued once Redis is back (the catalog
    row is written; app._enqueue_or_defer), writes that need Redis answer 503 JSON; the worker
    reconnects and the video ends ready."""
    private = LocalRedis(tmp_path / "redis", persistent=False).start()
    settings = replace(settings, redis_url=private.url)
    settings.home.mkdir(parents=True, exist_ok=True)
    farm = Farm(settings)
    api = ApiServer(farm).start()
    worker = WorkerProcess(settings)
    try:
        with api.client() as http, reconciling(farm):
            first = upload(http, fault_clips["short"]).json()["id"]
            assert wait_for(http, first, timeout_s=60)["status"] == "ready"

            private.proc.kill()
            private.proc.wait()
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("error")
            assert http.get(f"/v1/videos/{first}").json()["status"] == "ready"
            accepted = upload(http, fault_clips["short"])
            assert accepted.status_code == 201, accepted.text
            deferred = accepted.json()["id"]
            assert accepted.json()["status"] == "queued"
            refused = http.delete(f"/v1/videos/{deferred}")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "redis_unavailable"
            assert refused.headers["retry-after"]
            farm_view = http.get("/v1/farm")
            assert farm_view.status_code == 503 and farm_view.json()["error"]["code"] == "redis_unavailable"
            time.sleep(3)  # an outage of a few seconds, longer than the clients' own retries

            LocalRedis(tmp_path / "redis", port=private.port, persistent=False).start()
            assert wait_for(http, deferred, timeout_s=90)["status"] == "ready"
            assert worker.proc.poll() is None, "the worker exited instead of reconnecting"
            assert http.get("/readyz").status_code == 200
    finally:
        worker.stop(timeout_s=10)
        api.stop()
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=private.port).shutdown(nosave=True)


# -- database ---------------------------------------------------------------------------------------


@pytest.fixture
def pg_database() -> Iterator[str]:
    if not pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"vidfarm_fault_{uuid.uuid4().hex[:8]}"
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def pg_admin(sql: str) -> None:
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql)


@pytest.mark.slow
def test_database_unavailable_uploads_503_nothing_half_written_then_recovers(pg_database, fault_clips, settings):
    settings = replace(settings, database_url=PG_URL.rsplit("/", 1)[0] + f"/{pg_database}")
    settings.home.mkdir(parents=True, exist_ok=True)
    farm = Farm(settings)
    api = ApiServer(farm).start()
    worker = WorkerProcess(settings)
    try:
        with api.client() as http:
            before = upload(http, fault_clips["short"]).json()["id"]
            assert wait_for(http, before, timeout_s=60)["status"] == "ready"

            # The database goes away: no new connections, every open one cut.
            pg_admin(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS false')
            pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{pg_database}'")
            for _ in range(3):
                refused = upload(http, fault_clips["short"])
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "database_unavailable"
                assert refused.headers["retry-after"]
            listing = http.get("/v1/videos")
            assert listing.status_code == 503 and listing.json()["error"]["code"] == "database_unavailable"
            assert http.get("/readyz").json()["checks"]["database"].startswith("error")
            # Nothing half-written: only the one accepted video's folder, nothing incoming.
            assert [p.name for p in (settings.storage.path / "videos").iterdir()] == [before]
            assert list((settings.storage.path / "incoming").iterdir()) == []

            pg_admin(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS true')
            # Recovers on its own: same API process, same worker, no restart.
            after = upload(http, fault_clips["short"])
            assert after.status_code == 201, after.text
            assert wait_for(http, after.json()["id"], timeout_s=60)["status"] == "ready"
            assert len(http.get("/v1/videos").json()["items"]) == 2
            assert worker.proc.poll() is None
    finally:
        pg_admin(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS true')
        worker.stop(timeout_s=10)
        api.stop()


# -- storage ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs_storage(settings, size: str) -> Iterator[Callable[[str], None]]:
    """A real filesystem of limited size mounted as the storage dir (tmpfs: root can fill it, and
    can mount it read-only, which chmod cannot do to root). Yields `remount(options)`."""
    target = settings.storage.path
    target.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "vidfarm-test", str(target)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root/CAP_SYS_ADMIN")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def small_disk(settings) -> Iterator[Callable[[str], None]]:
    """1 MiB: room for a small upload, not for its renditions."""
    with tmpfs_storage(settings, "1m") as remount:
        yield remount


@pytest.fixture
def own_disk(settings) -> Iterator[Callable[[str], None]]:
    with tmpfs_storage(settings, "32m") as remount:
        yield remount


@pytest.mark.slow
def test_disk_full_during_transcode_fails_clearly_without_partial_files(small_disk, fault_clips, http, settings,
                                                                        start_worker):
    source_size = fault_clips["dense"].stat().st_size
    assert source_size < 700_000, source_size
    created = upload(http, fault_clips["dense"])
    assert created.status_code == 201, created.text
    worker = start_worker()
    failed = wait_for(http, created.json()["id"], timeout_s=90)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "storage_error", failed["error"]
    assert "space" in failed["error"]["message"].lower()
    assert failed["attempts"] == 1 and failed["renditions"] == []
    folder = settings.storage.path / "videos" / failed["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["source"], "partial outputs left behind"
    assert worker.proc.poll() is None
    # The upload side: a disk too full for the upload itself is a clear 503, and nothing is kept.
    refused = upload(http, fault_clips["long"])
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "storage_unavailable"
    assert list((settings.storage.path / "incoming").iterdir()) == []
    assert [p.name for p in (settings.storage.path / "videos").iterdir()] == [failed["id"]]


@pytest.mark.slow
def test_read_only_storage_fails_clearly(own_disk, fault_clips, http, settings, start_worker):
    created = upload(http, fault_clips["short"])
    assert created.status_code == 201, created.text
    own_disk("ro")
    try:
        worker = start_worker()
        failed = wait_for(http, created.json()["id"], timeout_s=60)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "storage_error", failed["error"]
        assert "read-only" in failed["error"]["message"].lower()
        assert failed["attempts"] == 1
        refused = upload(http, fault_clips["short"])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable"
        assert http.get("/readyz").json()["checks"]["storage"] != "ok"
    finally:
        own_disk("rw")
    folder = settings.storage.path / "videos" / failed["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["source"]
    # Storage back: the worker, still alive, takes the next video.
    assert worker.proc.poll() is None
    again = upload(http, fault_clips["short"])
    assert wait_for(http, again.json()["id"], timeout_s=60)["status"] == "ready"


# -- hung ffmpeg, poison, transient ------------------------------------------------------------------


@pytest.fixture
def short_timeouts(settings):
    # RQ job timeout = 3 s + 2 s per source second: 11 s for the 4 s clip.
    return replace(settings, job_timeout_base_s=3, job_timeout_factor=2.0)


@pytest.mark.slow
def test_hung_ffmpeg_is_killed_at_the_job_timeout(short_timeouts, fault_clips):
    settings = short_timeouts
    settings.home.mkdir(parents=True, exist_ok=True)
    farm = Farm(settings)
    api = ApiServer(farm).start()
    worker = None
    try:
        with api.client() as http:
            video_id = upload(http, fault_clips["short"]).json()["id"]
            # The source becomes a FIFO nobody writes to: ffmpeg blocks reading it, like a hung NFS read.
            source = settings.storage.path / "videos" / video_id / "source"
            source.unlink()
            os.mkfifo(source)
            worker = WorkerProcess(settings)
            wait_until(lambda: ffmpeg_pids(video_id), 30, "ffmpeg to start on the stalled input")
            started = time.monotonic()
            failed = wait_for(http, video_id, timeout_s=60)
            assert failed["status"] == "failed"
            assert failed["error"]["code"] == "timeout" and "time limit" in failed["error"]["message"]
            assert time.monotonic() - started < 11 + 10
            wait_until(lambda: not ffmpeg_pids(video_id), 10, "the hung ffmpeg to be killed")
            assert not list(source.parent.glob(".*.part"))
            assert worker.proc.poll() is None
            nxt = upload(http, fault_clips["short"]).json()["id"]
            assert wait_for(http, nxt, timeout_s=60)["status"] == "ready"
    finally:
        if worker is not None:
            worker.stop(timeout_s=10)
        api.stop()


@pytest.mark.slow
def test_poison_input_fails_once_and_is_not_retried(fault_clips, http, worker, reconciler):
    created = upload(http, fault_clips["poison"])
    assert created.status_code == 201, created.text  # the header probes as a fine 640x360 H.264 clip
    failed = wait_for(http, created.json()["id"], timeout_s=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "media_error"
    assert failed["error"]["message"].startswith("ffmpeg could not transcode the source")
    # Give the reconciler two heartbeat TTLs to (wrongly) pick it up again.
    time.sleep(2 * HEARTBEAT_TTL_S + 1)
    again = video(http, failed["id"])
    assert (again["status"], again["attempts"]) == ("failed", 1)
    assert http.get("/v1/farm").json()["queues"]["cpu"]["queued"] == 0
    assert worker.proc.poll() is None


@pytest.mark.slow
def test_transient_failure_is_retried(fault_clips, http, settings, worker, reconciler, tmp_path):
    """ffmpeg killed from outside (an operator, the OOM killer picking the child): not the input's
    fault, so the video runs again, on the same surviving worker."""
    video_id = upload(http, fault_clips["long"]).json()["id"]
    wait_until(lambda: video(http, video_id)["progress"] >= 5, 60, "the transcode to get going")
    # An encoder, not the moment between two chunks or while a chunk is scored (another binary).
    for pid in wait_until(lambda: ffmpeg_pids(video_id), 30, "an ffmpeg encoding the video"):
        os.kill(pid, signal.SIGKILL)
    ready = wait_for(http, video_id, timeout_s=120)
    assert ready["status"] == "ready", ready["error"]
    assert ready["attempts"] == 2
    assert worker.proc.poll() is None
    assert_renditions_valid(http, ready, fault_clips["long"], tmp_path)
    assert_storage_clean(settings, [ready])


# -- shutdown ---------------------------------------------------------------------------------------


def running_tasks(farm: Farm, video_id: str) -> list[str]:
    return [t.name for t in farm.catalog.tasks(video_id) if t.status == "running"]


@pytest.mark.slow
def test_sigterm_to_a_busy_worker_finishes_the_job_then_exits(fault_clips, http, farm, start_worker, tmp_path):
    """Draining finishes the job in progress (one chunk: at most VIDFARM_CHUNK_SECONDS of video, so a
    rollout waits minutes, not the length of a film); the rest of the video goes to other workers."""
    worker = start_worker()
    video_id = upload(http, fault_clips["long"]).json()["id"]
    wait_until(lambda: video(http, video_id)["progress"] >= 5, 60, "the transcode to get going")
    wait_until(lambda: ffmpeg_pids(video_id), 30, "an ffmpeg encoding the video")
    busy_with = running_tasks(farm, video_id)
    worker.proc.send_signal(signal.SIGTERM)
    # Draining shows until the job ends; a first chunk (one 6 s segment) may end and the worker exit first.
    wait_until(lambda: worker.proc.poll() is not None
               or [w["state"] for w in http.get("/v1/farm").json()["workers"]] == ["draining"], 10,
               "the worker to show as draining")
    assert worker.proc.wait(timeout=90) == 0
    assert busy_with and all(farm.catalog.task(video_id, name).status == "done" for name in busy_with)
    assert worker.name not in [w["name"] for w in http.get("/v1/farm").json()["workers"]]
    start_worker()
    ready = wait_for(http, video_id, timeout_s=90)
    assert ready["status"] == "ready" and ready["attempts"] == 1  # nothing was interrupted or run twice
    assert_renditions_valid(http, ready, fault_clips["long"], tmp_path)
    never_stuck_processing(http)
    assert shutil.which("ffmpeg") and not ffmpeg_pids(video_id)


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == current]
        found += children
        frontier += children
    return found


@pytest.mark.slow
def test_sigterm_to_vidfarm_up_lets_the_busy_worker_finish(fault_clips, tmp_path):
    """The whole farm stopped with SIGTERM mid-transcode: the job in progress finishes, `up` exits 0
    and none of its processes (API, worker, ffmpeg, redis-server) outlives it."""
    home = tmp_path / "farm"
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIDFARM_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"VIDFARM_HOME": str(home), "VIDFARM_API_KEYS": API_KEY})
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vidfarm", "up", "--port", str(port), "--min-workers", "1",
                             "--max-workers", "1"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
            return answers(url + "/readyz", timeout_s=2)

        wait_until(ready, 60, "vidfarm up to be ready")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
            video_id = upload(http, fault_clips["long"]).json()["id"]
            wait_until(lambda: video(http, video_id)["progress"] >= 5, 60, "the transcode to get going")
        family = descendants(proc.pid)
        assert ffmpeg_pids(video_id)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "up.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    leftovers = [pid for pid in family if not process_gone(pid)]
    assert leftovers == [], leftovers
    catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
    assert catalog.get(video_id, cached=False)["attempts"] == 1
    # Every task that started finished: nothing was killed. What was still queued waits for the
    # next `vidfarm up` (tests/test_up_crash.py restarts a farm and sees such videos end ready).
    started = [t for t in catalog.tasks(video_id) if t.attempts]
    assert started and all(t.status == "done" for t in started), started
