"""Where videos live: one interface, two backends (a directory, `storage_file.py`, or an S3-compatible
bucket, `storage_s3.py`), chosen by `VIDFARM_STORAGE_URL`. The rest of the farm speaks only this.

Client filenames never reach a key: keys are built here from ids checked against strict patterns, so
nothing can be written or read outside a video's own prefix. Finished files appear whole or not at
all (an atomic rename, a completed S3 upload), and nothing counts before the catalog says so.
"""

from __future__ import annotations

import errno
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol
from urllib.parse import unquote, urlsplit

VIDEO_ID_RE = re.compile(r"^[0-9a-f]{32}$")
RENDITION_NAME_RE = re.compile(r"^[0-9]{2,5}p$")
ATTEMPT_RE = re.compile(r"^[0-9a-f]{32}-[a-z0-9-]{1,40}-[0-9a-f]{8}$")
# An attempt's files: a chunk's rung MP4s, the audio track, and the CMAF segments each makes.
WORK_FILE_RE = re.compile(r"^([0-9]{2,5}p\.mp4|audio\.m4a|([0-9]{2,5}p|audio)/(init\.mp4|seg_[0-9]{5,6}\.m4s))$")
# What an unfinished resumable upload keeps beside its bytes (object stores: state and a short tail).
UPLOAD_FILE_RE = re.compile(r"^(state\.json|tail-[0-9a-f]{12})$")
# What a player may fetch of a package: manifests, playlists, init and media segments. Nothing else.
STREAM_FILE_RE = re.compile(
    r"^(master\.m3u8|manifest\.mpd|([0-9]{2,5}p|audio)/(index\.m3u8|init\.mp4|seg_[0-9]{5}\.m4s))$"
)
VIDEOS_PREFIX = "videos"
STREAM_DIR = "stream"
WORK_DIR = "work"
UPLOAD_DIR = "upload"
SOURCE_NAME = "source"
# At the storage root: the id of the catalog this storage belongs to (`vidfarm.ownership`).
MARKER_NAME = ".vidfarm-catalog"
POSTER_NAME = "poster.jpg"
# Stored with each object, so a presigned GET answers with the type a player expects.
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m4a": "audio/mp4",
    ".jpg": "image/jpeg",
}
# Errors that mean the storage itself is in trouble (full, read-only, no permission, failing disk),
# not the request or the input: they get `storage_error` / 503, never a 500 or "bad input".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO})


@dataclass(frozen=True)
class StorageLocation:
    """Where the media lives: a directory (`path`) or an S3 bucket and key prefix. Parsed once from
    `VIDFARM_STORAGE_URL` (or a directory), so every process and message names the same place."""

    scheme: Literal["file", "s3"]
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""  # "" or "some/keys/": prepended to every key as it is

    @classmethod
    def parse(cls, url: str) -> StorageLocation:
        """`file:///path` or `s3://bucket/prefix`; ValueError for anything else."""
        parts = urlsplit(url)
        if url.startswith("file://"):
            return cls.directory(Path(unquote(parts.path)))
        if url.startswith("s3://"):
            prefix = parts.path.strip("/")
            return cls("s3", bucket=parts.netloc, prefix=prefix + "/" if prefix else "")
        raise ValueError(f"VIDFARM_STORAGE_URL must be file:///path or s3://bucket/prefix, got {url!r}")

    @classmethod
    def directory(cls, path: Path | str) -> StorageLocation:
        return cls("file", path=Path(path).resolve())

    @property
    def url(self) -> str:
        """The location as an operator writes it, and as `parse` reads it back."""
        if self.path is not None:
            return self.path.as_uri()
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}".rstrip("/")


class InvalidKey(ValueError):
    """An id or rendition name that cannot name a stored file."""


class StorageUnavailable(Exception):
    """The object store cannot be reached or keeps refusing (after the client's own retries): a
    transient fault. Uploads answer 503; jobs fail this attempt, and the reconciler runs them again."""


def new_video_id() -> str:
    return uuid.uuid4().hex


def is_video_id(value: str) -> bool:
    return bool(VIDEO_ID_RE.match(value))


# -- keys: the one layout both backends store -----------------------------------------------------


def video_prefix(video_id: str) -> str:
    if not is_video_id(video_id):
        raise InvalidKey(f"not a video id: {video_id!r}")
    return f"{VIDEOS_PREFIX}/{video_id}/"


def source_key(video_id: str) -> str:
    return video_prefix(video_id) + SOURCE_NAME


def rendition_key(video_id: str, name: str) -> str:
    if not RENDITION_NAME_RE.match(name):
        raise InvalidKey(f"not a rendition name: {name!r}")
    return f"{video_prefix(video_id)}{name}.mp4"


