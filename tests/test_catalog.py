"""The catalog on SQLite and on the real PostgreSQL: schema, compare-and-set, cache rule, paging."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
import redis
from sqlalchemy import create_engine, text, update
from sqlalchemy.exc import SQLAlchemyError

from tests.conftest import PG_URL
from vidfarm.catalog import Catalog, Video, VideoRow, utcnow
from vidfarm.jobs import plan_tasks
from vidfarm.outbox import EVENT_TYPES, Delivery
from vidfarm.redisconn import connect
from vidfarm.states import VideoStatus
from vidfarm.storage import new_video_id
from vidfarm.webhooks import Webhooks


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A throwaway database on the machine's PostgreSQL, so schema tests start empty."""
    name = f"vidfarm_test_{uuid.uuid4().hex[:8]}"
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def cache(redis_server) -> redis.Redis:
    conn = redis.Redis.from_url(redis_server.url, decode_responses=True)
    conn.flushall()
    return conn


@pytest.fixture
def catalog(database_url, cache) -> Catalog:
    catalog = Catalog(database_url, cache=cache)
    catalog.migrate()
    return catalog


def new_video(catalog: Catalog, tenant: str = "t1", **overrides) -> dict:
    fields = dict(
        id=new_video_id(), tenant=tenant, status="queued", progress=0.0, attempts=0, filename="a.mp4",
        size_bytes=10, duration_s=12.5, width=1920, height=1080, fps=30.0, video_codec="h264",
        audio_codec="aac", queue="cpu", job_id="j1", requested=None, has_poster=0,
    )
    fields.update(overrides)
    return catalog.create(**fields)


def test_create_and_read_back(catalog):
    video = new_video(catalog)
    again = catalog.get(video["id"])
    assert again["status"] == "queued" and again["duration_s"] == 12.5 and again["renditions"] == []
    assert again["created_at"].endswith("+00:00")


def test_rows_have_the_typed_shape_from_the_database_and_the_cache(catalog, cache):
    video = new_video(catalog, status=VideoStatus.PROCESSING)
    assert set(VideoRow.__annotations__) == {c.name for c in Video.__table__.columns}
    assert cache.get(Catalog.cache_key(video["id"])) is None
    stored = catalog.get(video["id"])
    assert '"status": "processing"' in cache.get(Catalog.cache_key(video["id"]))  # the JSON is unchanged
    cached = catalog.get(video["id"])
    assert stored == cached == video
    assert type(cached["status"]) is VideoStatus and cached["status"] == "processing"


def test_compare_and_set_applies_only_when_expectations_hold(catalog):
    video = new_video(catalog)
    assert catalog.update(video["id"], expect={"job_id": "j1", "status": ("queued", "processing")},
                          status="processing")
    assert not catalog.update(video["id"], expect={"job_id": "stale"}, status="ready")
    assert catalog.get(video["id"], cached=False)["status"] == "processing"


def test_a_write_drops_the_cached_copy(catalog, cache):
    video = new_video(catalog)
    catalog.get(video["id"])  # fills the cache
    assert cache.exists(Catalog.cache_key(video["id"]))
    catalog.update(video["id"], progress=50.0)
    assert not cache.exists(Catalog.cache_key(video["id"]))
    assert catalog.get(video["id"])["progress"] == 50.0


def test_progress_counts_every_chunk_and_only_the_attempt_that_holds_its_task(catalog, cache):
    tasks = plan_tasks("v", 13.0, 30.0, True, 6.0)  # chunks 0-1, audio, finalize
    video = new_video(catalog, status=VideoStatus.PROCESSING, tasks=tasks)
    first, second = (t for t in tasks if t.kind == "chunk")
    for task in (first, second):
        assert catalog.update_task(video["id"], task.name, status="running")
    catalog.get(video["id"])  # fills the cache
    assert catalog.record_progress(video["id"], first.name, first.job_id, 60, lambda n: n / 3) == 60
    assert catalog.record_progress(video["id"], second.name, second.job_id, 30, lambda n: n / 3) == 90
    assert not cache.exists(Catalog.cache_key(video["id"]))
    assert catalog.get(video["id"])["progress"] == 30.0
    # A stale attempt writes nothing of its own; the video still shows what the chunks have done.
    assert catalog.record_progress(video["id"], first.name, "stale-job", 300, lambda n: n / 3) == 90
    assert catalog.task(video["id"], first.name).done_frames == 60
    # Nor does a video that is no longer processing move.
    assert catalog.update(video["id"], status=VideoStatus.FAILED)
    catalog.record_progress(video["id"], second.name, second.job_id, 45, lambda n: n / 3)
    assert catalog.get(video["id"])["progress"] == 30.0


