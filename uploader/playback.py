"""Playback of HLS and DASH: every manifest, playlist and segment under `/v1/play/{token}/`.

Players fetch segments by relative URL and cannot add an `Authorization` header, so access rides in
the path, as Cloudflare Stream does: a token naming the video, its tenant and an expiry, signed with
HMAC-SHA256 under a server secret. Tokens sit on public pages, so the tenant is named by a keyed tag
of its id, never by the id itself: the id is a plain hash of the tenant's API key, which a weak key
would let anyone reverse offline. Players run on our users' pages, another origin than the API, so
these routes answer CORS for any origin; the token, not the origin, is the access control.

A video plays from the moment it is playable (`playable_at`), while still `processing`: the HLS
playlists are then written per request from the catalog (uploader/growing.py) and its segments come
from the folders of the attempts that made them. At `ready` everything comes from the published
package. DASH waits for `ready`. The catalog's status is checked on every request, so a video that
fails or is deleted stops playing at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from uploader import growing
from uploader.errors import ApiError
from uploader.serve import stored_response
from vidfarm import segments
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.package import DASH_MANIFEST
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus
from vidfarm.storage import CONTENT_TYPES, InvalidKey, is_video_id, stream_key, work_key

PREFIX = "/v1/play/"
# Manifests and playlists always come from the API: their segment URLs are relative to the playlist's,
# so under the token. Init and media segments of an object store are redirects to presigned URLs (the
# bucket needs a CORS rule for browser players, see deploy/README.md), or proxied with
# VIDFARM_STORAGE_PROXY=1.
PLAYLISTS = (".m3u8", ".mpd")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges",
    "Access-Control-Max-Age": "86400",
}
MAX_CACHE_S = 24 * 3600


class TokenError(Exception):
    """A token that is not ours, was altered, or has expired."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(settings: Settings) -> bytes:
    """`VIDFARM_PLAYBACK_SECRET` (or the file `up` writes). Without one, a key derived from every API
    key: the same on every API replica, and not computable from any one tenant's key."""
    if settings.playback_secret:
        return settings.playback_secret.encode()
    return hashlib.sha256(b"vidfarm-playback\0" + b"\0".join(k.encode() for k in sorted(settings.api_keys))).digest()


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def tenant_tag(key: bytes, tenant: str) -> str:
    """What a token says of the tenant: as long as the tenant id, computable only with the server's
    secret (a separate domain from the token's MAC, so one is never the other)."""
    return hmac.new(key, b"vidfarm-tenant\0" + tenant.encode(), hashlib.sha256).hexdigest()[:16]


def names_tenant(key: bytes, named: str, tenant: str) -> bool:
    """Whether a valid token's tenant field is `tenant`'s: its tag, or, in tokens signed before tags
    (valid until they expire), the id itself."""
    presented = named.encode()
    return hmac.compare_digest(presented, tenant_tag(key, tenant).encode()) or hmac.compare_digest(presented,
                                                                                                tenant.encode())


def sign(key: bytes, video_id: str, tenant: str, expires: int) -> str:
    payload = f"{video_id}.{tenant_tag(key, tenant)}.{expires}"
    return f"{_b64(payload.encode())}.{_mac(key, payload)}"


def verify(key: bytes, token: str, now: float) -> tuple[str, str, int]:
    """(video id, tenant field, expiry) of a valid token; TokenError otherwise. Check the tenant field
    with `names_tenant`."""
    try:
        encoded, mac = token.split(".", 1)
        payload = _unb64(encoded).decode()
        video_id, tenant, expires_text = payload.split(".")
        expires = int(expires_text)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenError("the playback token is malformed") from exc
    # As bytes: compare_digest refuses str with non-ASCII characters, and a URL may carry any.
    if not hmac.compare_digest(mac.encode(errors="replace"), _mac(key, payload).encode()):
        raise TokenError("the playback token is not valid")
    if expires <= now:
        raise TokenError("the playback token has expired")
    return video_id, tenant, expires


def is_ready_stream(video: Mapping[str, Any]) -> bool:
    return video["status"] == VideoStatus.READY and bool(video.get("has_stream"))


def is_growing(video: Mapping[str, Any]) -> bool:
    """Playable while still encoded: HLS grows from the catalog's record of the segments."""
    return video["status"] == VideoStatus.PROCESSING and bool(video.get("playable_at"))


