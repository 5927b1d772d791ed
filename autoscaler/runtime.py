"""What runs beside the controller in every autoscaler process, local or in a cluster: the enqueue
listener that wakes it, the reconciler, and the status record `GET /v1/farm` shows."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import redis

from autoscaler.controller import Controller
from vidfarm import presence
from vidfarm.farm import Farm
from vidfarm.jobs import ENQUEUED_CHANNEL
from vidfarm.reconciler import Reconciler

log = logging.getLogger(__name__)

STATUS_TTL_S = 300


def publish_status(farm: Farm, status: dict) -> None:
    try:
        farm.redis.set(presence.AUTOSCALER_STATUS_KEY, json.dumps(status), ex=STATUS_TTL_S)
    except redis.RedisError as exc:
        log.debug("autoscaler status not published: %s", exc)


def listen_for_enqueues(farm: Farm, controller: Controller, stop: threading.Event) -> None:
    """Wake the controller the moment a job is queued (the periodic resync is only a safety net)."""
    while not stop.is_set():
        try:
            pubsub = farm.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(ENQUEUED_CHANNEL)
            while not stop.is_set():
                if pubsub.get_message(timeout=0.5) is not None:
                    controller.wake()
        except redis.RedisError as exc:
            log.warning("enqueue notifications interrupted (%s); reconnecting", type(exc).__name__)
            stop.wait(1.0)


def reconcile_forever(farm: Farm, every_s: float, stop: threading.Event,
                      may_act: Callable[[], bool] = lambda: True) -> None:
    reconciler = Reconciler(farm)
    while not stop.wait(every_s):
        if not may_act():
            continue  # only the leader re-queues, so two replicas never race each other
        try:
            reconciler.step()
        except Exception as exc:  # noqa: BLE001 - Redis or the database away: try again next pass
            log.warning("reconciler pass failed: %s: %s", type(exc).__name__, exc)


def start(farm: Farm, controller: Controller, stop: threading.Event, *, resync_s: float,
          may_act: Callable[[], bool] = lambda: True) -> list[threading.Thread]:
    """Run the controller, the enqueue listener and the reconciler in daemon threads (returned, so a
    caller can wait for the controller's last pass before it gives up leadership)."""
    threads = [
        threading.Thread(target=listen_for_enqueues, args=(farm, controller, stop), name="enqueues"),
        threading.Thread(target=reconcile_forever, args=(farm, resync_s, stop, may_act), name="reconciler"),
        threading.Thread(target=controller.run, args=(stop,), name="controller"),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    return threads
