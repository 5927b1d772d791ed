"""Settings shared by every vidfarm process, read from the environment.

One frozen dataclass so that the API, the workers and the autoscaler agree on where data lives and
which limits apply; CLI flags override single fields with `dataclasses.replace`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from vidfarm.storage import file_url_path

GIB = 1024**3
# Score every n-th frame by default (bench/quality.py, BENCHMARKS.md). A prime, so the sampled frames do not line up
# with the 2 s keyframe grid (keyframes look better than the frames between them, and would weigh too much).
QUALITY_EVERY = 31
N = TypeVar("N", int, float)


def _env_number(name: str, default: N, kind: type[N]) -> N:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {raw!r}") from exc


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if raw == "" else raw in ("1", "true", "yes", "on")


def _env_floats(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated numbers, got {raw!r}") from exc


def _read_keys_file(path: Path) -> tuple[str, ...]:
    """A keys file holds one key per line (a mounted Kubernetes Secret works as is)."""
    lines = path.read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _playback_secret(home: Path) -> str:
    """`VIDFARM_PLAYBACK_SECRET`, else the one `vidfarm up` generated into the home directory."""
    if secret := os.environ.get("VIDFARM_PLAYBACK_SECRET", "").strip():
        return secret
    path = home / PLAYBACK_SECRET_FILE
    return path.read_text().strip() if path.is_file() else ""


PLAYBACK_SECRET_FILE = "playback-secret"
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h: seven attempts over about 17.6 hours.
WEBHOOK_RETRY_DELAYS_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


def _public_url(raw: str) -> str:
    """`VIDFARM_PUBLIC_URL` checked at start-up: every URL a client receives is built on it."""
    url = raw.strip().rstrip("/")
    if not url:
        return ""
    parts = urlsplit(url)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment
            or not url.isascii()):
        raise ValueError(f"VIDFARM_PUBLIC_URL must be http(s)://host[:port][/path] (an IDN host in its "
                         f"xn-- form), got {raw!r}")
    return url


def _storage_location(home: Path) -> tuple[str, Path]:
    """(object store URL or "", directory): `VIDFARM_STORAGE_URL` wins; `VIDFARM_STORAGE_DIR` is the
    older spelling of a file:// URL."""
    url = os.environ.get("VIDFARM_STORAGE_URL", "").strip()
    if url.startswith("file://"):
        return "", file_url_path(url).resolve()
    if url and not url.startswith("s3://"):
        raise ValueError(f"VIDFARM_STORAGE_URL must be file:///path or s3://bucket/prefix, got {url!r}")
    return url, Path(os.environ.get("VIDFARM_STORAGE_DIR", str(home / "storage"))).resolve()