def test_reads_survive_a_dead_cache(database_url):
    dead = connect("redis://127.0.0.1:1/0", decode=True)  # nothing listens there
    catalog = Catalog(database_url, cache=dead)
    catalog.migrate()
    video = new_video(catalog)
    assert catalog.update(video["id"], status="processing")
    assert catalog.get(video["id"])["status"] == "processing"


def test_list_is_newest_first_with_cursor_pages_and_tenant_scope(catalog):
    tenant = uuid.uuid4().hex[:8]
    ids = [new_video(catalog, tenant, created_at=utcnow())["id"] for _ in range(5)]
    new_video(catalog, tenant="someone-else")
    first, cursor = catalog.list(tenant=tenant, limit=2)
    second, cursor2 = catalog.list(tenant=tenant, limit=2, cursor=cursor)
    third, cursor3 = catalog.list(tenant=tenant, limit=2, cursor=cursor2)
    seen = [v["id"] for v in first + second + third]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 5 and cursor3 is None
    stamps = [v["created_at"] for v in first + second + third]
    assert stamps == sorted(stamps, reverse=True)
    with pytest.raises(ValueError):
        catalog.list(tenant="t1", cursor="not-a-cursor")


def planned_video(catalog: Catalog, duration_s: float, **overrides) -> dict:
    """A video with its task graph, 30 fps in 60 s chunks, as the API plans it."""
    video_id = new_video_id()
    tasks = plan_tasks(video_id, duration_s, 30.0, True, 60.0)
    return new_video(catalog, id=video_id, duration_s=duration_s, total_frames=round(duration_s * 30), tasks=tasks,
                     **overrides)


def test_work_estimate_counts_seconds_of_queued_chunks_and_what_running_chunks_have_left(catalog):
    queue = f"q-{uuid.uuid4().hex[:6]}"
    planned_video(catalog, 100.0, queue=queue)  # chunks of 6, 48 and 46 s, all queued
    long = planned_video(catalog, 300.0, status="processing", queue=queue)  # chunks of 6, 60 x 4 and 54 s
    # Two chunks done, one half way, three still queued; audio and finalize are not picture work.
    for name, fields in {"chunk-00000": {"status": "done", "done_frames": 1800},
                         "chunk-00001": {"status": "done", "done_frames": 1800},
                         "chunk-00002": {"status": "running", "done_frames": 900},
                         "audio": {"status": "running"}}.items():
        assert catalog.update_task(long["id"], name, **fields)
    planned_video(catalog, 999.0, status="ready", queue=queue)
    planned_video(catalog, 999.0, queue="elsewhere")
    assert catalog.work_estimate([queue]) == pytest.approx((100.0 + 300.0 - 6.0 - 2 * 60.0, 30.0))


def test_migration_adds_missing_columns(database_url, cache):
    engine = create_engine(database_url)
    Catalog(database_url).migrate()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE videos DROP COLUMN enqueued_at"))
    catalog = Catalog(database_url, cache=cache)
    catalog.migrate()  # a newer vidfarm starting on an older schema
    video = new_video(catalog)
    assert "enqueued_at" in catalog.get(video["id"])


# -- the webhook outbox ---------------------------------------------------------------------------


def events_of(webhooks: Webhooks, webhook: dict) -> list[str]:
    return sorted(d["event"] for d in webhooks.deliveries(webhook["id"]))


