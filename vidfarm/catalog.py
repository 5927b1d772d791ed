"""The catalog: the database row of every accepted video is the truth.

Redis only caches `get` (read-through). Every write follows one rule: delete the cache key, then
write the database, then delete the key again (a reader that raced the write cannot leave a stale
copy behind for longer than that). The cache is never updated in place.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import redis
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    case,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vidfarm import outbox
from vidfarm.states import ACTIVE, TaskKind, TaskStatus, VideoStatus

log = logging.getLogger(__name__)

CACHE_TTL_S = 30
# Ids per `IN (...)` of a query over many videos: well inside every database's parameter limit.
IN_BATCH = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    filename: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    duration_s: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    fps: Mapped[float] = mapped_column(Float)
    video_codec: Mapped[str] = mapped_column(String(64))
    audio_codec: Mapped[str | None] = mapped_column(String(64), nullable=True)
    interlaced: Mapped[int] = mapped_column(Integer, default=0)
    hdr_transfer: Mapped[str | None] = mapped_column(String(32), nullable=True)
    queue: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    requested: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    renditions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    has_poster: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    start_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    file_start_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)  # planned; exact once ready
    has_stream: Mapped[int] = mapped_column(Integer, default=0)  # HLS + DASH package published
    # When the first segment of every rung and of the audio existed (it plays while processing).
    playable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Bytes of a resumable upload received so far, as of its last PATCH (the partial file is the truth).
    received_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Who may write to a resumable upload now (one request, on any API replica), and until when.
    lease_holder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Meta(Base):
    """Facts about the catalog itself, one row each: its `catalog_id`, which the storage it writes to
    carries in a marker (`vidfarm.ownership`), so two catalogs never manage one storage."""

    __tablename__ = "vidfarm_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


CATALOG_ID = "catalog_id"


class TaskTable(Base):
    """One RQ job of a video's graph (`Task` is a row of it as the catalog hands it out)."""

    __tablename__ = "tasks"

    video_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # chunk-00003, audio, finalize
    kind: Mapped[str] = mapped_column(String(16))
    start_frame: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: to the end of the source
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)  # seconds of source it encodes
    status: Mapped[str] = mapped_column(String(16), index=True)
    job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    done_frames: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Task:
    """A task of a video's graph, as planned (`vidfarm.jobs.plan_tasks`) or read back from the catalog.
    A value: a change is a compare-and-set in the catalog (`vidfarm.lifecycle`), then a fresh read."""

    name: str  # chunk-00003, audio, finalize
    kind: TaskKind
    start_frame: int = 0
    frames: int | None = None  # None: to the end of the source
    duration_s: float = 0.0  # seconds of source it encodes
    status: TaskStatus = TaskStatus.QUEUED
    job_id: str | None = None  # the current attempt's; a stale attempt sees it is not current
    worker: str | None = None
    attempts: int = 0
    done_frames: int = 0
    result: dict[str, Any] | None = None  # once done: {"attempt": job id whose files count, ...}
    video_id: str = ""
    updated_at: str = ""  # ISO 8601, UTC

    @classmethod
    def from_row(cls, raw: Mapping[str, Any]) -> Task:
        row = _plain(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        return cls(**{**values, "kind": TaskKind(row["kind"]), "status": TaskStatus(row["status"])})


class RenditionRow(TypedDict):
    name: str
    width: int
    height: int
    bitrate_kbps: int
    size_bytes: int


class VideoRow(TypedDict):
    """A `videos` row as `Catalog` hands it out (and caches it as JSON): the columns of `Video`, with
    times as ISO 8601 text in UTC."""

    id: str
    tenant: str
    status: VideoStatus
    progress: float
    attempts: int
    error_code: str | None
    error_message: str | None
    filename: str
    size_bytes: int
    duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    audio_codec: str | None
    interlaced: int
    hdr_transfer: str | None
    queue: str
    job_id: str | None
    worker: str | None
    requested: list[str] | None
    renditions: list[RenditionRow]
    has_poster: int
    created_at: str
    updated_at: str
    enqueued_at: str | None
    start_s: float | None
    file_start_s: float | None
    total_frames: int | None
    has_stream: int
    playable_at: str | None
    received_bytes: int | None
    lease_holder: str | None
    lease_until: str | None


def _as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _task_rows(video_id: str, tasks: Sequence[Task], now: datetime) -> list[dict[str, Any]]:
    return [{**asdict(task), "video_id": video_id, "updated_at": now} for task in tasks]


def _plain(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values: times become ISO 8601 text in UTC."""
    return {k: (_as_utc(v).isoformat() if isinstance(v, datetime) else v) for k, v in raw.items()}


def _video_row(raw: Mapping[str, Any]) -> VideoRow:
    """A `videos` row from the database or the cache in its typed shape."""
    row = _plain(raw)
    row["status"] = VideoStatus(row["status"])
    return row  # type: ignore[return-value]


SQLITE_NO_LIMIT_S = 24 * 3600.0


@dataclass(frozen=True)
class SessionBounds:
    """Time limits on a process's database sessions, so that no session can hold up the others for
    ever (a worker frozen inside a transaction keeps its row locks until its session ends). Zero is
    no limit. On SQLite, `lock_timeout_s` is the busy timeout: how long a writer waits for the lock."""

    lock_timeout_s: float = 30.0
    statement_timeout_s: float = 0.0
    idle_in_transaction_s: float = 0.0

    def postgres_options(self) -> str:
        """libpq `options`: set at connect, on the server, for every session of the pool."""
        limits = {"lock_timeout": self.lock_timeout_s, "statement_timeout": self.statement_timeout_s,
                  "idle_in_transaction_session_timeout": self.idle_in_transaction_s}
        return " ".join(f"-c {name}={round(seconds * 1000)}" for name, seconds in limits.items())


def make_engine(url: str, bounds: SessionBounds = SessionBounds()) -> Engine:
    if url.startswith("sqlite"):
        busy_s = bounds.lock_timeout_s or SQLITE_NO_LIMIT_S  # SQLite's zero would mean not waiting at all
        busy_ms = round(busy_s * 1000)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_s})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes progress; the busy timeout absorbs
            # the short write locks several processes take, and bounds the wait on a stuck one.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"options": bounds.postgres_options()})


def encode_cursor(created_at: str, video_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}|{video_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not a cursor this API handed out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, video_id = raw.split("|", 1)
        return datetime.fromisoformat(created), video_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("invalid cursor") from exc


class Catalog:
    def __init__(self, database_url: str, cache: redis.Redis | None = None,
                 bounds: SessionBounds = SessionBounds()) -> None:
        self.engine = make_engine(database_url, bounds)
        self.cache = cache
        # Test hook: runs inside the progress transaction, with its row locks held (see worker.py).
        self.in_progress_transaction: Callable[[], None] | None = None

    # -- schema -----------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the schema, then add any column a newer vidfarm knows and the table lacks.

        One transaction, and on PostgreSQL under an advisory lock: on a cluster's first boot every app
        pod migrates at once, and racing CREATE TABLEs fail with duplicate keys (that pod would then
        crash-loop). The others wait for the lock, then find nothing to do.
        """
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Other pods wait for the migrating one however long it takes: no session bounds here.
                conn.execute(text("SET LOCAL lock_timeout = 0"))
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                # Any fixed bigint, the same in every vidfarm process ("vidfarm1").
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x76696466_61726D31})
            Base.metadata.create_all(conn)
            outbox.Base.metadata.create_all(conn)
            existing = {c["name"] for c in inspect(conn).get_columns("videos")}
            for column in Video.__table__.columns:
                if column.name in existing:
                    continue
                ddl = column.type.compile(dialect=self.engine.dialect)
                conn.execute(text(f'ALTER TABLE videos ADD COLUMN "{column.name}" {ddl}'))
                log.info("catalog: added column videos.%s", column.name)

    def catalog_id(self) -> str:
        """This catalog's random id, made on first use (two processes racing both read the winner's)."""
        if (found := self._meta(CATALOG_ID)) is not None:
            return found
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
            conn.execute(Meta.__table__.insert().values(name=CATALOG_ID, value=uuid.uuid4().hex))
        return self._meta(CATALOG_ID)  # type: ignore[return-value]

    def _meta(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Meta.value).where(Meta.name == name)).scalar()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # -- cache ------------------------------------------------------------------------------------

    @staticmethod
    def cache_key(video_id: str) -> str:
        return f"vidfarm:video:{video_id}"

    def _cache_get(self, video_id: str) -> VideoRow | None:
        if self.cache is None:
            return None
        try:
            raw = self.cache.get(self.cache_key(video_id))
        except redis.RedisError:
            return None  # the database still answers; the cache is an optimisation
        return _video_row(json.loads(raw)) if raw else None

    def _cache_put(self, video: VideoRow) -> None:
        if self.cache is None:
            return
        with contextlib.suppress(redis.RedisError):
            self.cache.set(self.cache_key(video["id"]), json.dumps(video), ex=CACHE_TTL_S)

    def _cache_drop(self, video_id: str) -> None:
        if self.cache is None:
            return
        try:
            self.cache.delete(self.cache_key(video_id))
        except redis.RedisError:
            # A stale entry can live at most CACHE_TTL_S; the write itself must still happen.
            log.warning("catalog: could not drop cache key for %s", video_id)

    # -- reads ------------------------------------------------------------------------------------

    def get(self, video_id: str, *, cached: bool = True) -> VideoRow | None:
        if cached and (hit := self._cache_get(video_id)) is not None:
            return hit
        rows = self._select_videos(select(*Video.__table__.columns).where(Video.id == video_id))
        if not rows:
            return None
        if cached:
            self._cache_put(rows[0])
        return rows[0]

    def _select_dicts(self, stmt: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_plain(r) for r in conn.execute(stmt).mappings().all()]

    def _select_videos(self, stmt: Any) -> list[VideoRow]:
        return [_video_row(r) for r in self._select_dicts(stmt)]

    def list(
        self, *, tenant: str | None, status: VideoStatus | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[VideoRow], str | None]:
        """Newest first; the cursor names the last item of the previous page. Uploads still `receiving`
        are left out unless asked for: their clients got no id yet, and most never become videos."""
        stmt = select(*Video.__table__.columns)
        if tenant is not None:
            stmt = stmt.where(Video.tenant == tenant)
        stmt = stmt.where(Video.status == status if status else Video.status != VideoStatus.RECEIVING)
        if cursor:
            created, last_id = decode_cursor(cursor)
            stmt = stmt.where(
                or_(Video.created_at < created, (Video.created_at == created) & (Video.id < last_id))
            )
        stmt = stmt.order_by(Video.created_at.desc(), Video.id.desc()).limit(limit + 1)
        rows = self._select_videos(stmt)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
        return rows, next_cursor

    def known(self, video_ids: Sequence[str]) -> set[str]:
        """Which of these ids (at most IN_BATCH) the catalog has a row for."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(Video.id).where(Video.id.in_(video_ids))).scalars())

    def owned(self, tenant: str, video_ids: Sequence[str]) -> set[str]:
        """Which of these ids are `tenant`'s videos, in one query per IN_BATCH ids."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(video_ids), IN_BATCH):
                batch = video_ids[start:start + IN_BATCH]
                stmt = select(Video.id).where(Video.tenant == tenant, Video.id.in_(batch))
                found.update(conn.execute(stmt).scalars())
        return found

    def count(self, tenant: str, status: VideoStatus, *, updated_since: datetime | None = None) -> int:
        """How many of a tenant's videos are in `status` (and were updated since then, if given)."""
        stmt = select(func.count()).select_from(Video).where(Video.tenant == tenant, Video.status == status)
        if updated_since is not None:
            stmt = stmt.where(Video.updated_at > updated_since)
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()

    def active(self, statuses: Sequence[VideoStatus] = ACTIVE) -> list[VideoRow]:
        return self._select_videos(select(*Video.__table__.columns).where(Video.status.in_(statuses)))

    def work_estimate(self, queues: Iterable[str]) -> tuple[float, float]:
        """Seconds of source video in chunks still queued, and still to encode in running chunks.
        Audio and finalize jobs are a small fraction of a chunk's work and are left out."""
        queues = list(queues)
        planned = func.coalesce(TaskTable.frames, Video.total_frames - TaskTable.start_frame, 1)
        fraction_left = 1.0 - 1.0 * TaskTable.done_frames / planned
        left = case((TaskTable.done_frames >= planned, 0.0), else_=TaskTable.duration_s * fraction_left)
        stmt = (
            select(
                func.coalesce(func.sum(TaskTable.duration_s).filter(TaskTable.status == TaskStatus.QUEUED), 0.0),
                func.coalesce(func.sum(left).filter(TaskTable.status == TaskStatus.RUNNING), 0.0),
            )
            .join(Video, Video.id == TaskTable.video_id)
            .where(Video.queue.in_(queues), Video.status.in_(ACTIVE), TaskTable.kind == TaskKind.CHUNK)
        )
        with self.engine.connect() as conn:
            queued, running = conn.execute(stmt).one()
        return float(queued), float(running)

    # -- writes -----------------------------------------------------------------------------------

    def create(self, *, tasks: Sequence[Task] = (), **fields: Any) -> VideoRow:
        """The video row and its task graph, in one transaction: a video never exists half planned."""
        now = utcnow()
        fields.setdefault("created_at", now)
        fields.setdefault("updated_at", now)
        fields.setdefault("renditions", [])
        self._cache_drop(fields["id"])
        with self.engine.begin() as conn:
            conn.execute(Video.__table__.insert().values(**fields))
            if tasks:
                conn.execute(TaskTable.__table__.insert(), _task_rows(fields["id"], tasks, now))
        return self.get(fields["id"], cached=False)  # type: ignore[return-value]

    def fill(self, video_id: str, *, was: VideoStatus, tasks: Sequence[Task] = (),
             **fields: Any) -> VideoRow | None:
        """`create` for a row that already exists in status `was` (a resumable upload whose last byte
        just arrived): row and task graph in one transaction, and only if the row is still `was`
        (terminated or expired meanwhile: None, nothing written)."""
        now = utcnow()
        fields.setdefault("updated_at", now)
        stmt = update(Video).where(Video.id == video_id, Video.status == was).values(**fields)
        self._cache_drop(video_id)
        with self.engine.begin() as conn:
            if not conn.execute(stmt).rowcount:
                return None
            if tasks:
                conn.execute(TaskTable.__table__.insert(), _task_rows(video_id, tasks, now))
        self._cache_drop(video_id)
        return self.get(video_id, cached=False)

    def forget(self, video_id: str, *, was: VideoStatus) -> bool:
        """Remove a row that is still `was` (an upload in `receiving` whose body was refused or
        abandoned: nobody was given its id). Whether it was removed."""
        self._cache_drop(video_id)
        with self.engine.begin() as conn:
            removed = conn.execute(Video.__table__.delete().where(Video.id == video_id, Video.status == was))
        self._cache_drop(video_id)
        return removed.rowcount > 0

    def add_tasks(self, video_id: str, tasks: Sequence[Task]) -> None:
        """The plan of a video whose row has no tasks (accepted by a farm that planned none), inserted in
        one transaction: a video has its whole plan or none, never half of one."""
        with self.engine.begin() as conn:
            conn.execute(TaskTable.__table__.insert(), _task_rows(video_id, tasks, utcnow()))

    # -- tasks ------------------------------------------------------------------------------------

    def tasks(self, video_id: str) -> list[Task]:
        stmt = select(*TaskTable.__table__.columns).where(TaskTable.video_id == video_id).order_by(TaskTable.name)
        return self._select_tasks(stmt)

    def _select_tasks(self, stmt: Any) -> list[Task]:
        with self.engine.connect() as conn:
            return [Task.from_row(r) for r in conn.execute(stmt).mappings().all()]

    def tasks_of(self, video_ids: Sequence[str]) -> dict[str, list[Task]]:
        """The tasks of many videos, by video, in one query per IN_BATCH ids (the reconciler's pass)."""
        found: dict[str, list[Task]] = {video_id: [] for video_id in video_ids}
        for start in range(0, len(video_ids), IN_BATCH):
            batch = video_ids[start:start + IN_BATCH]
            stmt = (select(*TaskTable.__table__.columns).where(TaskTable.video_id.in_(batch))
                    .order_by(TaskTable.video_id, TaskTable.name))
            for task in self._select_tasks(stmt):
                found[task.video_id].append(task)
        return found

    def task(self, video_id: str, name: str) -> Task | None:
        rows = self._select_tasks(
            select(*TaskTable.__table__.columns).where(TaskTable.video_id == video_id, TaskTable.name == name)
        )
        return rows[0] if rows else None

    def update_task(self, video_id: str, name: str, *, expect: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Compare-and-set on one task, as `update` is on a video."""
        fields.setdefault("updated_at", utcnow())
        stmt = update(TaskTable).where(TaskTable.video_id == video_id, TaskTable.name == name)
        for column, value in (expect or {}).items():
            col = getattr(TaskTable, column)
            stmt = stmt.where(col.in_(value) if isinstance(value, tuple) else col == value)
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(**fields)).rowcount > 0

    def record_progress(self, video_id: str, task_name: str, job_id: str, frames: int,
                        progress: Callable[[int], float]) -> int:
        """A running chunk's done frames, then its video's progress (`progress` of the frames all its chunks
        have done), in one transaction: every chunk being encoded writes this each second, the catalog's most
        frequent write, so it is one transaction rather than three (bench/control_plane.py). The task is
        written only while `job_id` runs it, the video only while it is processing. Returns those frames."""
        now = utcnow()
        task = update(TaskTable).where(
            TaskTable.video_id == video_id, TaskTable.name == task_name, TaskTable.job_id == job_id,
            TaskTable.status == TaskStatus.RUNNING).values(done_frames=frames, updated_at=now)
        done = select(func.coalesce(func.sum(TaskTable.done_frames), 0)).where(
            TaskTable.video_id == video_id, TaskTable.kind == TaskKind.CHUNK)
        self._cache_drop(video_id)
        with self.engine.begin() as conn:
            conn.execute(task)
            all_done = int(conn.execute(done).scalar_one())
            conn.execute(update(Video).where(Video.id == video_id, Video.status == VideoStatus.PROCESSING)
                         .values(progress=progress(all_done), updated_at=now))
            if self.in_progress_transaction is not None:
                self.in_progress_transaction()
        self._cache_drop(video_id)
        return all_done

    def update(self, video_id: str, *, expect: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Compare-and-set: applies `fields` only if every `expect` column still holds its value
        (a value that is a tuple means "one of"). Returns whether the row changed.

        A move into ready, failed or canceled also writes the tenant's webhook events (the outbox), in
        the same transaction: the change and its announcement are committed together or not at all."""
        fields.setdefault("updated_at", utcnow())
        stmt = update(Video).where(Video.id == video_id)
        for column, value in (expect or {}).items():
            col = getattr(Video, column)
            stmt = stmt.where(col.in_(value) if isinstance(value, tuple) else col == value)
        self._cache_drop(video_id)
        with self.engine.begin() as conn:
            if fields.get("status") in outbox.EVENTS:
                changed = self._update_announcing(conn, video_id, stmt.values(**fields), fields["status"])
            else:
                changed = conn.execute(stmt.values(**fields)).rowcount > 0
        self._cache_drop(video_id)
        return changed

    def mark_playable(self, video_id: str) -> bool:
        """Set `playable_at` once, while the video is processing, and queue its `video.playable`
        webhook events in the same transaction. Whether this call set it."""
        now = utcnow()
        stmt = update(Video).where(Video.id == video_id, Video.status == VideoStatus.PROCESSING,
                                   Video.playable_at.is_(None)).values(playable_at=now, updated_at=now)
        self._cache_drop(video_id)
        with self.engine.begin() as conn:
            changed = conn.execute(stmt).rowcount > 0
            if changed:
                row = conn.execute(select(*Video.__table__.columns).where(Video.id == video_id)).mappings().one()
                outbox.announce(conn, _plain(row), outbox.PLAYABLE)
        self._cache_drop(video_id)
        return changed

    def lease(self, video_id: str, holder: str, ttl_s: float, *, renew: bool = False) -> bool:
        """Take the write lease of an unfinished upload (granted when nobody holds it or the holder's
        time ran out), or `renew` it (granted while nobody else took it, even past its time: then
        nobody else wrote either). Moves `updated_at`: a writer keeps the upload from expiring."""
        now = utcnow()
        free = or_(Video.lease_holder.is_(None), Video.lease_until < now)
        mine = Video.lease_holder == holder
        stmt = update(Video).where(Video.id == video_id, Video.status == VideoStatus.UPLOADING,
                                   mine if renew else free).values(
            lease_holder=holder, lease_until=now + timedelta(seconds=ttl_s), updated_at=now)
        self._cache_drop(video_id)
        with self.engine.begin() as conn:
            granted = conn.execute(stmt).rowcount > 0
        self._cache_drop(video_id)
        return granted

    def release(self, video_id: str, holder: str) -> None:
        self.update(video_id, expect={"lease_holder": holder}, lease_holder=None, lease_until=None)

    @staticmethod
    def _update_announcing(conn: Connection, video_id: str, stmt: Any, status: VideoStatus) -> bool:
        """`stmt`, announcing the status only when the row was not in it already: a DELETE repeated
        on a canceled video changes its row again but is no second `video.deleted`."""
        if conn.execute(stmt.where(Video.status != status)).rowcount > 0:
            row = conn.execute(select(*Video.__table__.columns).where(Video.id == video_id)).mappings().one()
            outbox.announce(conn, _plain(row), outbox.EVENTS[status])
            return True
        return conn.execute(stmt).rowcount > 0
