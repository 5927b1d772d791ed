"""Where a resumable (tus) upload lives between requests, and who may write to it.

The catalog row (status `uploading`) holds what was asked: tenant, length, filename, renditions,
queue. The bytes received so far live in the storage backend (`Storage.open_resumable`: a partial
file in the storage dir, or a multipart upload with its state in the bucket), so any API replica, or
a restarted one, reads the same offset and takes the next request.

One request writes at a time: it holds the row's lease (`Catalog.lease`), renewed while it streams.
A replica that dies mid-request loses its lease within `tus_lease_s`, and the client's retry goes on
(423 with Retry-After until then). The lease is the catalog's, like every other truth of the farm.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from vidfarm import lifecycle
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.states import VideoStatus
from vidfarm.storage import PartialUpload, SourceHandle

log = logging.getLogger(__name__)

VERSION = "1.0.0"
EXPIRED = "upload_expired"
# A writer renews its lease (`tus_lease_s`) when a third of it is used, and stops committing parts
# when less than a sixth is left unrenewed: by then another request may be about to take over.
RENEW_AFTER = 1 / 3
SAFETY = 1 / 6


class UploadBusy(Exception):
    """Another request is writing to this upload right now (or its lease has not run out yet)."""


class Writer:
    """One request's hold on an unfinished upload: the lease, and the upload opened for appending.
    Ended exactly once by `close` (after `finish`, or keeping or discarding what it appended)."""

    def __init__(self, farm: Farm, video_id: str, *, all_or_nothing: bool) -> None:
        self.farm, self.video_id, self.holder = farm, video_id, uuid.uuid4().hex
        self.lease_s = farm.settings.tus_lease_s
        self.renewed_at = time.monotonic()
        if not farm.catalog.lease(video_id, self.holder, self.lease_s):
            raise UploadBusy(video_id)
        self.rejected = self.finished = self.lost = False
        try:  # a checksummed chunk counts whole or not at all: nothing commits before its end
            self.partial: PartialUpload = farm.storage.open_resumable(
                video_id, commit_parts=None if all_or_nothing else self.holds)
        except BaseException:
            farm.catalog.release(video_id, self.holder)
            raise

    @property
    def offset(self) -> int:
        return self.partial.offset

    def holds(self) -> bool:
        """Whether the lease surely still holds (by this process's clock, from the last renewal)."""
        return not self.lost and time.monotonic() < self.renewed_at + self.lease_s * (1 - SAFETY)

    def renew_due(self) -> bool:
        return time.monotonic() >= self.renewed_at + self.lease_s * RENEW_AFTER

    def renew(self) -> bool:
        """Blocking (a catalog write): whether the lease is still this request's."""
        started = time.monotonic()
        if self.farm.catalog.lease(self.video_id, self.holder, self.lease_s, renew=True):
            self.renewed_at = started
        else:
            self.lost = True
        return not self.lost

    def reject(self) -> None:
        """What this request appended must not count (a bad checksum, a body past the length)."""
        self.rejected = True

    def finish(self) -> SourceHandle:
        """Blocking: every byte is in; the stored upload, whole."""
        self.finished = True
        return self.partial.finish()

    def close(self) -> int | None:
        """Blocking: keep or discard what was appended, let go of the lease. The offset now, or None
        when another request took the upload over meanwhile (this one then touched nothing)."""
        try:
            if self.finished:
                return self.partial.offset
            if not (self.holds() or self.renew()):
                self.partial.close()
                return None
            if self.rejected:
                self.partial.discard()
            else:
                self.partial.keep()
            return self.partial.offset
        finally:
            self.farm.catalog.release(self.video_id, self.holder)


def expires_at(video: VideoRow, expiry_s: float) -> datetime:
    """Sliding: every PATCH moves `updated_at`, so only an upload nobody writes to expires."""
    return datetime.fromisoformat(video["updated_at"]) + timedelta(seconds=expiry_s)


def expired(video: VideoRow, expiry_s: float) -> bool:
    return datetime.now(UTC) >= expires_at(video, expiry_s)


def http_date(when: datetime) -> str:
    """RFC 9110's date format, as `Upload-Expires` carries it."""
    return format_datetime(when.astimezone(UTC), usegmt=True)


def is_resumable(farm: Farm, video_id: str) -> bool:
    """Stored partial bytes that belong to an unfinished tus upload (not an abandoned regular upload)."""
    video = farm.catalog.get(video_id, cached=False)
    return video is not None and video["status"] == VideoStatus.UPLOADING


def sweep_expired(farm: Farm) -> int:
    """Fail every unfinished upload past its expiry and remove its bytes; the reconciler runs this.
    One being written to (its lease held) is left alone: a long PATCH keeps it alive."""
    swept, settings = 0, farm.settings
    for video in farm.catalog.active((VideoStatus.UPLOADING,)):
        sweeper = uuid.uuid4().hex
        if expired(video, settings.tus_expiry_s) and farm.catalog.lease(video["id"], sweeper, settings.tus_lease_s):
            swept += _expire(farm, video["id"], sweeper)
    return swept


def _expire(farm: Farm, video_id: str, holder: str) -> int:
    message = f"the upload received nothing for {farm.settings.tus_expiry_s:g} s and expired"
    if not lifecycle.expire(farm, video_id, holder, EXPIRED, message):
        return 0
    log.info("removed expired resumable upload %s", video_id)
    return 1
