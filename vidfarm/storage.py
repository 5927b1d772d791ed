"""The storage directory: one folder per video, named by the server-generated id.

Client filenames never reach a path: keys are ids checked against a strict pattern, so nothing can
be written or read outside the storage root. Finished files appear only through an atomic rename.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from pathlib import Path

VIDEO_ID_RE = re.compile(r"^[0-9a-f]{32}$")
RENDITION_NAME_RE = re.compile(r"^[0-9]{2,5}p$")
ATTEMPT_RE = re.compile(r"^[0-9a-f]{32}-[a-z0-9-]{1,40}-[0-9a-f]{8}$")
# What a player may fetch of a package: manifests, playlists, init and media segments. Nothing else.
STREAM_FILE_RE = re.compile(
    r"^(master\.m3u8|manifest\.mpd|([0-9]{2,5}p|audio)/(index\.m3u8|init\.mp4|seg_[0-9]{5}\.m4s))$"
)
STREAM_DIR = "stream"
WORK_DIR = "work"
SOURCE_NAME = "source"
POSTER_NAME = "poster.jpg"
# Errors that mean the storage itself is in trouble (full, read-only, no permission, failing disk),
# not the request or the input: they get `storage_error` / 503, never a 500 or "bad input".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO})


class InvalidKey(ValueError):
    """An id or rendition name that cannot name a stored file."""


def new_video_id() -> str:
    return uuid.uuid4().hex


def is_video_id(value: str) -> bool:
    return bool(VIDEO_ID_RE.match(value))


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.videos = self.root / "videos"
        self.incoming = self.root / "incoming"

    def ensure(self) -> None:
        self.videos.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def video_dir(self, video_id: str) -> Path:
        if not is_video_id(video_id):
            raise InvalidKey(f"not a video id: {video_id!r}")
        return self.videos / video_id

    def source_path(self, video_id: str) -> Path:
        return self.video_dir(video_id) / SOURCE_NAME

    def rendition_path(self, video_id: str, name: str) -> Path:
        if not RENDITION_NAME_RE.match(name):
            raise InvalidKey(f"not a rendition name: {name!r}")
        return self.video_dir(video_id) / f"{name}.mp4"

    def work_dir(self, video_id: str, attempt: str) -> Path:
        """Files of one attempt of one task (named by its job id): they count only once the catalog
        records that attempt as the one that finished, so two racing attempts never share a file."""
        if not ATTEMPT_RE.match(attempt):
            raise InvalidKey(f"not an attempt id: {attempt!r}")
        return self.work_root(video_id) / attempt

    def work_root(self, video_id: str) -> Path:
        return self.video_dir(video_id) / WORK_DIR

    def stream_dir(self, video_id: str) -> Path:
        return self.video_dir(video_id) / STREAM_DIR

    def stream_file(self, video_id: str, relative: str) -> Path:
        if not STREAM_FILE_RE.match(relative):
            raise InvalidKey(f"not a file of a stream package: {relative!r}")
        return self.stream_dir(video_id) / relative

    def poster_path(self, video_id: str) -> Path:
        return self.video_dir(video_id) / POSTER_NAME

    def incoming_path(self, video_id: str) -> Path:
        """Uploads stream here first; only an accepted upload is moved into its video folder."""
        if not is_video_id(video_id):
            raise InvalidKey(f"not a video id: {video_id!r}")
        return self.incoming / f"{video_id}.part"

    def promote_upload(self, video_id: str) -> Path:
        target = self.source_path(video_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.incoming_path(video_id), target)
        return target

    def delete_video(self, video_id: str) -> None:
        shutil.rmtree(self.video_dir(video_id), ignore_errors=True)
        self.incoming_path(video_id).unlink(missing_ok=True)

    def writable(self) -> bool:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
            return True
        except OSError:
            return False


def temp_name(final: Path, token: str) -> Path:
    """A hidden sibling name: finished files are renamed over it, so readers never see half a file."""
    return final.with_name(f".{final.name}.{token}.part")


def publish(temp: Path, final: Path) -> None:
    os.replace(temp, final)