def poster_key(video_id: str) -> str:
    return video_prefix(video_id) + POSTER_NAME


def stream_key(video_id: str, relative: str) -> str:
    if not STREAM_FILE_RE.match(relative):
        raise InvalidKey(f"not a file of a stream package: {relative!r}")
    return f"{video_prefix(video_id)}{STREAM_DIR}/{relative}"


def work_key(video_id: str, attempt: str, name: str = "") -> str:
    """Files of one attempt of one task (named by its job id): they count only once the catalog
    records that attempt as the one that finished, so two racing attempts never share a file."""
    if not ATTEMPT_RE.match(attempt):
        raise InvalidKey(f"not an attempt id: {attempt!r}")
    if name and not WORK_FILE_RE.match(name):
        raise InvalidKey(f"not a work file: {name!r}")
    return f"{video_prefix(video_id)}{WORK_DIR}/{attempt}/{name}"


def upload_key(video_id: str, name: str = "") -> str:
    """What a resumable upload keeps until its last byte (object stores only)."""
    if name and not UPLOAD_FILE_RE.match(name):
        raise InvalidKey(f"not a file of an upload: {name!r}")
    return f"{video_prefix(video_id)}{UPLOAD_DIR}/{name}"


# -- what the backends hand out -------------------------------------------------------------------


@dataclass(frozen=True)
class SourceHandle:
    """A stored source as ffmpeg and the probe read it: `location` is a path or a (presigned) URL,
    `open` gives random access for the few box headers the probe checks itself."""

    location: str
    size: int
    open: Callable[[], BinaryIO]

    @classmethod
    def local(cls, path: Path) -> SourceHandle:
        return cls(str(path), path.stat().st_size, lambda: path.open("rb"))


class UploadWriter(Protocol):
    """An upload body on its way into storage: written in order, completed or aborted once."""

    def write(self, data: bytes) -> None: ...

    def room(self) -> Future[object] | None:
        """A future to await before writing more (parts still in flight), or None."""

    def complete(self) -> SourceHandle:
        """Blocking: the stored body, whole, ready to probe."""

    def abort(self) -> None:
        """Drop what was written; never blocks on the network."""


class PartialUpload(Protocol):
    """An unfinished resumable upload, opened by the one request that holds its lease (`vidfarm.tus`):
    appended in order from `offset`, then ended exactly once by `keep`, `discard`, `close` or
    `finish`. What `keep` made durable is what any API replica resumes from."""

    @property
    def offset(self) -> int:
        """Bytes of the upload so far, this writer's appends included."""

    def append(self, data: bytes) -> None: ...

    def room(self) -> Future[object] | None:
        """A future to await before appending more (parts still in flight), or None."""

    def keep(self) -> None:
        """Make everything appended durable: the request ended, or its client went away."""

    def discard(self) -> None:
        """Back to where this writer began: a chunk that failed its checksum, a body too long."""

    def close(self) -> None:
        """Let go without touching what is stored: the lease lapsed, another writer may own it now."""

    def finish(self) -> SourceHandle:
        """The last byte is in: the stored body, whole, ready to probe."""


class RangeNotSatisfiable(ValueError):
    """A `Range` that starts past the end of the object."""


@dataclass(frozen=True)
class Reading:
    """An object's bytes on their way out: `content_range` is set when one range was served."""

    chunks: Iterator[bytes]
    length: int
    content_range: str | None = None


