"""The HTTP API v1: upload, status, downloads, live events, cancel, and a view of the farm.

`create_app` only assembles: the routes live in `uploader.routes` (one router per resource), their
dependencies in `uploader.deps`, the error handlers in `uploader.errors`.
"""

from __future__ import annotations

from fastapi import FastAPI

from uploader import errors, playback
from uploader.auth import KeyRing
from uploader.middleware import MIDDLEWARE
from uploader.routes import ROUTERS
from vidfarm.farm import Farm


def create_app(farm: Farm) -> FastAPI:
    app = FastAPI(
        title="vidfarm",
        version="1",
        description="Upload videos, get 1080p/720p H.264 renditions from an autoscaling farm.",
        exception_handlers=errors.HANDLERS,
    )
    farm.open()
    app.state.farm = farm
    app.state.keys = KeyRing(farm.settings.api_keys)
    playback.install(app, farm)
    for middleware in MIDDLEWARE:
        app.middleware("http")(middleware)
    for router in ROUTERS:
        app.include_router(router)
    return app
