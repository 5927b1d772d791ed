"""The typed dependencies routes declare: the farm, the caller's tenant, a video the caller owns."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from uploader.errors import ApiError
from vidfarm.catalog import VideoRow
from vidfarm.farm import Farm
from vidfarm.storage import is_video_id


def _farm(request: Request) -> Farm:
    return request.app.state.farm


def _tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    return request.app.state.keys.tenant(authorization)


FarmDep = Annotated[Farm, Depends(_farm)]
Tenant = Annotated[str, Depends(_tenant)]
VideoId = Annotated[str, Path(description="Video id (32 hex characters)", max_length=64)]


def _owned_video(video_id: VideoId, tenant: Tenant, farm: FarmDep) -> VideoRow:
    """Another tenant's video is indistinguishable from a missing one."""
    video = farm.catalog.get(video_id) if is_video_id(video_id) else None
    if video is None or video["tenant"] != tenant:
        raise ApiError(404, "not_found", f"no video with id {video_id!r}")
    return video


OwnedVideo = Annotated[VideoRow, Depends(_owned_video)]
