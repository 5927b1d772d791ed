"""A small HTTP client for the CLI commands that talk to a running API."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from vidfarm.states import TERMINAL

CHUNK = 1024 * 1024
TUS_CHUNK = 64 * CHUNK
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
# Waits before each new try after a dropped connection; the server's offset is asked (HEAD) each time.
RESUME_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
LONG_READ = httpx.Timeout(30.0, read=600.0)


class ApiClientError(Exception):
    pass


class _Retry(Exception):
    """An answer that means: ask the server where the upload is, then go on (409, 423, 5xx)."""


class _HighWater:
    """Reports progress only past the furthest byte reported so far, so a resumed chunk that sends
    bytes again does not move the bar twice."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self.on_bytes = on_bytes
        self.shown = 0

    def at(self, position: int) -> None:
        if position > self.shown:
            self.on_bytes(position - self.shown)
            self.shown = position


def _file_range(path: Path, start: int, length: int, progress: _HighWater) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(start)
        left = length
        while left > 0 and (chunk := handle.read(min(CHUNK, left))):
            left -= len(chunk)
            progress.at(start + length - left)
            yield chunk


def _tus_metadata(fields: dict[str, str | None]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items() if v)


class Client:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Downloads from an object store are redirects to presigned URLs; httpx drops the API key on
        # the way to another host, as it must (the URL carries its own signature).
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
                                 follow_redirects=True)

    def _check(self, response: httpx.Response) -> Any:
        if response.is_success:
            return response.json() if response.content else None
        try:
            error = response.json()["error"]
            raise ApiClientError(f"{response.status_code} {error['code']}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            raise ApiClientError(f"{response.status_code}: {response.text[:200]}") from None

    def upload(self, path: Path, on_bytes: Callable[[int], None], renditions: str | None = None,
               queue: str | None = None) -> dict:
        def body() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    on_bytes(len(chunk))
                    yield chunk

        params = {"filename": path.name}
        if renditions:
            params["renditions"] = renditions
        if queue:
            params["queue"] = queue
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
        response = self.http.post("/v1/videos", params=params, content=body(), headers=headers, timeout=LONG_READ)
        return self._check(response)

    def upload_resumable(self, path: Path, on_bytes: Callable[[int], None], renditions: str | None = None,
                         queue: str | None = None, chunk_size: int = TUS_CHUNK) -> dict:
        """tus: create the upload, then PATCH it chunk by chunk. After a dropped connection (or a
        409, 423, 5xx) ask the server's offset and go on from there, up to len(RESUME_DELAYS_S) tries
        in a row."""
        size = path.stat().st_size
        metadata = _tus_metadata({"filename": path.name, "renditions": renditions, "queue": queue})
        created = self.http.post("/v1/uploads", headers={**TUS_HEADERS, "Upload-Length": str(size),
                                                          "Upload-Metadata": metadata})
        if created.status_code == 501:  # a server without resumable uploads: one POST
            return self.upload(path, on_bytes, renditions, queue)
        self._check(created)
        location, progress = created.headers["Location"], _HighWater(on_bytes)
        offset: int | None = 0
        failures = 0
        while offset is None or offset < size:
            try:
                offset = self._tus_offset(location) if offset is None else offset
                if offset < size:
                    offset = self._tus_patch(location, path, offset, min(chunk_size, size - offset), progress)
                failures = 0
            except (httpx.TransportError, _Retry) as exc:
                if failures == len(RESUME_DELAYS_S):
                    raise ApiClientError(f"upload interrupted {failures} times, last: {exc}") from exc
                time.sleep(RESUME_DELAYS_S[failures])
                failures, offset = failures + 1, None
        return self.video(created.headers["Vidfarm-Video-Id"])

    def _tus_offset(self, location: str) -> int:
        response = self.http.head(location, headers=TUS_HEADERS)
        self._retry_or_check(response)
        return int(response.headers["Upload-Offset"])

    def _tus_patch(self, location: str, path: Path, offset: int, length: int, progress: _HighWater) -> int:
        headers = {**TUS_HEADERS, "Upload-Offset": str(offset), "Content-Length": str(length),
                   "Content-Type": "application/offset+octet-stream"}
        response = self.http.patch(location, content=_file_range(path, offset, length, progress), headers=headers,
                                   timeout=LONG_READ)
        self._retry_or_check(response)
        return int(response.headers["Upload-Offset"])

    def _retry_or_check(self, response: httpx.Response) -> None:
        if response.status_code in (409, 423) or response.status_code >= 500:
            raise _Retry(f"{response.status_code} {response.text[:200]}")
        self._check(response)

    def video(self, video_id: str) -> dict:
        return self._check(self.http.get(f"/v1/videos/{video_id}"))

    def videos(self, status: str | None = None, limit: int = 50) -> dict:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._check(self.http.get("/v1/videos", params=params))

    def farm(self) -> dict:
        return self._check(self.http.get("/v1/farm"))

    def wait(self, video_id: str, on_progress: Callable[[dict], None], poll_s: float = 0.5) -> dict:
        while True:
            video = self.video(video_id)
            on_progress(video)
            if video["status"] in TERMINAL:
                return video
            time.sleep(poll_s)

    def download(self, url: str, target: Path) -> None:
        with self.http.stream("GET", url) as response:
            if not response.is_success:
                raise ApiClientError(f"download failed: {response.status_code}")
            with target.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
