"""Webhooks in the catalog's database: a tenant's subscriptions, and the deliverer's side of the outbox
(claim a due delivery under a lease, no more than a tenant's share at once; record each attempt). The
tables and the outbox write itself: `vidfarm/outbox.py`.
"""

from __future__ import annotations

import base64
import secrets
import uuid
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import aliased

from vidfarm.catalog import _plain, utcnow
from vidfarm.outbox import PENDING, Delivery, Webhook

CLAIM_CANDIDATES = 5  # due rows a claim looks at: several deliverers racing still find one free
# Advisory lock keys of tenants' claims on PostgreSQL: this in the high 32 bits ("whk1"), a hash of
# the tenant in the low ones.
TENANT_LOCK_SPACE = 0x77686B31 << 32


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes one: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _webhook_out(raw: Mapping[str, Any]) -> dict[str, Any]:
    row = _plain(raw)
    return {"id": row["id"], "url": row["url"], "events": list(row["events"]), "created_at": row["created_at"]}


def _delivery_out(raw: Mapping[str, Any]) -> dict[str, Any]:
    row = _plain(raw)
    return {
        "id": row["id"], "event": row["event"], "video_id": row["video"]["id"], "status": row["status"],
        "attempts": list(row["history"]),
        "next_attempt_at": row["next_attempt_at"] if row["status"] == PENDING else None,
        "created_at": row["created_at"],
    }


