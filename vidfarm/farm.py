"""The handles every process needs: settings, storage, catalog and Redis, built once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis

from vidfarm import ownership
from vidfarm.catalog import Catalog
from vidfarm.redisconn import connect
from vidfarm.settings import Settings
from vidfarm.storage import Storage, open_storage
from vidfarm.webhooks import Webhooks


@dataclass
class Farm:
    settings: Settings

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
        storage = open_storage(settings.storage_location, settings.scratch, max_upload_bytes=settings.max_upload_bytes,
                               s3_checksums=settings.s3_checksums)
        storage.check()
        return storage

    @cached_property
    def catalog(self) -> Catalog:
        catalog = Catalog(self.settings.database_url, cache=self.redis)
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
