"""The web console: one page at `/`, its script, style and npm libraries under `/console/`.

The files live in the package (uploader/console; `make console` copies the npm libraries into its
vendor/ folder), so the API serves the console itself: no separate server, nothing from a CDN. The
page talks to API v1 with the key the user signs in with, so these routes need no key themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from uploader.deps import FarmDep
from uploader.errors import ApiError
from vidfarm.farm import Farm

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


def page_headers(media_origin: str | None) -> dict[str, str]:
    """Only our own files run: no inline script, no other origin, except the one stored media comes
    from when an object store serves it (segment and poster redirects to presigned URLs). hls.js
    feeds the <video> from blob: URLs (MediaSource) and runs its demuxer in a blob: worker. The page
    may not be framed (clickjacking), and sends no Referer (playback URLs carry a token in the path)."""
    media = f" {media_origin}" if media_origin else ""
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:{media}; "
            f"media-src 'self' blob:{media}; worker-src 'self' blob:; connect-src 'self'{media}; "
            "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


router = APIRouter(include_in_schema=False)


@router.get("/", response_class=FileResponse)
def console_page(farm: FarmDep) -> FileResponse:
    return _file("index.html", farm)


@router.get("/console/{name:path}", response_class=FileResponse)
def console_file(name: Annotated[str, PathParam(max_length=100)], farm: FarmDep) -> FileResponse:
    return _file(name, farm)


def _file(name: str, farm: Farm) -> FileResponse:
    path = (CONSOLE_DIR / name).resolve()
    kind = CONTENT_TYPES.get(path.suffix)
    if kind is None or not path.is_relative_to(CONSOLE_DIR) or not path.is_file():
        hint = " (the console's libraries are built by `make console`)" if name.startswith("vendor/") else ""
        raise ApiError(404, "not_found", f"no console file {name!r}{hint}")
    media_origin = None if farm.settings.storage_proxy else farm.storage.media_origin()
    return FileResponse(path, media_type=kind, headers=page_headers(media_origin))
