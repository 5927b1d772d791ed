"""The directory backend: one folder per video under a root (a local disk, or a ReadWriteMany volume
shared by the API and the workers). Attempts write straight into the store, so nothing is copied."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from vidfarm.storage import (
    MARKER_NAME,
    Reading,
    SourceHandle,
    Storage,
    StoredFile,
    is_video_id,
    parse_range,
    poster_key,
    rendition_key,
    source_key,
    temp_name,
    video_prefix,
    work_key,
)

READ_CHUNK = 256 * 1024


class _FileUpload:
    """The body goes to `incoming/{id}.part`; only an accepted upload is moved into its video folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.out: BinaryIO = path.open("wb")

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def room(self) -> Future[object] | None:
        return None

    def complete(self) -> SourceHandle:
        self.out.close()
        return SourceHandle.local(self.path)

    def abort(self) -> None:
        self.out.close()
        self.path.unlink(missing_ok=True)


class _FilePartial:
    """A resumable upload's partial file (`incoming/{id}.part`, as a regular upload's): its size is the
    offset, so there is no second record to disagree with it. Appends are durable as they are written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BinaryIO = path.open("r+b")
        self.start = self.received = self.handle.seek(0, os.SEEK_END)

    @property
    def offset(self) -> int:
        return self.received

    def append(self, data: bytes) -> None:
        self.handle.write(data)
        self.received += len(data)

    def room(self) -> Future[object] | None:
        return None

    def keep(self) -> None:
        self.handle.close()

    def discard(self) -> None:
        self.handle.truncate(self.start)
        self.handle.close()
        self.received = self.start

    def close(self) -> None:
        self.handle.close()

    def finish(self) -> SourceHandle:
        self.handle.close()  # the probe reads the file: nothing may wait in the write buffer
        return SourceHandle.local(self.path)


class FileStorage(Storage):
    def __init__(self, root: Path, scratch: Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.videos = self.root / "videos"
        self.incoming = self.root / "incoming"
        self.scratch = Path(scratch or self.root / "scratch")

    def ensure(self) -> None:
        self.videos.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    # -- paths ------------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.root / key

    def video_dir(self, video_id: str) -> Path:
        return self.path(video_prefix(video_id))

    def source_path(self, video_id: str) -> Path:
        return self.path(source_key(video_id))

    def rendition_path(self, video_id: str, name: str) -> Path:
        return self.path(rendition_key(video_id, name))

    def work_dir(self, video_id: str, attempt: str) -> Path:
        return self.path(work_key(video_id, attempt))

    def work_root(self, video_id: str) -> Path:
        return self.video_dir(video_id) / "work"

    def stream_dir(self, video_id: str) -> Path:
        return self.video_dir(video_id) / "stream"

    def poster_path(self, video_id: str) -> Path:
        return self.path(poster_key(video_id))

    def incoming_path(self, video_id: str) -> Path:
        if not is_video_id(video_id):
            raise ValueError(f"not a video id: {video_id!r}")
        return self.incoming / f"{video_id}.part"

    # -- the interface ----------------------------------------------------------------------------

    def check(self) -> None:
        self.ensure()

    def status(self) -> str:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
            return "ok"
        except OSError:
            return "not writable"

    def begin_upload(self, video_id: str) -> _FileUpload:
        return _FileUpload(self.incoming_path(video_id))

    def start_resumable(self, video_id: str) -> None:
        path = self.incoming_path(video_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("xb").close()

    def resumable_offset(self, video_id: str) -> int | None:
        try:
            return self.incoming_path(video_id).stat().st_size
        except FileNotFoundError:
            return None

    def open_resumable(self, video_id: str, commit_parts: Callable[[], bool] | None) -> _FilePartial:
        return _FilePartial(self.incoming_path(video_id))

    def promote_upload(self, video_id: str) -> None:
        target = self.source_path(video_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.incoming_path(video_id), target)

    def source_location(self, video_id: str) -> str:
        return str(self.source_path(video_id))

    def attempt_folder(self, video_id: str, attempt: str) -> Path:
        return self.work_dir(video_id, attempt)

    def keep_attempt(self, video_id: str, attempt: str) -> None:
        """Already where every worker reads it (the shared folder)."""

    def keep_attempt_file(self, video_id: str, attempt: str, name: str) -> None:
        """Already where every worker reads it (the shared folder)."""

    def attempt_file(self, video_id: str, attempt: str, name: str, into: Path) -> Path:
        return self.path(work_key(video_id, attempt, name))

    def drop_attempt(self, video_id: str, attempt: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.work_dir(video_id, attempt))

    def drop_work(self, video_id: str) -> None:
        shutil.rmtree(self.work_root(video_id), ignore_errors=True)

    def publish(self, video_id: str, renditions: dict[str, Path], poster: Path | None, stream: Path) -> None:
        for name, path in renditions.items():
            os.replace(path, self.rendition_path(video_id, name))
        if poster is not None:
            final = self.poster_path(video_id)
            temp = temp_name(final, uuid.uuid4().hex[:8])
            os.replace(poster, temp)
            os.replace(temp, final)
        target = self.stream_dir(video_id)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(stream, target)

    def delete_video(self, video_id: str) -> None:
        shutil.rmtree(self.video_dir(video_id), ignore_errors=True)
        self.incoming_path(video_id).unlink(missing_ok=True)

    def stored_videos(self) -> Iterator[str]:
        return (folder.name for folder in self.videos.iterdir() if is_video_id(folder.name))

    def partial_uploads(self) -> Iterator[str]:
        return (part.stem for part in self.incoming.glob("*.part") if is_video_id(part.stem))

    def last_written(self, video_id: str) -> float | None:
        folder, times = self.video_dir(video_id), []
        for path in (folder, *folder.rglob("*"), self.incoming_path(video_id)):
            with contextlib.suppress(FileNotFoundError):  # a DELETE may be removing it right now
                times.append(path.stat().st_mtime)
        return max(times, default=None)

    def location(self) -> str:
        return self.root.as_uri()

    def read_marker(self) -> str | None:
        try:
            return (self.root / MARKER_NAME).read_text()
        except FileNotFoundError:
            return None

    def write_marker(self, text: str) -> None:
        final = self.root / MARKER_NAME
        temp = temp_name(final, uuid.uuid4().hex[:8])
        temp.write_text(text)
        os.replace(temp, final)

    def stored(self, key: str) -> StoredFile | None:
        path = self.path(key)
        return StoredFile(key, path) if path.is_file() else None

    def presign(self, key: str, *, ttl_s: int, filename: str | None = None) -> str | None:
        return None

    def media_origin(self) -> str | None:
        return None

    def read(self, key: str, byte_range: str | None) -> Reading:
        path = self.path(key)
        size = path.stat().st_size
        span = parse_range(byte_range, size)
        if span is None:
            return Reading(_read_file(path, 0, size), size)
        first, last = span
        return Reading(_read_file(path, first, last - first + 1), last - first + 1, f"bytes {first}-{last}/{size}")

    def redact(self, text: str) -> str:
        return text.replace(str(self.root), "<storage>")

    def input_trouble(self, stderr: str) -> bool:
        return False  # the disk's errors are told apart by their strerror text (job.py)

    def keys(self, video_id: str) -> list[str]:
        folder = self.video_dir(video_id)
        return sorted(str(p.relative_to(self.root)) for p in folder.rglob("*") if p.is_file())


def _read_file(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(start)
        while length > 0 and (data := handle.read(min(READ_CHUNK, length))):
            length -= len(data)
            yield data
