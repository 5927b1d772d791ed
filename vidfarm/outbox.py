"""The webhook tables, and the outbox write: one delivery row per event per subscription.

`announce` is called by `Catalog.update` inside the transaction that moves a video into ready, failed
or canceled (and by `Catalog.mark_playable` in the one that sets `playable_at`), so an event exists
exactly when its change does: neither is ever committed without the other. Reading and changing the
rows: `vidfarm/webhooks.py`. Why: docs/design.md, "Webhooks".
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vidfarm.states import VideoStatus

# The event a video's move into each terminal status announces.
EVENTS: dict[VideoStatus, str] = {
    VideoStatus.READY: "video.ready",
    VideoStatus.FAILED: "video.failed",
    VideoStatus.CANCELED: "video.deleted",
}
# Not a status: the video plays while still processing (`Catalog.mark_playable`).
PLAYABLE = "video.playable"
EVENT_TYPES = (*EVENTS.values(), PLAYABLE)

# A delivery's states: `pending` until one attempt gets a 2xx (`delivered`) or the last retry fails.
PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "failed"


class Base(DeclarativeBase):
    pass


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))  # kept in clear: every delivery is signed with it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    __tablename__ = "webhook_deliveries"

    # The `webhook-id` header: the same on every retry, so a receiver can drop a repeat.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(40), index=True)
    event: Mapped[str] = mapped_column(String(32))
    video: Mapped[dict[str, Any]] = mapped_column(JSON)  # the row as the status change left it
    status: Mapped[str] = mapped_column(String(16), index=True)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # one entry per attempt
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def announce(conn: Connection, video: Mapping[str, Any], event: str) -> int:
    """Queue `event` for each of the tenant's webhooks that asked for it, on `conn`, the caller's
    transaction. Returns how many deliveries were queued."""
    hooks = conn.execute(select(Webhook.id, Webhook.events).where(Webhook.tenant == video["tenant"])).all()
    now = datetime.now(UTC)
    rows = [
        {"id": f"msg_{uuid.uuid4().hex}", "webhook_id": hook_id, "event": event, "video": dict(video),
         "status": PENDING, "history": [], "next_attempt_at": now, "created_at": now}
        for hook_id, events in hooks if event in events
    ]
    if rows:
        conn.execute(insert(Delivery), rows)
    return len(rows)
