"""A tenant's videos: list, read, download, follow live, cancel and delete. Uploads: `uploads.py`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from uploader import live
from uploader.deps import FarmDep, OwnedVideo, Tenant
from uploader.errors import ApiError
from uploader.resources import ERRORS, ErrorBody, VideoOut, VideoPage, video_resource
from uploader.serve import stored_response
from vidfarm import lifecycle
from vidfarm.states import VideoStatus
from vidfarm.storage import InvalidKey, poster_key, rendition_key

router = APIRouter(prefix="/v1/videos", tags=["videos"], responses=ERRORS)

STATUS_CHOICES = ", ".join(VideoStatus)


@router.get("", response_model=VideoPage)
def list_videos(
    request: Request, tenant: Tenant, farm: FarmDep,
    # Plain text, so an unknown status is our 400 `invalid_status` rather than a validation 422.
    status: Annotated[str | None, Query(description="|".join(VideoStatus),
                                        json_schema_extra={"enum": list(VideoStatus)})] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    wanted = _status(status)
    try:
        rows, next_cursor = farm.catalog.list(tenant=tenant, status=wanted, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc
    base = str(request.base_url)
    return {"items": [video_resource(v, base, farm.settings) for v in rows], "next_cursor": next_cursor}


def _status(raw: str | None) -> VideoStatus | None:
    try:
        return None if raw is None else VideoStatus(raw)
    except ValueError:
        raise ApiError(400, "invalid_status", f"status must be one of {STATUS_CHOICES}") from None


@router.get("/{video_id}", response_model=VideoOut)
def get_video(video: OwnedVideo, request: Request, farm: FarmDep) -> dict[str, Any]:
    return video_resource(video, str(request.base_url), farm.settings)


@router.get("/{video_id}/renditions/{name}", response_class=FileResponse,
            responses={307: {"description": "redirect to a short-lived URL of the object store"}})
def download_rendition(video: OwnedVideo, name: Annotated[str, Path(max_length=16)], request: Request,
                       farm: FarmDep) -> Response:
    video_id = video["id"]
    missing = f"video {video_id} has no rendition {name!r}"
    if video["status"] != VideoStatus.READY or name not in {r["name"] for r in video["renditions"] or []}:
        raise ApiError(404, "not_found", missing)
    try:
        key = rendition_key(video_id, name)
    except InvalidKey as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    return stored_response(farm, request, key, "video/mp4", missing=missing, filename=f"{video_id}-{name}.mp4")


@router.get("/{video_id}/poster.jpg", response_class=FileResponse,
            responses={307: {"description": "redirect to a short-lived URL of the object store"}})
def download_poster(video: OwnedVideo, request: Request, farm: FarmDep) -> Response:
    missing = f"video {video['id']} has no poster"
    if video["status"] != VideoStatus.READY or not video["has_poster"]:
        raise ApiError(404, "not_found", missing)
    return stored_response(farm, request, poster_key(video["id"]), "image/jpeg", missing=missing)


@router.get("/{video_id}/events", response_class=StreamingResponse, responses={429: {"model": ErrorBody}})
async def video_events(video: OwnedVideo, tenant: Tenant, request: Request, farm: FarmDep) -> StreamingResponse:
    """Server-Sent Events until the video ends; each API key holds a bounded number open (429 beyond)."""
    give_back = request.app.state.stream_slots.take(tenant)
    feed = request.app.state.event_hub.subscribe(video["id"])

    def release() -> None:
        feed.close()
        give_back()

    return live.EventStreamResponse(live.event_stream(farm, video, feed, request), release)


@router.delete("/{video_id}", status_code=204, response_class=Response)
def delete_video(video: OwnedVideo, farm: FarmDep) -> Response:
    lifecycle.cancel(farm, video)
    return Response(status_code=204)