# ASCII digits: `\d` takes any script's digits (int() reads "٣" as 3).
BYTE_RANGE_RE = re.compile(r"bytes=([0-9]{0,20})-([0-9]{0,20})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single-range header; None for no range or one we ignore (several
    ranges): the whole object is served then, as HTTP allows."""
    match = BYTE_RANGE_RE.fullmatch(header or "")
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        return max(0, size - int(last)), size - 1
    if int(first) >= size:
        raise RangeNotSatisfiable(header)
    return int(first), min(size - 1, int(last)) if last else size - 1


@dataclass(frozen=True)
class StoredFile:
    """How the API hands out a stored file: a local path to send, or (object stores) a URL to
    redirect to and a reader for proxying byte ranges."""

    key: str
    path: Path | None = None


class Storage(ABC):
    """Every operation the farm does on stored media. Implementations raise StorageUnavailable for
    faults of the store itself (OSError keeps meaning a local disk in trouble)."""

    scratch: Path

    @abstractmethod
    def check(self) -> None:
        """Start-up: raise StorageUnavailable (one line naming the bucket or folder) if unusable."""

    @abstractmethod
    def status(self) -> str:
        """For /readyz: "ok", or what is wrong."""

    @abstractmethod
    def begin_upload(self, video_id: str) -> UploadWriter: ...

    @abstractmethod
    def start_resumable(self, video_id: str) -> None:
        """An empty resumable upload, to be appended to by whichever API replica gets the request."""

    @abstractmethod
    def resumable_offset(self, video_id: str) -> int | None:
        """Bytes a resumable upload holds durably; None once it is gone (terminated, swept, admitted)."""

    @abstractmethod
    def open_resumable(self, video_id: str, commit_parts: Callable[[], bool] | None) -> PartialUpload:
        """The upload, for its lease holder to append to. With `commit_parts`, what is appended becomes
        durable as it goes (a part at a time, while `commit_parts()` says the lease still holds), so a
        crash mid-request keeps most of it; without, only `keep` commits (all-or-nothing chunks).
        FileNotFoundError if the upload is gone."""

    @abstractmethod
    def promote_upload(self, video_id: str) -> None:
        """The probed upload becomes the video's source (still invisible until the catalog row)."""

    @abstractmethod
    def source_location(self, video_id: str) -> str:
        """What ffmpeg opens to read a video's source: its path, or a presigned URL (no request)."""

    @abstractmethod
    def attempt_folder(self, video_id: str, attempt: str) -> Path:
        """The local folder an attempt writes into."""

    @abstractmethod
    def keep_attempt(self, video_id: str, attempt: str) -> None:
        """Make a finished attempt's files readable by any worker (finalize may run elsewhere)."""

    @abstractmethod
    def keep_attempt_file(self, video_id: str, attempt: str, name: str) -> None:
        """One file of a running attempt, kept now (an audio segment that just closed): others read it
        before the attempt ends."""

    @abstractmethod
    def attempt_file(self, video_id: str, attempt: str, name: str, into: Path) -> Path:
        """A local path to a kept attempt's file; object stores download it under `into`."""

    @abstractmethod
    def drop_attempt(self, video_id: str, attempt: str) -> None:
        """Remove an attempt's files, local and stored."""

    @abstractmethod
    def drop_work(self, video_id: str) -> None:
        """Remove the files of every attempt of a video."""

    @abstractmethod
    def publish(self, video_id: str, renditions: dict[str, Path], poster: Path | None, stream: Path) -> None:
        """Put a finalize attempt's outputs in place. Nothing is served before the catalog says
        `ready`, so a crash halfway only leaves files that the next attempt replaces."""

    @abstractmethod
    def delete_video(self, video_id: str) -> None:
        """Everything under the video's prefix, unfinished uploads included."""

    @abstractmethod
    def stored_videos(self) -> Iterator[str]:
        """The ids of the videos that have anything stored under their prefix."""

    @abstractmethod
    def partial_uploads(self) -> Iterator[str]:
        """The ids of the unfinished uploads (partial files, multipart uploads) in storage."""

    @abstractmethod
    def last_written(self, video_id: str) -> float | None:
        """When anything of the video was last written (epoch seconds), its unfinished upload
        included; None if nothing is stored."""

    @abstractmethod
    def location(self) -> str:
        """The storage as an operator names it (`file:///path`, `s3://bucket/prefix`), for messages."""

    @abstractmethod
    def read_marker(self) -> str | None:
        """The text of the ownership marker at the storage root; None if there is none."""

    @abstractmethod
    def write_marker(self, text: str) -> None:
        """Write the ownership marker whole (a reader sees the old text or the new, never half)."""

    @abstractmethod
    def stored(self, key: str) -> StoredFile | None:
        """The file at `key` if it exists, as the API serves it."""

    @abstractmethod
    def presign(self, key: str, *, ttl_s: int, filename: str | None = None) -> str | None:
        """A short-lived URL a client may GET the object from, if the backend has such URLs."""

    @abstractmethod
    def media_origin(self) -> str | None:
        """The origin (scheme://host:port) presigned URLs point to, for the console's CSP; None when
        the API serves the files itself."""

    @abstractmethod
    def read(self, key: str, byte_range: str | None) -> Reading:
        """The object, or the one range a `Range` header asks for (proxying). FileNotFoundError if
        it is not there, RangeNotSatisfiable if the range is outside it."""

    @abstractmethod
    def redact(self, text: str) -> str:
        """`text` (an ffmpeg message) without our paths and URLs: users see it."""

    @abstractmethod
    def input_trouble(self, stderr: str) -> bool:
        """Whether ffmpeg failed because the store failed it (not because of the input)."""

    @abstractmethod
    def keys(self, video_id: str) -> list[str]:
        """Every stored key of a video (tests and operators)."""


def temp_name(final: Path, token: str) -> Path:
    """A hidden sibling name: finished files are renamed over it, so readers never see half a file."""
    return final.with_name(f".{final.name}.{token}.part")
