"""A small HTTP client for the CLI commands that talk to a running API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from vidfarm.states import TERMINAL

CHUNK = 1024 * 1024


class ApiClientError(Exception):
    pass


class Client:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

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
        response = self.http.post("/v1/videos", params=params, content=body(), headers=headers,
                                  timeout=httpx.Timeout(30.0, read=600.0))
        return self._check(response)

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
