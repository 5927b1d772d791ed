"""A tenant's webhooks: register (the signing secret is shown once), list, read, delete, and the
delivery history of each. The events themselves are written by the catalog (vidfarm/outbox.py) and
sent by the deliverer (vidfarm/deliver.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from uploader.deps import FarmDep, Tenant
from uploader.errors import ApiError
from uploader.resources import ERRORS
from vidfarm import netguard
from vidfarm.outbox import EVENT_TYPES

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS)

MAX_WEBHOOKS = 20  # per tenant: each one multiplies every event into another delivery


class WebhookIn(BaseModel):
    url: str = Field(max_length=netguard.MAX_URL_LENGTH, description="http(s) URL on a public address")
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES), description=", ".join(EVENT_TYPES))


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: str


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_...: verify signatures with it; shown only here")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str
    event: str
    video_id: str
    status: str
    attempts: list[AttemptOut]
    next_attempt_at: str | None
    created_at: str


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


WebhookId = Annotated[str, Path(max_length=64)]


def _owned_webhook(webhook_id: WebhookId, tenant: Tenant, farm: FarmDep) -> dict[str, Any]:
    """Another tenant's webhook is indistinguishable from a missing one."""
    webhook = farm.webhooks.get(tenant, webhook_id)
    if webhook is None:
        raise ApiError(404, "not_found", f"no webhook with id {webhook_id!r}")
    return webhook


OwnedWebhook = Annotated[dict[str, Any], Depends(_owned_webhook)]


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(body: WebhookIn, tenant: Tenant, farm: FarmDep) -> dict[str, Any]:
    unknown = sorted(set(body.events) - set(EVENT_TYPES))
    if unknown:
        raise ApiError(422, "invalid_events", f"unknown events {', '.join(unknown)}; "
                                              f"choose from {', '.join(EVENT_TYPES)}")
    try:
        netguard.resolve(body.url, farm.settings.webhook_allow_private, farm.settings.webhook_timeout_s)
    except netguard.AddressRefused as exc:
        raise ApiError(422, "invalid_url", str(exc)) from None
    if farm.webhooks.count(tenant) >= MAX_WEBHOOKS:
        raise ApiError(422, "too_many_webhooks", f"a tenant may register at most {MAX_WEBHOOKS} webhooks")
    return farm.webhooks.create(tenant, body.url, list(dict.fromkeys(body.events)))


@router.get("", response_model=WebhookList)
def list_webhooks(tenant: Tenant, farm: FarmDep) -> dict[str, Any]:
    return {"items": farm.webhooks.list(tenant)}


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook: OwnedWebhook) -> dict[str, Any]:
    return webhook


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
def delete_webhook(webhook: OwnedWebhook, tenant: Tenant, farm: FarmDep) -> Response:
    farm.webhooks.delete(tenant, webhook["id"])
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
def list_deliveries(webhook: OwnedWebhook, farm: FarmDep,
                    limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """Newest first, each with every attempt: when, the receiver's status code, the error."""
    return {"items": farm.webhooks.deliveries(webhook["id"], limit)}