def test_a_move_into_a_terminal_status_writes_the_tenants_webhook_events(catalog):
    webhooks, tenant = Webhooks(catalog.engine), uuid.uuid4().hex[:8]
    everything = webhooks.create(tenant, "https://receiver.example/a", EVENT_TYPES)
    ready_only = webhooks.create(tenant, "https://receiver.example/b", ["video.ready"])
    elsewhere = webhooks.create("someone-else", "https://receiver.example/c", EVENT_TYPES)
    video = new_video(catalog, tenant)
    assert not catalog.update(video["id"], expect={"status": "processing"}, status="ready")  # lost CAS: no event
    assert catalog.update(video["id"], status="processing", progress=50.0)  # not terminal: no event
    assert events_of(webhooks, everything) == []
    assert catalog.update(video["id"], expect={"status": ("queued", "processing")}, status="ready", progress=100.0)
    for _ in range(2):  # DELETE twice: the second changes the row again but is no second event
        assert catalog.update(video["id"], status="canceled", renditions=[])
    assert events_of(webhooks, everything) == ["video.deleted", "video.ready"]
    assert events_of(webhooks, ready_only) == ["video.ready"]
    assert events_of(webhooks, elsewhere) == []
    ready = next(d for d in webhooks.deliveries(everything["id"]) if d["event"] == "video.ready")
    assert ready["status"] == "pending" and ready["video_id"] == video["id"] and ready["attempts"] == []


def test_playable_is_set_once_while_processing_with_its_webhook_event(catalog):
    webhooks, tenant = Webhooks(catalog.engine), uuid.uuid4().hex[:8]
    everything = webhooks.create(tenant, "https://receiver.example/a", EVENT_TYPES)
    video = new_video(catalog, tenant)
    assert not catalog.mark_playable(video["id"])  # queued: nothing plays yet
    assert catalog.update(video["id"], status="processing")
    assert catalog.mark_playable(video["id"])
    assert not catalog.mark_playable(video["id"])  # once
    row = catalog.get(video["id"], cached=False)
    assert row["status"] == "processing" and row["playable_at"] is not None
    assert events_of(webhooks, everything) == ["video.playable"]
    playable = webhooks.deliveries(everything["id"])[0]
    assert playable["video_id"] == video["id"]


def test_no_status_change_commits_without_its_event(catalog):
    webhooks, tenant = Webhooks(catalog.engine), uuid.uuid4().hex[:8]
    webhooks.create(tenant, "https://receiver.example/a", EVENT_TYPES)
    video = new_video(catalog, tenant)
    with catalog.engine.begin() as conn:
        conn.execute(text("DROP TABLE webhook_deliveries"))  # the outbox write will fail
    with pytest.raises(SQLAlchemyError):
        catalog.update(video["id"], status="failed", error_code="media_error")
    assert catalog.get(video["id"], cached=False)["status"] == "queued"  # rolled back with it
    catalog.migrate()  # the table back, for the tests after this one


def test_deliveries_are_claimed_under_a_lease_and_a_dead_owner_loses_it(catalog):
    webhooks, tenant = Webhooks(catalog.engine), uuid.uuid4().hex[:8]
    webhook = webhooks.create(tenant, "https://receiver.example/a", EVENT_TYPES)
    assert catalog.update(new_video(catalog, tenant)["id"], status="failed")
    first = webhooks.claim("a", lease_s=30)
    assert first["url"] == webhook["url"] and first["secret"] == webhook["secret"]
    assert webhooks.claim("b", lease_s=30) is None  # leased
    with catalog.engine.begin() as conn:  # "a" died: its lease runs out
        conn.execute(update(Delivery).values(lease_until=utcnow() - timedelta(seconds=1)))
    second = webhooks.claim("b", lease_s=30)
    assert second["id"] == first["id"]
    attempt = {"at": utcnow().isoformat(), "status_code": 200, "error": None, "duration_ms": 5}
    assert not webhooks.record(first, attempt, "delivered")  # a late result of the lost lease does not count
    assert webhooks.record(second, attempt, "delivered")
    assert webhooks.claim("c", lease_s=30) is None
    [delivery] = webhooks.deliveries(webhook["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == [attempt]


def test_racing_deliverers_never_claim_the_same_delivery(catalog):
    webhooks, tenant = Webhooks(catalog.engine), uuid.uuid4().hex[:8]
    for n in range(6):
        webhooks.create(tenant, f"https://receiver.example/{n}", EVENT_TYPES)
    assert catalog.update(new_video(catalog, tenant)["id"], status="ready")
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda n: webhooks.claim(f"owner-{n}", lease_s=30), range(8)))
    while (late := webhooks.claim("late", lease_s=30)) is not None:  # any a racing claim passed over
        claims.append(late)
    ids = [c["id"] for c in claims if c is not None]
    assert len(ids) == 6 and len(set(ids)) == 6


