"""The HTTP API v1: upload, status, downloads, live events, cancel, and a view of the farm.

`create_app` only assembles: the routes live in `uploader.routes` (one router per resource), their
dependencies in `uploader.deps`, the error handlers in `uploader.errors`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from uploader import errors, live, playback
from uploader.auth import KeyRing
from uploader.middleware import ApiMiddleware
from uploader.public_url import PublicUrl
from uploader.resources import webhook_document
from uploader.routes import ROUTERS
from vidfarm.deliver import IDLE_POLL_S, Deliverer
from vidfarm.farm import Farm


def create_app(farm: Farm) -> FastAPI:
    app = FastAPI(
        title="vidfarm",
        version="1",
        description="Upload videos, get 1080p/720p H.264 renditions from an autoscaling farm.",
        exception_handlers=errors.HANDLERS,
        lifespan=_lifespan(farm),
    )
    farm.open()
    app.state.farm = farm
    app.state.keys = KeyRing(farm.settings.api_keys)
    # Every live stream of this process listens through one Redis connection (uploader/live.py).
    app.state.event_hub = live.EventHub(farm.settings.redis_url or "")
    app.state.stream_slots = live.StreamSlots(farm.settings.max_event_streams_per_tenant)
    app.add_middleware(ApiMiddleware, settings=farm.settings, keys=app.state.keys)
    if farm.settings.public_url:
        app.add_middleware(PublicUrl, public_url=farm.settings.public_url)
    app.include_router(playback.router(farm))
    for router in ROUTERS:
        app.include_router(router)
    return app


def _lifespan(farm: Farm) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    delivering = _delivering(farm) if farm.settings.webhook_deliver_in_api else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if delivering is not None:
                await stack.enter_async_context(delivering(app))
            try:
                yield
            finally:
                await app.state.event_hub.close()

    return lifespan


def _delivering(farm: Farm) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Webhook deliverers in this process while it serves: every API replica then delivers, and a
    farm needs no extra process for webhooks (leases in the catalog keep them from colliding)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        threads = Deliverer(farm.settings, farm.webhooks, webhook_document(farm.settings)).run(stop)
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                # An idle one stops within a poll; one mid-attempt finishes alone (its lease covers it).
                thread.join(timeout=2 * IDLE_POLL_S)

    return lifespan
