"""Settings shared by every vidfarm process, read from the environment.

One frozen dataclass so that the API, the workers and the autoscaler agree on where data lives and
which limits apply; CLI flags override single fields with `dataclasses.replace`. Each field is declared
once, with its variable, how its text is read and how it is written back (`EnvVar`): `from_env` and
`to_env` walk the fields, so a setting cannot be read by one process and lost on its way to another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vidfarm.chunks import DEFAULT_CHUNK_SECONDS, DEFAULT_POOL_MAX_WORKERS
from vidfarm.rungs import DEFAULT_LADDER, DEFAULT_STREAM_RUNGS, NO_RUNGS, parse_rungs
from vidfarm.storage import StorageLocation

GIB = 1024**3
PLAYBACK_SECRET_FILE = "playback-secret"
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h: seven attempts over about 17.6 hours.
WEBHOOK_RETRY_DELAYS_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
ENV = "env"  # the metadata key of a field's EnvVar

Environ = Mapping[str, str]
# A field's value from the environment and the fields read before it (`home` comes first).
Reader = Callable[[Environ, dict[str, Any]], Any]
# Score every n-th frame by default (bench/quality.py, BENCHMARKS.md). A prime, so the sampled frames do not line up
# with the 2 s keyframe grid (keyframes look better than the frames between them, and would weigh too much).
QUALITY_EVERY = 31


@dataclass(frozen=True)
class EnvVar:
    """How one field travels: read from the variable `name`, written back by `show` for a child
    process. `show` None: never handed on (the child gets the value through another field)."""

    name: str
    read: Reader
    show: Callable[[Any], str] | None = str


def setting(name: str, parse: Callable[[str, str], Any], default: Any = MISSING, *,
            show: Callable[[Any], str] | None = str, fallback: Reader | None = None) -> Any:
    """A field read from `name` by `parse(name, text)`; unset or blank, it is `fallback(...)` when the
    default depends on other settings (`home`), else `default`."""

    def read(env: Environ, known: dict[str, Any]) -> Any:
        raw = env.get(name, "")
        if raw.strip():
            return parse(name, raw)
        return fallback(env, known) if fallback else default

    return field(default=default, metadata={ENV: EnvVar(name, read, show)})


# -- how variables read: each raises ValueError naming the variable and what it holds --------------


def _integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _numbers(name: str, raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated numbers, got {raw!r}") from exc


def _flag(name: str, raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _at_least_one(name: str, raw: str) -> int:
    return max(1, _integer(name, raw))


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _names(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _path(name: str, raw: str) -> Path:
    return Path(raw).resolve()


def _storage(name: str, raw: str) -> StorageLocation:
    return StorageLocation.parse(raw.strip())


def _public_url(name: str, raw: str) -> str:
    """Checked at start-up: every URL a client receives is built on it."""
    url = raw.strip().rstrip("/")
    if not url:
        return ""
    parts = urlsplit(url)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment
            or not url.isascii()):
        raise ValueError(f"{name} must be http(s)://host[:port][/path] (an IDN host in its "
                         f"xn-- form), got {raw!r}")
    return url


# -- how values are written back --------------------------------------------------------------------


def _show_flag(value: bool) -> str:
    return "1" if value else "0"


def _show_list(values: tuple[object, ...]) -> str:
    return ",".join(str(value) for value in values)


def _show_optional(value: object | None) -> str:
    return "" if value is None else str(value)


# -- settings that depend on others ---------------------------------------------------------------


def _storage_dir(env: Environ, known: dict[str, Any]) -> StorageLocation:
    """`VIDFARM_STORAGE_URL` unset: the directory `VIDFARM_STORAGE_DIR` names as a path, else one in
    the home directory."""
    return StorageLocation.directory(env.get("VIDFARM_STORAGE_DIR", "").strip() or known["home"] / "storage")


def _download_rungs(name: str, raw: str) -> tuple[str, ...]:
    return parse_rungs(name, raw, allow_none=False)


def _stream_rungs(name: str, raw: str) -> tuple[str, ...]:
    return parse_rungs(name, raw, allow_none=True)


def _show_rungs(values: tuple[str, ...]) -> str:
    return ",".join(values) or NO_RUNGS


def _read_keys_file(path: Path) -> tuple[str, ...]:
    """A keys file holds one key per line (a mounted Kubernetes Secret works as is)."""
    lines = path.read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _api_keys(env: Environ, known: dict[str, Any]) -> tuple[str, ...]:
    """The keys of `VIDFARM_API_KEYS` and of the keys file, both: a Secret may hold some, flags others."""
    keys = _names("VIDFARM_API_KEYS", env.get("VIDFARM_API_KEYS", ""))
    keys_file: Path | None = known["api_keys_file"]
    return keys + _read_keys_file(keys_file) if keys_file else keys


def _playback_secret(env: Environ, known: dict[str, Any]) -> str:
    """`VIDFARM_PLAYBACK_SECRET` unset: the one `vidfarm up` generated into the home directory."""
    path = known["home"] / PLAYBACK_SECRET_FILE
    return path.read_text().strip() if path.is_file() else ""


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Fields are read in this order: a fallback reads only the fields above it.
    home: Path = setting("VIDFARM_HOME", _path, fallback=lambda env, known: Path(".vidfarm").resolve())
    redis_url: str | None = setting("REDIS_URL", _text, show=_show_optional, fallback=lambda env, known: None)
    database_url: str = setting("DATABASE_URL", _text,
                                fallback=lambda env, known: f"sqlite:///{known['home'] / 'catalog.db'}")
    # `file:///path` or `s3://bucket/prefix`.
    storage: StorageLocation = setting("VIDFARM_STORAGE_URL", _storage, show=lambda where: where.url,
                                       fallback=_storage_dir)
    # Not handed on: its keys reach a child in VIDFARM_API_KEYS, and reading the file there again would
    # only repeat them.
    api_keys_file: Path | None = setting("VIDFARM_API_KEYS_FILE", lambda name, raw: Path(raw), None, show=None)
    api_keys: tuple[str, ...] = field(metadata={ENV: EnvVar("VIDFARM_API_KEYS", _api_keys, _show_list)})
    # Local room for a job's files on their way to or from an object store (an emptyDir in a cluster).
    scratch_dir: Path | None = setting("VIDFARM_SCRATCH_DIR", _path, None, show=_show_optional,
                                       fallback=lambda env, known: (known["home"] / "scratch").resolve())
    # Serve stored files through the API (with Range) instead of redirecting to presigned URLs.
    storage_proxy: bool = setting("VIDFARM_STORAGE_PROXY", _flag, False, show=_show_flag)
    # CRC32 on every part of an S3 upload: the store checks each part and builds the object's checksum
    # from them. Off by default: some S3-compatible stores (GCS's interoperability API, older MinIO)
    # refuse the checksum headers.
    s3_checksums: bool = setting("VIDFARM_S3_CHECKSUMS", _flag, False, show=_show_flag)
    max_upload_bytes: int = setting("VIDFARM_MAX_UPLOAD_BYTES", _integer, 20 * GIB)
    max_duration_s: float = setting("VIDFARM_MAX_DURATION_S", _number, 6 * 3600.0)
    max_pixels: int = setting("VIDFARM_MAX_PIXELS", _integer, 7680 * 4320)
    # An upload sending nothing this long is abandoned (408).
    upload_idle_timeout_s: float = setting("VIDFARM_UPLOAD_IDLE_TIMEOUT_S", _number, 60.0)
    # Hostile clients (docs/design.md, "Limits"). A body that is not an upload (JSON) is at most this big.
    max_body_bytes: int = setting("VIDFARM_MAX_BODY_BYTES", _integer, 64 * 1024)
    # Every body must bring at least min_rate x window bytes in each window of waiting for it (the
    # first window is the grace period); slower ones are cut off (408). 0 turns the floor off.
    body_min_rate_bytes_s: int = setting("VIDFARM_BODY_MIN_RATE_BYTES_S", _integer, 1024)
    body_rate_window_s: float = setting("VIDFARM_BODY_RATE_WINDOW_S", _number, 30.0)
    # A client must finish sending a request's headers this long after its first byte (or connecting).
    header_timeout_s: float = setting("VIDFARM_HEADER_TIMEOUT_S", _number, 20.0)
    # Unfinished resumable (tus) uploads one tenant may hold at once (429 above).
    max_open_uploads: int = setting("VIDFARM_MAX_OPEN_UPLOADS", _integer, 100)
    default_queue: str = setting("VIDFARM_DEFAULT_QUEUE", _text, "cpu")
    # Served by a pool, so an upload may ask for them (`queue`).
    queues: tuple[str, ...] = setting("VIDFARM_QUEUES", _names, ("cpu", "gpu"), show=_show_list)
    # The MP4 downloads (an upload may ask for some of them).
    ladder: tuple[str, ...] = setting("VIDFARM_LADDER", _download_rungs, DEFAULT_LADDER, show=_show_list)
    # Streamed (HLS/DASH) below the downloads but not offered as MP4s: a slow network has a rung to
    # switch down to. Never above the source, like every rung.
    stream_rungs: tuple[str, ...] = setting("VIDFARM_STREAM_RUNGS", _stream_rungs, DEFAULT_STREAM_RUNGS,
                                            show=_show_rungs)
    max_attempts: int = setting("VIDFARM_MAX_ATTEMPTS", _integer, 3)
    # Job timeout = base + factor * source duration: RQ's 180 s default kills any real transcode.
    job_timeout_base_s: int = setting("VIDFARM_JOB_TIMEOUT_BASE_S", _integer, 300)
    job_timeout_factor: float = setting("VIDFARM_JOB_TIMEOUT_FACTOR", _number, 3.0)
    # ffmpeg printing no progress for this long is hung (a stalled input): it is killed, the video fails.
    stall_timeout_s: float = setting("VIDFARM_STALL_TIMEOUT_S", _number, 300.0)
    # A worker whose heartbeat key is gone for this long is dead; its job runs again.
    worker_heartbeat_ttl_s: int = setting("VIDFARM_WORKER_HEARTBEAT_TTL_S", _integer, 10)
    # A queued task whose job is in no queue's list and on no live worker this long was popped by a
    # worker that froze or died before it reported the job (a live one does within moments): it runs again.
    lost_job_grace_s: float = setting("VIDFARM_LOST_JOB_GRACE_S", _number, 15.0)
    # PostgreSQL bounds. The control plane (API, reconciler) waits this long for a row lock, then gives
    # up (the API answers 503, the reconciler retries next pass); on SQLite it is the busy timeout.
    db_lock_timeout_s: float = setting("VIDFARM_DB_LOCK_TIMEOUT_S", _number, 5.0)
    # The control plane's longest statement.
    db_statement_timeout_s: float = setting("VIDFARM_DB_STATEMENT_TIMEOUT_S", _number, 30.0)
    # A worker's session left idle inside a transaction this long (the worker froze mid-write) is ended
    # by PostgreSQL, which releases its row locks; the worker's own transactions last milliseconds.
    db_worker_idle_in_transaction_s: float = setting("VIDFARM_DB_WORKER_IDLE_IN_TRANSACTION_S", _number, 15.0)
    # Videos are split into chunks of whole 6 s segments, encoded in parallel: a first chunk of one
    # segment, then chunks of at most this many seconds (vidfarm.chunks.plan_chunks, docs/chunking.md).
    chunk_seconds: float = setting("VIDFARM_CHUNK_SECONDS", _number, DEFAULT_CHUNK_SECONDS)
    # The most workers a pool runs (the autoscaler's max): a long video gets at least this many
    # chunks, so every worker has one. `vidfarm up` sets it to its --max-workers; deploy/k8s to pools.yaml's max.
    pool_max_workers: int = setting("VIDFARM_POOL_MAX_WORKERS", _at_least_one, DEFAULT_POOL_MAX_WORKERS)
    # Playback URLs carry a token signed with this secret, valid this long.
    playback_secret: str = setting("VIDFARM_PLAYBACK_SECRET", _text, "", fallback=_playback_secret)
    playback_ttl_s: int = setting("VIDFARM_PLAYBACK_TTL_S", _integer, 6 * 3600)
    # A resumable (tus) upload nobody has written to for this long is given up and its bytes removed.
    tus_expiry_s: float = setting("VIDFARM_TUS_EXPIRY_S", _number, 24 * 3600.0)
    # One request writes to a resumable upload at a time, under a lease renewed as it streams; a
    # replica that dies mid-request holds the upload this long at most.
    tus_lease_s: float = setting("VIDFARM_TUS_LEASE_S", _number, 30.0)
    # Where clients reach the API (https://videos.example.com): every URL a client receives starts with
    # it, whatever the request's Host header says, and so do the links inside webhook payloads.
    public_url: str = setting("VIDFARM_PUBLIC_URL", _public_url, "")
    # Where `vidfarm up` serves, for the links in webhook payloads when no public URL is set. Unlike the
    # public URL it never overrides a request's own address (`localhost` and `127.0.0.1` both work).
    local_url: str = setting("VIDFARM_LOCAL_URL", _text, "")
    # Webhooks: private, loopback and link-local receivers are refused unless this is set (local setups, tests).
    webhook_allow_private: bool = setting("VIDFARM_WEBHOOK_ALLOW_PRIVATE", _flag, False, show=_show_flag)
    # Seconds before each retry of a failed delivery (jitter added); after the last, the delivery gives up.
    webhook_retry_delays_s: tuple[float, ...] = setting("VIDFARM_WEBHOOK_RETRY_DELAYS_S", _numbers,
                                                        WEBHOOK_RETRY_DELAYS_S, show=_show_list)
    # One delivery attempt, all of it (resolve, connect, TLS, send, read the status): a receiver that
    # trickles its answer cannot hold a deliverer thread longer. Its lease is this plus a margin.
    webhook_timeout_s: float = setting("VIDFARM_WEBHOOK_TIMEOUT_S", _number, 10.0)
    # Bytes of a receiver's response read at most (status line and headers; the body is never read).
    webhook_response_max_bytes: int = setting("VIDFARM_WEBHOOK_RESPONSE_MAX_BYTES", _integer, 64 * 1024)
    # Deliveries of one tenant in flight at once, farm-wide: a tenant whose receiver is slow holds this
    # many deliverer threads, and the other tenants' events go out on the rest.
    webhook_tenant_in_flight: int = setting("VIDFARM_WEBHOOK_TENANT_IN_FLIGHT", _integer, 2)
    # Each API process also runs a deliverer (`vidfarm deliver` is another).
    webhook_deliver_in_api: bool = setting("VIDFARM_WEBHOOK_DELIVER_IN_API", _flag, True, show=_show_flag)
    # Live event streams (SSE) one API key may hold open on one API process at once (429 beyond).
    max_event_streams_per_tenant: int = setting("VIDFARM_MAX_EVENT_STREAMS_PER_TENANT", _integer, 100)
    # Quality scores (transcoder/quality.py): the ffmpeg with libvmaf that scores renditions ("" = the
    # one the `quality` extra's imageio-ffmpeg wheel ships, "off" = none: renditions are not scored),
    # and which frames it scores: every n-th (1 = every frame; n measured in BENCHMARKS.md).
    quality_scorer: str = setting("VIDFARM_QUALITY_SCORER", _text, "")
    quality_every: int = setting("VIDFARM_QUALITY_EVERY", _at_least_one, QUALITY_EVERY)
    # Scratch the scorer's reference frames (uncompressed, source size) of one chunk may take; a chunk
    # that would need more samples fewer frames.
    quality_max_reference_bytes: int = setting("VIDFARM_QUALITY_MAX_REFERENCE_BYTES", _integer, GIB)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> Settings:
        """The settings `environ` (the process environment if None) describes."""
        env = os.environ if environ is None else environ
        known: dict[str, Any] = {}
        for each in fields(cls):
            known[each.name] = each.metadata[ENV].read(env, known)
        return cls(**known)

    def to_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with these settings in it: what a child process needs to build the same Settings."""
        env = dict(base)
        for each in fields(self):
            var: EnvVar = each.metadata[ENV]
            if var.show is None:
                env.pop(var.name, None)
            else:
                env[var.name] = var.show(getattr(self, each.name))
        return env

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