class Webhooks:
    """Subscriptions and deliveries in the catalog's database (one engine, one truth)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- subscriptions ----------------------------------------------------------------------------

    def create(self, tenant: str, url: str, events: Sequence[str]) -> dict[str, Any]:
        """The new webhook, with its secret: the only time the secret is handed out."""
        row = {"id": f"wh_{uuid.uuid4().hex}", "tenant": tenant, "url": url, "events": list(events),
               "secret": new_secret(), "created_at": utcnow()}
        with self.engine.begin() as conn:
            conn.execute(insert(Webhook).values(**row))
        return {**_webhook_out(row), "secret": row["secret"]}

    def count(self, tenant: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Webhook).where(Webhook.tenant == tenant)).scalar_one()

    def list(self, tenant: str) -> list[dict[str, Any]]:
        stmt = select(Webhook.__table__).where(Webhook.tenant == tenant).order_by(Webhook.created_at)
        with self.engine.connect() as conn:
            return [_webhook_out(r) for r in conn.execute(stmt).mappings()]

    def get(self, tenant: str, webhook_id: str) -> dict[str, Any] | None:
        """Another tenant's webhook is as absent as a missing one."""
        stmt = select(Webhook.__table__).where(Webhook.id == webhook_id, Webhook.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _webhook_out(row) if row else None

    def delete(self, tenant: str, webhook_id: str) -> bool:
        """The webhook and its deliveries; one in flight finds its row gone and is not recorded."""
        with self.engine.begin() as conn:
            gone = conn.execute(delete(Webhook).where(Webhook.id == webhook_id, Webhook.tenant == tenant)).rowcount
            if gone:
                conn.execute(delete(Delivery).where(Delivery.webhook_id == webhook_id))
        return gone > 0

    def deliveries(self, webhook_id: str, limit: int = 50) -> list[dict[str, Any]]:
        stmt = (select(Delivery.__table__).where(Delivery.webhook_id == webhook_id)
                .order_by(Delivery.created_at.desc(), Delivery.id).limit(limit))
        with self.engine.connect() as conn:
            return [_delivery_out(r) for r in conn.execute(stmt).mappings()]

    # -- the deliverer's side ---------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float, tenant_in_flight: int | None = None) -> dict[str, Any] | None:
        """One due delivery, leased to `owner` for `lease_s`, with its webhook's URL and secret; None
        when nothing is due. A lease that ran out (its deliverer died) makes the row due again. With
        `tenant_in_flight`, a tenant that already has that many deliveries leased gets none more: its
        due rows wait, and other tenants' go first."""
        now = utcnow()
        due = ((Delivery.status == PENDING) & (Delivery.next_attempt_at <= now)
               & or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))
        candidates = (select(Delivery.id, Webhook.tenant).join(Webhook, Webhook.id == Delivery.webhook_id)
                      .where(due).order_by(Delivery.next_attempt_at).limit(CLAIM_CANDIDATES))
        if tenant_in_flight is not None:
            candidates = candidates.where(Webhook.tenant.not_in(_busy_tenants(now, tenant_in_flight)))
        postgres = self.engine.dialect.name == "postgresql"
        if postgres:
            # Lock due rows, passing over those other deliverers hold this instant.
            candidates = candidates.with_for_update(skip_locked=True, of=Delivery)
        # SQLite has no row locks: the compare-and-set below (on `due` again) decides which row is ours.
        leased = {"lease_owner": owner, "lease_until": now + timedelta(seconds=lease_s)}
        with self.engine.begin() as conn:
            for delivery_id, tenant in conn.execute(candidates).all():
                cas = Delivery.id == delivery_id
                if tenant_in_flight is not None:
                    if postgres and not _lock_tenant(conn, tenant):
                        continue  # another deliverer is claiming for this tenant right now
                    # Counted again in the statement that leases: on SQLite it runs under the
                    # database's one write lock, on PostgreSQL under the tenant's lock, after the
                    # claims made before it committed; either way no race takes a tenant past its share.
                    cas &= _in_flight(tenant, now) < tenant_in_flight
                if conn.execute(update(Delivery).where(cas, due).values(**leased)).rowcount:
                    return self._claimed(conn, delivery_id)
        return None

    @staticmethod
    def _claimed(conn: Connection, delivery_id: str) -> dict[str, Any]:
        stmt = (select(Delivery.__table__, Webhook.url, Webhook.secret)
                .join(Webhook, Webhook.id == Delivery.webhook_id).where(Delivery.id == delivery_id))
        return _plain(conn.execute(stmt).mappings().one())

    def record(self, delivery: Mapping[str, Any], attempt: dict[str, Any], status: str,
               next_attempt_at: datetime | None = None) -> bool:
        """One attempt's outcome, if `delivery`'s lease is still its owner's (a deliverer that outlived
        its lease lost the row to another; that one's record counts). Ends the lease."""
        stmt = update(Delivery).where(Delivery.id == delivery["id"], Delivery.lease_owner == delivery["lease_owner"],
                                      Delivery.status == PENDING)
        fields = {"history": [*delivery["history"], attempt], "status": status,
                  "lease_owner": None, "lease_until": None}
        if next_attempt_at is not None:
            fields["next_attempt_at"] = next_attempt_at
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(**fields)).rowcount > 0


def _leased(delivery: Any, now: datetime) -> ColumnElement[bool]:
    """An attempt in flight: a pending row whose lease has not run out."""
    return (delivery.status == PENDING) & (delivery.lease_until >= now)


def _busy_tenants(now: datetime, tenant_in_flight: int) -> Select[Any]:
    """Tenants with `tenant_in_flight` or more deliveries in flight."""
    return (select(Webhook.tenant).join(Delivery, Delivery.webhook_id == Webhook.id).where(_leased(Delivery, now))
            .group_by(Webhook.tenant).having(func.count() >= tenant_in_flight))


def _in_flight(tenant: str, now: datetime) -> Any:
    """How many of `tenant`'s deliveries are in flight, as a subquery of the leasing UPDATE."""
    leased, hook = aliased(Delivery), aliased(Webhook)
    return (select(func.count()).select_from(leased).join(hook, hook.id == leased.webhook_id)
            .where(hook.tenant == tenant, _leased(leased, now)).scalar_subquery())


def _lock_tenant(conn: Connection, tenant: str) -> bool:
    """The tenant's claim lock until this transaction ends, if no other claim holds it (waiting could
    deadlock two claims that each hold one tenant and want the other's)."""
    key = TENANT_LOCK_SPACE | zlib.crc32(tenant.encode())
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar_one())
