"""Open endpoints for operators and probes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from uploader.deps import FarmDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(farm: FarmDep) -> JSONResponse:
    checks = {"redis": _check(farm.redis.ping), "database": _check(farm.catalog.ping),
              "storage": farm.storage.status()}
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as text
        return f"error: {type(exc).__name__}"
