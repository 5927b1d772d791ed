"""The deliverer: sends the outbox's webhook events, each at least once, signed as Standard Webhooks.

Any number run at once (a thread pool in each API process, `vidfarm deliver` processes): each claims
one due delivery at a time under a lease in the database, so two never send the same row together,
and a deliverer killed mid-attempt leaves a lease that simply runs out; whoever claims next sends
it again (receivers drop the repeat by its `webhook-id`). An attempt ends by its deadline
(`VIDFARM_WEBHOOK_TIMEOUT_S`, for all of it), well inside its lease, so the lease never runs out
under a live attempt and every attempt is recorded. A tenant has at most
`VIDFARM_WEBHOOK_TENANT_IN_FLIGHT` deliveries in flight farm-wide, so one tenant's slow receiver
holds that many threads, never every thread. A failed attempt is retried after the next of
`VIDFARM_WEBHOOK_RETRY_DELAYS_S`, with jitter so that a receiver coming back is not hit by every
retry at once; after the last the delivery gives up, its history kept. Why: docs/design.md,
"Webhooks".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from vidfarm import netguard
from vidfarm.catalog import utcnow
from vidfarm.outbox import DELIVERED, GAVE_UP, PENDING
from vidfarm.settings import Settings
from vidfarm.webhooks import Webhooks

log = logging.getLogger(__name__)

THREADS = 4  # a receiver that times out holds one thread, not every tenant's deliveries
IDLE_POLL_S = 1.0
JITTER = 0.1  # each retry delay is stretched or shrunk by up to this fraction
# A lease outlives its attempt's deadline by this much: rendering the event, writing the outcome, and
# clocks of deliverers on different hosts that disagree a little.
LEASE_MARGIN_S = 15.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: HMAC-SHA256 of `id.timestamp.body` under the secret's bytes, base64."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# The video's public document as the API shows it, from its catalog row. The API renders it (its
# resources decide what a tenant sees), and whoever composes a deliverer passes it in: the core
# imports no role.
Render = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def payload(delivery: Mapping[str, Any], render: Render) -> bytes:
    """The event: its type, when it happened, and the video's public document. Rendered per attempt,
    so the playback links in it are fresh even on the last retry."""
    event = {"type": delivery["event"], "timestamp": delivery["created_at"], "data": render(delivery["video"])}
    return json.dumps(event, separators=(",", ":")).encode()


class Deliverer:
    def __init__(self, settings: Settings, webhooks: Webhooks, render: Render, *,
                 rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.webhooks = webhooks
        self.render = render
        self.rand = rand
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def lease_s(self) -> float:
        """Longer than any attempt: the attempt's deadline covers all of it (resolve, connect, send,
        read the status), and the margin what happens around it."""
        return self.settings.webhook_timeout_s + LEASE_MARGIN_S

    def step(self, owner: str) -> bool:
        """Claim one due delivery and attempt it; False when nothing was due."""
        delivery = self.webhooks.claim(owner, self.lease_s, self.settings.webhook_tenant_in_flight)
        if delivery is None:
            return False
        attempt = self.attempt(delivery)
        status, next_at = self.outcome(delivery, attempt)
        if not self.webhooks.record(delivery, attempt, status, next_at):
            # Only a webhook deleted meanwhile, or a process stalled past its lease (paused, swapping).
            log.warning("webhook delivery %s: outcome not recorded (lease lost or webhook deleted)", delivery["id"])
        elif status == GAVE_UP:
            log.warning("webhook delivery %s to %s gave up after %d attempts", delivery["id"], delivery["url"],
                        len(delivery["history"]) + 1)
        return True

    def attempt(self, delivery: Mapping[str, Any]) -> dict[str, Any]:
        """POST the event once, all of it within the deadline; what happened, as the delivery history
        shows it."""
        timeout_s = self.settings.webhook_timeout_s
        started, at = time.monotonic(), utcnow()
        deadline = started + timeout_s
        status_code, error = None, None
        try:
            target = netguard.resolve(delivery["url"], self.settings.webhook_allow_private, timeout_s)
            status_code = netguard.post(target, *self.request(delivery), deadline,
                                        self.settings.webhook_response_max_bytes)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
        except netguard.AddressRefused as exc:
            error = str(exc)
        except TimeoutError:  # the deadline, or a connect or read that would have passed it
            error = f"timed out: no response within {timeout_s:g} s (VIDFARM_WEBHOOK_TIMEOUT_S)"
        except netguard.ResponseTooLarge as exc:
            error = f"{exc} (VIDFARM_WEBHOOK_RESPONSE_MAX_BYTES)"
        except OSError as exc:  # refused, reset, TLS: the receiver's trouble, retried
            error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception:  # noqa: BLE001 - a bug of ours still counts as an attempt, or it would repeat unrecorded
            log.exception("webhook delivery %s: attempt failed", delivery["id"])
            error = "internal error in the deliverer (logged)"
        return {"at": at.isoformat(), "status_code": status_code, "error": error,
                "duration_ms": round((time.monotonic() - started) * 1000)}

    def request(self, delivery: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = payload(delivery, self.render)
        timestamp = int(time.time())
        return body, {
            "Content-Type": "application/json",
            "User-Agent": "vidfarm-webhooks/1",
            "webhook-id": delivery["id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery["secret"], delivery["id"], timestamp, body),
        }

    def outcome(self, delivery: Mapping[str, Any], attempt: Mapping[str, Any]) -> tuple[str, datetime | None]:
        """Delivered, or pending until the next retry, or given up after the last."""
        if attempt["error"] is None:
            return DELIVERED, None
        failures = len(delivery["history"]) + 1
        delays = self.settings.webhook_retry_delays_s
        if failures > len(delays):
            return GAVE_UP, None
        delay = delays[failures - 1] * (1 + JITTER * (2 * self.rand() - 1))
        return PENDING, utcnow() + timedelta(seconds=delay)

    # -- running ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event, threads: int = THREADS) -> list[threading.Thread]:
        """Start `threads` delivering until `stop` is set; returns them (to join)."""
        started = [threading.Thread(target=self._loop, args=(stop, f"{self.name}:{n}"), name=f"deliver-{n}",
                                    daemon=True) for n in range(threads)]
        for thread in started:
            thread.start()
        return started

    def _loop(self, stop: threading.Event, owner: str) -> None:
        while not stop.is_set():
            try:
                busy = self.step(owner)
            except Exception:  # noqa: BLE001 - the database may be away for a while; keep trying
                log.exception("webhook deliverer: pass failed")
                busy = False
            if not busy:
                stop.wait(IDLE_POLL_S * (0.5 + self.rand()))  # spread the polls of many deliverers
