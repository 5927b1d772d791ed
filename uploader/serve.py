"""Stored files as HTTP answers, whatever the backend.

A local file is sent as is (Starlette handles Range). An object in a bucket is a redirect to a short-
lived presigned GET, so the bucket (or a CDN before it) serves the bytes, not the API; or, with
`VIDFARM_STORAGE_PROXY=1` (a bucket clients cannot reach) and for whatever must come from the API
itself, it is proxied here with single-range support.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from uploader.errors import ApiError
from vidfarm.farm import Farm
from vidfarm.storage import RangeNotSatisfiable

# Long enough to start a download or a segment fetch; a later request gets a fresh one.
PRESIGN_TTL_S = 300
# A redirect names a URL that expires: caches may keep it only for a fraction of that.
REDIRECT_CACHE = "private, max-age=60"


def stored_response(farm: Farm, request: Request, key: str, media_type: str, *, missing: str,
                    filename: str | None = None, headers: Mapping[str, str] | None = None,
                    proxy: bool = False) -> Response:
    """The file at `key`: 404 with `missing` as its message if it is not there."""
    stored = farm.storage.stored(key)
    if stored is None:
        raise ApiError(404, "not_found", missing)
    if stored.path is not None:
        return FileResponse(stored.path, media_type=media_type, filename=filename, headers=headers)
    url = None if proxy or farm.settings.storage_proxy else farm.storage.presign(key, ttl_s=PRESIGN_TTL_S,
                                                                                  filename=filename)
    if url is not None:
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": REDIRECT_CACHE})
    return _proxied(farm, request, key, media_type, missing=missing, filename=filename, headers=headers)


def _proxied(farm: Farm, request: Request, key: str, media_type: str, *, missing: str,
             filename: str | None, headers: Mapping[str, str] | None) -> Response:
    try:
        reading = farm.storage.read(key, request.headers.get("range"))
    except FileNotFoundError as exc:
        raise ApiError(404, "not_found", missing) from exc
    except RangeNotSatisfiable as exc:
        raise ApiError(416, "range_not_satisfiable", "the range starts past the end of the file") from exc
    answer = {**(headers or {}), "Accept-Ranges": "bytes", "Content-Length": str(reading.length)}
    if filename:
        answer["Content-Disposition"] = f'attachment; filename="{filename}"'
    if reading.content_range:
        answer["Content-Range"] = reading.content_range
    status = 206 if reading.content_range else 200
    return StreamingResponse(reading.chunks, status_code=status, media_type=media_type, headers=answer)
