"""Where a resumable (tus) upload lives between requests, and who may write to it.

The catalog row (status `uploading`) holds what was asked: tenant, length, filename, renditions,
queue. The bytes received so far are the partial file in the storage dir, the same
`incoming/<id>.part` a regular upload streams into, so the last byte leaves the file exactly where
the regular accept path expects it. The partial file's size *is* the upload's offset: there is no
second record to disagree with it, and any API replica, or a restarted one, reads the same answer.
A writer holds an exclusive flock on the file, so two PATCHes to one upload (on two replicas, or a
client retrying while its old request still drains) never interleave.

Every access to these files goes through this module, so it can move onto a storage interface
(object storage) later without touching the HTTP layer. Not done yet: with an S3 bucket
(`VIDFARM_STORAGE_URL=s3://...`) resumable uploads are refused (`supported`); POST /v1/videos works.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import BinaryIO

from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.states import VideoStatus
from vidfarm.storage import SourceHandle, Storage
from vidfarm.storage_file import FileStorage

log = logging.getLogger(__name__)

VERSION = "1.0.0"
EXPIRED = "upload_expired"


class UploadBusy(Exception):
    """Another request is writing to this upload right now."""


class Partial:
    """The open, locked partial file of one upload."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    @property
    def offset(self) -> int:
        return self._handle.tell()  # counts what is still in the write buffer, unlike the file's size

    def append(self, data: bytes) -> None:
        self._handle.write(data)

    def discard_from(self, offset: int) -> None:
        """Drop what was appended after `offset` (a chunk that failed its checksum)."""
        self._handle.flush()
        self._handle.truncate(offset)
        self._handle.seek(offset)

    def flush(self) -> None:
        self._handle.flush()


def supported(storage: Storage) -> bool:
    """Partial files live in the storage directory: an object store has none (yet)."""
    return isinstance(storage, FileStorage)


def stored(storage: FileStorage, video_id: str) -> SourceHandle:
    """The completed upload, as the accept path probes it."""
    return SourceHandle.local(storage.incoming_path(video_id))


def start(storage: FileStorage, video_id: str) -> None:
    path = storage.incoming_path(video_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.open("xb").close()


def offset(storage: FileStorage, video_id: str) -> int | None:
    """Bytes received so far; None once the partial file is gone (completed, terminated, swept)."""
    try:
        return storage.incoming_path(video_id).stat().st_size
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def writing(storage: FileStorage, video_id: str) -> Iterator[Partial]:
    """The partial file, locked for this writer, positioned at its end. FileNotFoundError when the
    upload has no partial file any more; UploadBusy when another writer holds it."""
    with storage.incoming_path(video_id).open("r+b") as handle:
        try:
            # Not blocking: a second writer must learn at once, not queue behind a 1 GiB PATCH.
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UploadBusy(video_id) from None
        handle.seek(0, os.SEEK_END)
        partial = Partial(handle)
        try:
            yield partial
        finally:
            partial.flush()  # before the lock goes with the close: the next writer sees every byte


def expires_at(video: VideoRow, expiry_s: float) -> datetime:
    """Sliding: every PATCH moves `updated_at`, so only an upload nobody writes to expires."""
    return datetime.fromisoformat(video["updated_at"]) + timedelta(seconds=expiry_s)


def expired(video: VideoRow, expiry_s: float) -> bool:
    return datetime.now(UTC) >= expires_at(video, expiry_s)


def http_date(when: datetime) -> str:
    """RFC 9110's date format, as `Upload-Expires` carries it."""
    return format_datetime(when.astimezone(UTC), usegmt=True)


def is_resumable(farm: Farm, video_id: str) -> bool:
    """A partial file that belongs to an unfinished tus upload (not an abandoned regular upload)."""
    video = farm.catalog.get(video_id, cached=False)
    return video is not None and video["status"] == VideoStatus.UPLOADING


def sweep_expired(farm: Farm) -> int:
    """Fail every unfinished upload past its expiry and remove its bytes; the reconciler runs this.
    One still being written to (locked) is left alone: a long PATCH keeps it alive."""
    swept = 0
    for video in farm.catalog.active((VideoStatus.UPLOADING,)):
        if not expired(video, farm.settings.tus_expiry_s):
            continue
        try:
            with writing(farm.storage, video["id"]):
                swept += _expire(farm, video["id"])
        except UploadBusy:
            continue
        except FileNotFoundError:  # its bytes are already gone; the row still has to say so
            swept += _expire(farm, video["id"])
    return swept


def _expire(farm: Farm, video_id: str) -> int:
    message = f"the upload received nothing for {farm.settings.tus_expiry_s:g} s and expired"
    if not farm.catalog.update(video_id, expect={"status": VideoStatus.UPLOADING}, status=VideoStatus.FAILED,
                               error_code=EXPIRED, error_message=message):
        return 0
    farm.storage.delete_video(video_id)
    log.info("removed expired resumable upload %s", video_id)
    return 1
