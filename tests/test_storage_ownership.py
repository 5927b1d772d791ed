"""Media is never deleted on the catalog's word alone (issue 17, section 1), on both backends.

Farm A transcodes into a storage; farm B starts with a fresh home (an empty SQLite catalog, as a
mistyped DATABASE_URL or a new VIDFARM_HOME gives) on the same storage: B refuses to start, and B's
reconciler, wherever it is pointed, removes nothing of A's. Only a `receiving` row idle past its
timeout has its media removed by the farm; what no row names is reported, never deleted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from tests.conftest import BACKENDS, ROOT, FakeClock, settings_env, upload, wait_for, wait_until
from vidfarm import ownership, presence
from vidfarm.catalog import utcnow
from vidfarm.cli import main
from vidfarm.farm import Farm
from vidfarm.localredis import free_port
from vidfarm.reconciler import Reconciler
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus
from vidfarm.storage import StorageLocation, new_video_id

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
FAR_FUTURE_S = 10 * 365 * 24 * 3600.0  # past every grace period the farm has


def fresh_home(settings: Settings, tmp_path, name: str = "b") -> Settings:
    """Another farm on the same storage: its own home and an empty SQLite catalog."""
    home = tmp_path / f"home-{name}"
    home.mkdir()
    return replace(settings, home=home, database_url=f"sqlite:///{home / 'catalog.db'}")


def elsewhere(settings: Settings, tmp_path) -> Settings:
    """The same bucket under a second prefix, or a second directory."""
    if settings.storage.scheme == "s3":
        return replace(settings, storage=replace(settings.storage, prefix="farm-b/"))
    return replace(settings, storage=StorageLocation.directory(tmp_path / "storage-b"))


def every_key(farm: Farm, video_ids: list[str]) -> dict[str, list[str]]:
    return {video_id: farm.storage.keys(video_id) for video_id in video_ids}


def run_every_sweep(farm: Farm) -> None:
    """The reconciler's passes with its clock, and every cutoff, far past every grace period."""
    clock = FakeClock()
    reconciler = Reconciler(farm, clock=clock, wall=lambda: time.time() + FAR_FUTURE_S)
    for _ in range(3):
        reconciler.step()
        clock.now += FAR_FUTURE_S


def cli(settings: Settings, *args: str, stdin: str | None = None):
    return CliRunner().invoke(main, list(args), env=settings_env(settings), input=stdin)


@pytest.fixture
def farm_a(farm: Farm, http: httpx.Client, worker, clips) -> tuple[Farm, list[str]]:
    """Farm A with two ready videos in its storage."""
    ids = [upload(http, clips["small"]).json()["id"] for _ in range(2)]
    for video_id in ids:
        assert wait_for(http, video_id)["status"] == VideoStatus.READY
    # The worker removes the chunks' work files just after `ready`: let A's own storage settle.
    wait_until(lambda: not any("/work/" in key for keys in every_key(farm, ids).values() for key in keys),
               30, "the work files removed")
    return farm, ids


