"""The one place that picks a storage backend. It sits above `storage.py` and both backends, which
import only the interface: nothing imports this module back, so the three form no import cycle."""

from __future__ import annotations

from pathlib import Path

from vidfarm.storage import Storage, StorageLocation
from vidfarm.storage_file import FileStorage


def open_storage(location: StorageLocation, scratch: Path, *, max_upload_bytes: int,
                 s3_checksums: bool = False) -> Storage:
    """The backend that serves `location`."""
    if location.path is not None:
        return FileStorage(location.path, scratch)
    # Imported here: boto3 takes a while to load, and a farm on a directory never needs it.
    from vidfarm.storage_s3 import S3Storage

    return S3Storage(location, scratch, max_upload_bytes=max_upload_bytes, checksums=s3_checksums)