def playback_urls(settings: Settings, video: Mapping[str, Any], base_url: str,
                  now: float | None = None) -> dict | None:
    """HLS and DASH URLs, usable without headers until the token expires: of a ready video, and of a
    playable one still processing (HLS only: `dash` is null until ready). The same token serves both
    phases, so a player that started early plays on to the end."""
    if not (is_ready_stream(video) or is_growing(video)):
        return None
    expires = int((now or time.time()) + settings.playback_ttl_s)
    token = sign(signing_key(settings), video["id"], video["tenant"], expires)
    prefix = f"{base_url.rstrip('/')}{PREFIX}{token}"
    dash = f"{prefix}/{DASH_MANIFEST}" if is_ready_stream(video) else None
    return {"hls": f"{prefix}/master.m3u8", "dash": dash, "expires_at": expires}


def router(farm: Farm) -> APIRouter:
    routes = APIRouter(tags=["playback"])
    key = signing_key(farm.settings)

    @routes.options(PREFIX + "{token}/{path:path}", include_in_schema=False)
    def preflight(token: str, path: str) -> Response:
        return Response(status_code=204)

    @routes.get(PREFIX + "{token}/{path:path}", response_class=FileResponse,
                responses={307: {}, 403: {}, 404: {}})
    def play(token: str, path: str, request: Request) -> Response:
        """A manifest, playlist or segment of a video's HLS/DASH package (Range supported): of a ready
        video, or HLS of a playable one still processing."""
        try:
            video_id, tenant, expires = verify(key, token, time.time())
        except TokenError as exc:
            raise ApiError(403, "invalid_token", str(exc)) from exc
        # Read on every request (the cache is dropped by every status change): a video that failed
        # or was deleted answers 404 from the next request on.
        video = farm.catalog.get(video_id) if is_video_id(video_id) else None
        if video is None or not names_tenant(key, tenant, video["tenant"]):
            raise ApiError(404, "not_found", "no such video to play")
        # Nothing under a token changes but a growing playlist; a CDN may keep the rest until the token expires.
        immutable = {"Cache-Control": f"public, max-age={max(0, min(MAX_CACHE_S, expires - int(time.time())))}, "
                                      "immutable"}
        if is_growing(video):
            return _growing(farm, request, video, path, immutable)
        if not is_ready_stream(video):
            raise ApiError(404, "not_found", "no such video to play")
        return _published(farm, request, video_id, path, immutable)

    return routes


def _published(farm: Farm, request: Request, video_id: str, path: str, headers: Mapping[str, str]) -> Response:
    """A file of the package finalize published."""
    missing = f"the package has no {path!r}"
    try:
        stored = stream_key(video_id, path)
    except InvalidKey as exc:
        raise ApiError(404, "not_found", missing) from exc
    suffix = PurePosixPath(path).suffix
    return stored_response(farm, request, stored, CONTENT_TYPES[suffix], missing=missing, headers=headers,
                           proxy=suffix in PLAYLISTS)


def _growing(farm: Farm, request: Request, video: VideoRow, path: str, immutable: Mapping[str, str]) -> Response:
    """A playlist written from the catalog's record of the segments, or a segment from its attempt's folder."""
    if path == DASH_MANIFEST:
        raise ApiError(404, "not_ready", "DASH is served once the video is ready; "
                                         "play its HLS (playback.hls) while it is processing")
    state = segments.stream_state(farm.catalog.tasks(video["id"]))
    if (text := growing.playlist(state, path)) is not None:
        return Response(text, media_type=CONTENT_TYPES[".m3u8"],
                        headers={"Cache-Control": f"public, max-age={growing.GROWING_MAX_AGE_S}"})
    missing = f"the stream has no {path!r} yet"
    found = segments.locate(state, path)
    if found is None:
        raise ApiError(404, "not_found", missing)
    attempt, name = found
    try:
        return stored_response(farm, request, work_key(video["id"], attempt, name),
                               CONTENT_TYPES[PurePosixPath(path).suffix], missing=missing, headers=immutable)
    except ApiError:
        # Finalize may have published the package and dropped the attempts' folders since the
        # catalog was read: the same segment is in the package now.
        current = farm.catalog.get(video["id"], cached=False)
        if current is None or not is_ready_stream(current):
            raise
        return _published(farm, request, video["id"], path, immutable)