def test_a_farm_with_a_fresh_catalog_refuses_another_catalogs_storage(farm_a, settings, tmp_path):
    farm, ids = farm_a
    kept = every_key(farm, ids)
    assert all(kept.values())
    mine = farm.catalog.catalog_id()
    assert ownership.owner(farm.storage) == mine  # written on first use

    b = fresh_home(settings, tmp_path)
    with pytest.raises(ownership.ForeignStorage) as refused:
        Farm(b).storage  # noqa: B018
    other = Farm(b).catalog.catalog_id()
    message = str(refused.value)
    assert f"belongs to another catalog (id {mine}); this farm's catalog is {other}" in message
    assert Farm(b).unclaimed_storage().location() in message and "vidfarm storage adopt" in message
    # The processes say it in one line and stop: the API, a worker, the whole farm, the CLI.
    for command in (["api", "--port", str(free_port())], ["worker", "--encoder", "x264"],
                    ["up", "--port", str(free_port())]):
        ran = subprocess.run([sys.executable, "-m", "vidfarm", *command], cwd=ROOT, env=settings_env(b),
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 1, ran.stderr
        assert f"Error: storage {farm.storage.location()} belongs to another catalog (id {mine})" in ran.stderr
        assert "Traceback" not in ran.stderr
    orphans = cli(b, "storage", "orphans")
    assert orphans.exit_code == 1 and "belongs to another catalog" in orphans.output
    assert every_key(farm, ids) == kept


def test_farm_b_elsewhere_or_adopting_on_purpose_never_removes_farm_a_media(farm_a, settings, tmp_path):
    farm, ids = farm_a
    kept = every_key(farm, ids)
    # B pointed elsewhere (a second prefix of the bucket, a second directory): it runs, touches nothing.
    b_elsewhere = Farm(elsewhere(fresh_home(settings, tmp_path), tmp_path))
    run_every_sweep(b_elsewhere)
    assert every_key(farm, ids) == kept

    # B adopts A's storage deliberately: A's videos are orphans to B, listed and kept.
    b = fresh_home(settings, tmp_path, "b2")
    adopted = cli(b, "storage", "adopt", stdin="y\n")
    assert adopted.exit_code == 0, adopted.output
    assert f"now belongs to catalog {Farm(b).catalog.catalog_id()} (was {farm.catalog.catalog_id()})" in adopted.output
    farm_b = Farm(b)
    run_every_sweep(farm_b)
    assert every_key(farm, ids) == kept
    assert REGISTRY.get_sample_value("vidfarm_storage_orphans") == len(ids)
    listed = cli(b, "storage", "orphans")
    assert listed.exit_code == 0 and listed.stdout.split() == sorted(ids)
    # ...and A, whose storage was taken on purpose, now refuses to start in turn.
    with pytest.raises(ownership.ForeignStorage):
        Farm(settings).storage  # noqa: B018


def test_unmarked_storage_holding_unknown_videos_is_not_claimed(farm_a, settings, tmp_path):
    """Storage written before markers existed: a catalog that knows none of its videos refuses it."""
    farm, ids = farm_a
    marker_gone = farm.storage
    if hasattr(marker_gone, "root"):
        (marker_gone.root / ".vidfarm-catalog").unlink()
    else:
        marker_gone.delete(".vidfarm-catalog")
    with pytest.raises(ownership.ForeignStorage, match="has no catalog marker and holds videos"):
        Farm(fresh_home(settings, tmp_path)).storage  # noqa: B018
    assert ownership.claim(Farm(settings).unclaimed_storage(), farm.catalog) == farm.catalog.catalog_id()


def store_upload(farm: Farm, video_id: str) -> None:
    """What a POST of an older vidfarm left in storage once its body was stored, before its row."""
    writer = farm.storage.begin_upload(video_id)
    writer.write(b"x" * 1000)
    writer.complete()
    farm.storage.promote_upload(video_id)


def test_an_id_the_catalog_does_not_know_is_listed_and_never_deleted(farm, settings):
    unknown = new_video_id()
    store_upload(farm, unknown)
    partial = new_video_id()
    farm.storage.begin_upload(partial).write(b"x" * 100)  # an unfinished upload, also without a row
    kept = farm.storage.keys(unknown)
    run_every_sweep(farm)
    assert farm.storage.keys(unknown) == kept
    assert set(farm.storage.partial_uploads()) == {partial}
    listed = cli(settings, "storage", "orphans")
    assert listed.exit_code == 0 and listed.stdout.split() == sorted([unknown, partial])
    assert REGISTRY.get_sample_value("vidfarm_storage_orphans") == 2


def receiving_row(farm: Farm, idle_s: float) -> str:
    """A POST's row whose body started arriving `idle_s` ago, and its partial upload."""
    from vidfarm.lifecycle import receive

    video_id = receive(farm, "t")
    farm.storage.begin_upload(video_id).write(b"x" * 100)
    farm.catalog.update(video_id, updated_at=utcnow() - timedelta(seconds=idle_s))
    if hasattr(farm.storage, "incoming_path"):  # S3 (moto) dates a multipart upload without parts long ago
        then = time.time() - idle_s
        os.utime(farm.storage.incoming_path(video_id), (then, then))
    return video_id


def test_a_receiving_row_idle_past_the_timeout_is_swept_with_its_media(farm):
    timeout_s = presence.abandoned_after_s(farm.settings.upload_idle_timeout_s)
    dead, live = receiving_row(farm, 2 * timeout_s), receiving_row(farm, 2 * timeout_s)
    recent = receiving_row(farm, 0)
    presence.upload_beat(farm.redis, live, farm.settings.upload_idle_timeout_s)  # its API still receives it
    assert Reconciler(farm).sweep_receiving(time.time() - timeout_s) == 1
    assert farm.catalog.get(dead, cached=False) is None
    assert dead not in set(farm.storage.partial_uploads()) and farm.storage.last_written(dead) is None
    for kept in (live, recent):
        assert farm.catalog.get(kept, cached=False)["status"] == VideoStatus.RECEIVING
        assert kept in set(farm.storage.partial_uploads())


def slow_body(head: bytes, resume: threading.Event) -> Iterator[bytes]:
    yield head[:1000]
    resume.wait(30)
    yield head[1000:]


def test_a_live_slow_upload_is_recorded_first_and_not_swept(farm, http, clips):
    head = clips["small"].read_bytes()
    resume = threading.Event()
    answers: list[httpx.Response] = []
    sending = threading.Thread(target=lambda: answers.append(http.post(
        "/v1/videos", params={"filename": "slow.mp4"}, content=slow_body(head, resume),
        headers={"Content-Type": "video/mp4", "Content-Length": str(len(head))})))
    sending.start()
    try:
        receiving = wait_until(lambda: farm.catalog.active((VideoStatus.RECEIVING,)), 10, "the row")
        video_id = receiving[0]["id"]
        wait_until(lambda: video_id in set(farm.storage.partial_uploads()), 10, "its first bytes stored")
        # Every cutoff past everything: only the API's sign of life spares it.
        assert Reconciler(farm).sweep_receiving(time.time() + FAR_FUTURE_S) == 0
        assert http.get("/v1/videos").json()["items"] == []  # not a video yet: nobody holds its id
        assert [v["id"] for v in http.get("/v1/videos", params={"status": "receiving"}).json()["items"]] == [video_id]
    finally:
        resume.set()
        sending.join()
    assert answers[0].status_code == 201, answers[0].text
    assert answers[0].json()["id"] == video_id and answers[0].json()["status"] == VideoStatus.QUEUED


def test_a_refused_upload_leaves_neither_row_nor_media(farm, http):
    answer = http.post("/v1/videos", params={"filename": "x.mp4"}, content=b"not a video" * 100,
                       headers={"Content-Type": "video/mp4"})
    assert answer.status_code == 422, answer.text
    assert farm.catalog.active((VideoStatus.RECEIVING,)) == []
    assert list(farm.storage.stored_videos()) == [] and list(farm.storage.partial_uploads()) == []