@dataclass(frozen=True)
class Settings:
    home: Path
    redis_url: str | None
    database_url: str
    storage_dir: Path
    api_keys: tuple[str, ...]
    # `s3://bucket/prefix` for an object store; empty: the directory `storage_dir` (file:// URL).
    storage_url: str = ""
    # Local room for a job's files on their way to or from an object store (an emptyDir in a cluster).
    scratch_dir: Path | None = None
    # Serve stored files through the API (with Range) instead of redirecting to presigned URLs.
    storage_proxy: bool = False
    # CRC32 on every part of an S3 upload: the store checks each part and builds the object's checksum
    # from them. Off by default: some S3-compatible stores (GCS's interoperability API, older MinIO)
    # refuse the checksum headers.
    s3_checksums: bool = False
    api_keys_file: Path | None = None
    max_upload_bytes: int = 20 * GIB
    max_duration_s: float = 6 * 3600.0
    max_pixels: int = 7680 * 4320
    upload_idle_timeout_s: float = 60.0  # an upload sending nothing this long is abandoned (408)
    # Hostile clients (docs/design.md, "Limits"). A body that is not an upload (JSON) is at most this big.
    max_body_bytes: int = 64 * 1024
    # Every body must bring at least min_rate x window bytes in each window of waiting for it (the
    # first window is the grace period); slower ones are cut off (408). 0 turns the floor off.
    body_min_rate_bytes_s: int = 1024
    body_rate_window_s: float = 30.0
    # A client must finish sending a request's headers this long after its first byte (or connecting).
    header_timeout_s: float = 20.0
    # Unfinished resumable (tus) uploads one tenant may hold at once (429 above).
    max_open_uploads: int = 100
    default_queue: str = "cpu"
    queues: tuple[str, ...] = ("cpu", "gpu")  # served by a pool, so an upload may ask for them (`queue`)
    ladder: tuple[str, ...] = ("1080p", "720p")
    max_attempts: int = 3
    # Job timeout = base + factor * source duration: RQ's 180 s default kills any real transcode.
    job_timeout_base_s: int = 300
    job_timeout_factor: float = 3.0
    # ffmpeg printing no progress for this long is hung (a stalled input): it is killed, the video fails.
    stall_timeout_s: float = 300.0
    # A worker whose heartbeat key is gone for this long is dead; its job runs again.
    worker_heartbeat_ttl_s: int = 10
    # A queued task whose job is in no queue's list and on no live worker this long was popped by a
    # worker that froze or died before it reported the job (a live one does within moments): it runs again.
    lost_job_grace_s: float = 15.0
    # PostgreSQL bounds. The control plane (API, reconciler) waits this long for a row lock, then gives
    # up (the API answers 503, the reconciler retries next pass); on SQLite it is the busy timeout.
    db_lock_timeout_s: float = 5.0
    db_statement_timeout_s: float = 30.0  # the control plane's longest statement
    # A worker's session left idle inside a transaction this long (the worker froze mid-write) is ended
    # by PostgreSQL, which releases its row locks; the worker's own transactions last milliseconds.
    db_worker_idle_in_transaction_s: float = 15.0
    # Long videos are split into chunks of about this many seconds (whole GOPs), encoded in parallel.
    chunk_seconds: float = 60.0
    # Playback URLs carry a token signed with this secret, valid this long.
    playback_secret: str = ""
    playback_ttl_s: int = 6 * 3600
    # A resumable (tus) upload nobody has written to for this long is given up and its bytes removed.
    tus_expiry_s: float = 24 * 3600.0
    # One request writes to a resumable upload at a time, under a lease renewed as it streams; a
    # replica that dies mid-request holds the upload this long at most.
    tus_lease_s: float = 30.0
    # Where clients reach the API (https://videos.example.com): every URL a client receives starts with
    # it, whatever the request's Host header says, and so do the links inside webhook payloads.
    public_url: str = ""
    # Where `vidfarm up` serves, for the links in webhook payloads when no public URL is set. Unlike the
    # public URL it never overrides a request's own address (`localhost` and `127.0.0.1` both work).
    local_url: str = ""
    # Webhooks: private, loopback and link-local receivers are refused unless this is set (local setups, tests).
    webhook_allow_private: bool = False
    # Seconds before each retry of a failed delivery (jitter added); after the last, the delivery gives up.
    webhook_retry_delays_s: tuple[float, ...] = WEBHOOK_RETRY_DELAYS_S
    # One delivery attempt, all of it (resolve, connect, TLS, send, read the status): a receiver that
    # trickles its answer cannot hold a deliverer thread longer. Its lease is this plus a margin.
    webhook_timeout_s: float = 10.0
    # Bytes of a receiver's response read at most (status line and headers; the body is never read).
    webhook_response_max_bytes: int = 64 * 1024
    # Deliveries of one tenant in flight at once, farm-wide: a tenant whose receiver is slow holds this
    # many deliverer threads, and the other tenants' events go out on the rest.
    webhook_tenant_in_flight: int = 2
    webhook_deliver_in_api: bool = True  # each API process also runs a deliverer (`vidfarm deliver` is another)
    # Live event streams (SSE) one API key may hold open on one API process at once (429 beyond).
    max_event_streams_per_tenant: int = 100
    # Quality scores (transcoder/quality.py): the ffmpeg with libvmaf that scores renditions ("" = the
    # one the `quality` extra's imageio-ffmpeg wheel ships, "off" = none: renditions are not scored),
    # and which frames it scores: every n-th (1 = every frame; n measured in BENCHMARKS.md).
    quality_scorer: str = ""
    quality_every: int = QUALITY_EVERY
    # Scratch the scorer's reference frames (uncompressed, source size) of one chunk may take; a chunk
    # that would need more samples fewer frames.
    quality_max_reference_bytes: int = GIB

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("VIDFARM_HOME", "./.vidfarm")).resolve()
        storage_url, storage = _storage_location(home)
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{home / 'catalog.db'}"
        keys_file = os.environ.get("VIDFARM_API_KEYS_FILE")
        keys = tuple(k.strip() for k in os.environ.get("VIDFARM_API_KEYS", "").split(",") if k.strip())
        if keys_file:
            keys += _read_keys_file(Path(keys_file))
        ladder = tuple(
            r.strip() for r in os.environ.get("VIDFARM_LADDER", "1080p,720p").split(",") if r.strip()
        )
        return cls(
            home=home,
            redis_url=os.environ.get("REDIS_URL") or None,
            database_url=database_url,
            storage_dir=storage,
            api_keys=keys,
            storage_url=storage_url,
            scratch_dir=Path(os.environ.get("VIDFARM_SCRATCH_DIR") or home / "scratch").resolve(),
            storage_proxy=os.environ.get("VIDFARM_STORAGE_PROXY", "") in ("1", "true", "yes"),
            s3_checksums=os.environ.get("VIDFARM_S3_CHECKSUMS", "") in ("1", "true", "yes"),
            api_keys_file=Path(keys_file) if keys_file else None,
            max_upload_bytes=_env_int("VIDFARM_MAX_UPLOAD_BYTES", 20 * GIB),
            max_duration_s=_env_float("VIDFARM_MAX_DURATION_S", 6 * 3600.0),
            max_pixels=_env_int("VIDFARM_MAX_PIXELS", 7680 * 4320),
            upload_idle_timeout_s=_env_float("VIDFARM_UPLOAD_IDLE_TIMEOUT_S", 60.0),
            max_body_bytes=_env_int("VIDFARM_MAX_BODY_BYTES", 64 * 1024),
            body_min_rate_bytes_s=_env_int("VIDFARM_BODY_MIN_RATE_BYTES_S", 1024),
            body_rate_window_s=_env_float("VIDFARM_BODY_RATE_WINDOW_S", 30.0),
            header_timeout_s=_env_float("VIDFARM_HEADER_TIMEOUT_S", 20.0),
            max_open_uploads=_env_int("VIDFARM_MAX_OPEN_UPLOADS", 100),
            default_queue=os.environ.get("VIDFARM_DEFAULT_QUEUE", "cpu"),
            queues=tuple(q.strip() for q in os.environ.get("VIDFARM_QUEUES", "cpu,gpu").split(",") if q.strip()),
            ladder=ladder,
            max_attempts=_env_int("VIDFARM_MAX_ATTEMPTS", 3),
            job_timeout_base_s=_env_int("VIDFARM_JOB_TIMEOUT_BASE_S", 300),
            job_timeout_factor=_env_float("VIDFARM_JOB_TIMEOUT_FACTOR", 3.0),
            stall_timeout_s=_env_float("VIDFARM_STALL_TIMEOUT_S", 300.0),
            worker_heartbeat_ttl_s=_env_int("VIDFARM_WORKER_HEARTBEAT_TTL_S", 10),
            lost_job_grace_s=_env_float("VIDFARM_LOST_JOB_GRACE_S", 15.0),
            db_lock_timeout_s=_env_float("VIDFARM_DB_LOCK_TIMEOUT_S", 5.0),
            db_statement_timeout_s=_env_float("VIDFARM_DB_STATEMENT_TIMEOUT_S", 30.0),
            db_worker_idle_in_transaction_s=_env_float("VIDFARM_DB_WORKER_IDLE_IN_TRANSACTION_S", 15.0),
            chunk_seconds=_env_float("VIDFARM_CHUNK_SECONDS", 60.0),
            playback_secret=_playback_secret(home),
            playback_ttl_s=_env_int("VIDFARM_PLAYBACK_TTL_S", 6 * 3600),
            tus_expiry_s=_env_float("VIDFARM_TUS_EXPIRY_S", 24 * 3600.0),
            tus_lease_s=_env_float("VIDFARM_TUS_LEASE_S", 30.0),
            public_url=_public_url(os.environ.get("VIDFARM_PUBLIC_URL", "")),
            local_url=os.environ.get("VIDFARM_LOCAL_URL", "").strip(),
            webhook_allow_private=_env_flag("VIDFARM_WEBHOOK_ALLOW_PRIVATE", False),
            webhook_retry_delays_s=_env_floats("VIDFARM_WEBHOOK_RETRY_DELAYS_S", WEBHOOK_RETRY_DELAYS_S),
            webhook_timeout_s=_env_float("VIDFARM_WEBHOOK_TIMEOUT_S", 10.0),
            webhook_response_max_bytes=_env_int("VIDFARM_WEBHOOK_RESPONSE_MAX_BYTES", 64 * 1024),
            webhook_tenant_in_flight=_env_int("VIDFARM_WEBHOOK_TENANT_IN_FLIGHT", 2),
            webhook_deliver_in_api=_env_flag("VIDFARM_WEBHOOK_DELIVER_IN_API", True),
            max_event_streams_per_tenant=_env_int("VIDFARM_MAX_EVENT_STREAMS_PER_TENANT", 100),
            quality_scorer=os.environ.get("VIDFARM_QUALITY_SCORER", "").strip(),
            quality_every=max(1, _env_int("VIDFARM_QUALITY_EVERY", QUALITY_EVERY)),
            quality_max_reference_bytes=_env_int("VIDFARM_QUALITY_MAX_REFERENCE_BYTES", GIB),
        )

    def to_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with these settings in it: what a child process needs to build the same Settings."""
        env = dict(base)
        env.update({
            "VIDFARM_HOME": str(self.home),
            "REDIS_URL": self.redis_url or "",
            "DATABASE_URL": self.database_url,
            "VIDFARM_STORAGE_DIR": str(self.storage_dir),
            "VIDFARM_STORAGE_URL": self.storage_url,
            "VIDFARM_SCRATCH_DIR": str(self.scratch),
            "VIDFARM_STORAGE_PROXY": "1" if self.storage_proxy else "",
            "VIDFARM_S3_CHECKSUMS": "1" if self.s3_checksums else "",
            "VIDFARM_API_KEYS": ",".join(self.api_keys),
            "VIDFARM_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "VIDFARM_MAX_DURATION_S": str(self.max_duration_s),
            "VIDFARM_MAX_PIXELS": str(self.max_pixels),
            "VIDFARM_UPLOAD_IDLE_TIMEOUT_S": str(self.upload_idle_timeout_s),
            "VIDFARM_MAX_BODY_BYTES": str(self.max_body_bytes),
            "VIDFARM_BODY_MIN_RATE_BYTES_S": str(self.body_min_rate_bytes_s),
            "VIDFARM_BODY_RATE_WINDOW_S": str(self.body_rate_window_s),
            "VIDFARM_HEADER_TIMEOUT_S": str(self.header_timeout_s),
            "VIDFARM_MAX_OPEN_UPLOADS": str(self.max_open_uploads),
            "VIDFARM_DEFAULT_QUEUE": self.default_queue,
            "VIDFARM_QUEUES": ",".join(self.queues),
            "VIDFARM_LADDER": ",".join(self.ladder),
            "VIDFARM_MAX_ATTEMPTS": str(self.max_attempts),
            "VIDFARM_JOB_TIMEOUT_BASE_S": str(self.job_timeout_base_s),
            "VIDFARM_JOB_TIMEOUT_FACTOR": str(self.job_timeout_factor),
            "VIDFARM_STALL_TIMEOUT_S": str(self.stall_timeout_s),
            "VIDFARM_WORKER_HEARTBEAT_TTL_S": str(self.worker_heartbeat_ttl_s),
            "VIDFARM_LOST_JOB_GRACE_S": str(self.lost_job_grace_s),
            "VIDFARM_DB_LOCK_TIMEOUT_S": str(self.db_lock_timeout_s),
            "VIDFARM_DB_STATEMENT_TIMEOUT_S": str(self.db_statement_timeout_s),
            "VIDFARM_DB_WORKER_IDLE_IN_TRANSACTION_S": str(self.db_worker_idle_in_transaction_s),
            "VIDFARM_CHUNK_SECONDS": str(self.chunk_seconds),
            "VIDFARM_PLAYBACK_SECRET": self.playback_secret,
            "VIDFARM_PLAYBACK_TTL_S": str(self.playback_ttl_s),
            "VIDFARM_TUS_EXPIRY_S": str(self.tus_expiry_s),
            "VIDFARM_TUS_LEASE_S": str(self.tus_lease_s),
            "VIDFARM_PUBLIC_URL": self.public_url,
            "VIDFARM_LOCAL_URL": self.local_url,
            "VIDFARM_WEBHOOK_ALLOW_PRIVATE": "1" if self.webhook_allow_private else "0",
            "VIDFARM_WEBHOOK_RETRY_DELAYS_S": ",".join(str(d) for d in self.webhook_retry_delays_s),
            "VIDFARM_WEBHOOK_TIMEOUT_S": str(self.webhook_timeout_s),
            "VIDFARM_WEBHOOK_RESPONSE_MAX_BYTES": str(self.webhook_response_max_bytes),
            "VIDFARM_WEBHOOK_TENANT_IN_FLIGHT": str(self.webhook_tenant_in_flight),
            "VIDFARM_WEBHOOK_DELIVER_IN_API": "1" if self.webhook_deliver_in_api else "0",
            "VIDFARM_MAX_EVENT_STREAMS_PER_TENANT": str(self.max_event_streams_per_tenant),
            "VIDFARM_QUALITY_SCORER": self.quality_scorer,
            "VIDFARM_QUALITY_EVERY": str(self.quality_every),
            "VIDFARM_QUALITY_MAX_REFERENCE_BYTES": str(self.quality_max_reference_bytes),
        })
        # The keys file is already read into api_keys; reading it again would only repeat them.
        env.pop("VIDFARM_API_KEYS_FILE", None)
        return env

    @property
    def storage_location(self) -> str:
        """What `open_storage` opens: the object store's URL, else the directory as a file:// URL."""
        return self.storage_url or self.storage_dir.as_uri()

    @property
    def scratch(self) -> Path:
        return self.scratch_dir or self.home / "scratch"

    @property
    def served_queues(self) -> tuple[str, ...]:
        """Queues a pool serves: VIDFARM_QUEUES, and the default queue an upload without one gets."""
        return self.queues if self.default_queue in self.queues else (self.default_queue, *self.queues)

    def queue_for(self, requested: str | None) -> str:
        """The queue an upload runs on; ValueError for a queue no pool serves (it would wait forever)."""
        if not requested:
            return self.default_queue
        if requested not in self.served_queues:
            raise ValueError(f"no pool serves queue {requested!r}; served queues: {', '.join(self.served_queues)}")
        return requested

    def job_timeout_s(self, duration_s: float) -> int:
        return int(self.job_timeout_base_s + self.job_timeout_factor * max(duration_s, 0.0))

    @property
    def base_url(self) -> str:
        """Where links made outside a request (webhook payloads) point."""
        return (self.public_url or self.local_url or DEFAULT_PUBLIC_URL).rstrip("/")

    @property
    def local_key_file(self) -> Path:
        """Where `vidfarm up` keeps the key it generated, so the CLI finds it without flags."""
        return self.home / "api-key"
