"""The handles every process needs: settings, storage, catalog and Redis, built once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import redis

from vidfarm import ownership
from vidfarm.catalog import Catalog, SessionBounds
from vidfarm.redisconn import connect
from vidfarm.settings import Settings
from vidfarm.storage import Storage
from vidfarm.storage_open import open_storage
from vidfarm.webhooks import Webhooks

# Workers write the catalog; everything else (API, reconciler, autoscaler, deliverer) is the control plane.
Role = Literal["control", "worker"]
# A worker's own writes (progress, claims) may wait their turn this long: giving up early would only
# drop progress or fail an attempt that is fine.
WORKER_LOCK_WAIT_S = 30.0


def session_bounds(settings: Settings, role: Role) -> SessionBounds:
    """The control plane waits a bounded time for any lock and statement, so a worker frozen inside a
    transaction cannot stall repairs or requests; the database ends a worker's session left idle
    inside a transaction, which releases the rows it held."""
    if role == "worker":
        return SessionBounds(lock_timeout_s=WORKER_LOCK_WAIT_S,
                             idle_in_transaction_s=settings.db_worker_idle_in_transaction_s)
    return SessionBounds(lock_timeout_s=settings.db_lock_timeout_s,
                         statement_timeout_s=settings.db_statement_timeout_s)


@dataclass
class Farm:
    settings: Settings
    role: Role = "control"

    @cached_property
    def redis(self) -> redis.Redis:
        """String-decoding client for our own keys, cache and pub/sub."""
        return connect(self._redis_url(), decode=True)

    @cached_property
    def rq_redis(self) -> redis.Redis:
        """Bytes client, as RQ requires."""
        return connect(self._redis_url())

    @cached_property
    def storage(self) -> Storage:
        """Checked once: a missing bucket or wrong credentials, or a storage that belongs to another
        catalog (`vidfarm.ownership`), stop the process at start-up."""
        storage = self.unclaimed_storage()
        ownership.claim(storage, self.catalog)
        return storage

    def unclaimed_storage(self) -> Storage:
        """The storage, checked but not claimed: only for `vidfarm storage adopt`."""
        settings = self.settings
        storage = open_storage(settings.storage, settings.scratch, max_upload_bytes=settings.max_upload_bytes,
                               s3_checksums=settings.s3_checksums)
        storage.check()
        return storage

    @cached_property
    def catalog(self) -> Catalog:
        catalog = Catalog(self.settings.database_url, cache=self.redis,
                          bounds=session_bounds(self.settings, self.role))
        catalog.migrate()
        return catalog

    @cached_property
    def webhooks(self) -> Webhooks:
        return Webhooks(self.catalog.engine)

    def open(self) -> None:
        """Create the storage folders and migrate the catalog now, before the first request or job
        needs them, so a broken database or disk stops the process at start-up."""
        self.storage  # noqa: B018 - the cached properties do the work
        self.catalog  # noqa: B018

    def _redis_url(self) -> str:
        if not self.settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (vidfarm up sets it for the processes it starts)")
        return self.settings.redis_url