def test_a_tenant_gets_no_more_than_its_share_of_deliveries_in_flight_even_racing(catalog):
    """A tenant whose receiver is slow must not take every deliverer: with a share of two, racing
    claims lease two of its deliveries and go on to another tenant's, and a recorded attempt frees
    a place for the next."""
    webhooks = Webhooks(catalog.engine)
    with catalog.engine.begin() as conn:  # what earlier tests left pending is not this test's
        conn.execute(update(Delivery).values(status="delivered"))
    tenant_of = {}
    for tenant, hooks in (("busy-" + uuid.uuid4().hex[:8], 6), ("quiet-" + uuid.uuid4().hex[:8], 3)):
        for n in range(hooks):
            tenant_of[webhooks.create(tenant, f"https://receiver.example/{n}", EVENT_TYPES)["id"]] = tenant
        assert catalog.update(new_video(catalog, tenant)["id"], status="ready")

    def claim(owner: str) -> dict | None:
        return webhooks.claim(owner, lease_s=30, tenant_in_flight=2)

    with ThreadPoolExecutor(8) as pool:
        claims = [c for c in pool.map(claim, [f"owner-{n}" for n in range(8)]) if c is not None]
    while (late := claim("late")) is not None:  # any a racing claim passed over
        claims.append(late)
    in_flight = sorted(tenant_of[c["webhook_id"]].split("-")[0] for c in claims)
    assert in_flight == ["busy", "busy", "quiet", "quiet"]
    assert len({c["id"] for c in claims}) == 4

    done = next(c for c in claims if tenant_of[c["webhook_id"]].startswith("busy"))
    attempt = {"at": utcnow().isoformat(), "status_code": 200, "error": None, "duration_ms": 5}
    assert webhooks.record(done, attempt, "delivered")
    following = claim("next")
    assert following is not None and tenant_of[following["webhook_id"]] == tenant_of[done["webhook_id"]]
    assert claim("next") is None

def test_the_catalog_id_is_made_once_and_the_same_for_every_process(database_url, cache):
    catalogs = [Catalog(database_url, cache=cache) for _ in range(4)]
    catalogs[0].migrate()
    with ThreadPoolExecutor(4) as pool:  # processes starting at once race to make it
        ids = set(pool.map(Catalog.catalog_id, catalogs))
    assert len(ids) == 1 and len(ids.pop()) == 32
    assert Catalog(database_url).catalog_id() == catalogs[0].catalog_id()


def test_uploads_still_receiving_are_listed_only_when_asked_for(catalog):
    tenant = uuid.uuid4().hex  # the PostgreSQL database is shared by this module's tests
    video = new_video(catalog, tenant)
    receiving = new_video(catalog, tenant, status=VideoStatus.RECEIVING)
    assert [v["id"] for v in catalog.list(tenant=tenant)[0]] == [video["id"]]
    assert [v["id"] for v in catalog.list(tenant=tenant, status=VideoStatus.RECEIVING)[0]] == [receiving["id"]]
    assert catalog.forget(video["id"], was=VideoStatus.RECEIVING) is False  # not receiving: kept
    assert catalog.forget(receiving["id"], was=VideoStatus.RECEIVING) is True
    assert catalog.get(receiving["id"]) is None and catalog.get(video["id"]) is not None
