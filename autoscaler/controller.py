"""The control loop: observe each pool, ask the policy, pick victims, tell the backend.

Everything that decides lives in `policy.decide`; this module only moves data between the observer,
the policy and a backend, and makes the result visible (logs, metrics, a status dict for
`GET /v1/farm`). It wakes on an enqueue notification (`wake()`) as well as on a periodic resync, so a
burst reaches a decision in milliseconds instead of KEDA's 30 s poll.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from autoscaler import metrics
from autoscaler.backend import Backend, KnowsSpares, WorkerRef, choose_victims
from autoscaler.leader import AlwaysLeader, Leader
from autoscaler.policy import Decision, PolicyState, PoolConfig, Snapshot, decide
from autoscaler.starts import StartTimes

log = logging.getLogger(__name__)

Observe = Callable[[PoolConfig], tuple[Snapshot, list[WorkerRef]]]

# Renewing the lease on every enqueue notification would hammer the API server during a burst; once
# per this many seconds is plenty against a 15 s lease (client-go renews every 2 s too).
LEADER_RENEW_S = 2.0
# How often run() re-checks the stop event while waiting; bounds shutdown latency.
STOP_POLL_S = 0.2


@dataclasses.dataclass
class _PoolRuntime:
    config: PoolConfig
    backend: Backend
    state: PolicyState = dataclasses.field(default_factory=PolicyState)
    desired: int | None = None
    current: int | None = None
    last_decision: dict[str, Any] | None = None
    starts: StartTimes = dataclasses.field(default_factory=StartTimes)


class Controller:
    def __init__(
        self,
        pools: Sequence[tuple[PoolConfig, Backend]],
        observe: Observe,
        *,
        resync_s: float = 5.0,
        leader: Leader | None = None,
        on_status: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        names = [config.name for config, _ in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        self._pools = [_PoolRuntime(config, backend) for config, backend in pools]
        self._observe = observe
        self.resync_s = resync_s
        self._leader: Leader = leader if leader is not None else AlwaysLeader()
        self._on_status = on_status
        self._clock = clock
        self._wall_clock = wall_clock
        self._wake = threading.Event()
        self._leader_checked_at: float | None = None

    # -- loop --------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass as soon as possible (thread-safe; called on enqueue notifications)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Step now, then after every wake() or resync_s, until `stop` is set."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                # step() already isolates pools; this guards the loop against leader/status failures.
                log.exception("autoscaler pass failed; retrying at next wake or resync")
            self._wait_for_work(stop)

    def _wait_for_work(self, stop: threading.Event) -> None:
        deadline = self._clock() + self.resync_s
        while not stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            if self._wake.wait(timeout=min(remaining, STOP_POLL_S)):
                # Clear before stepping: a notification arriving during the step triggers another pass.
                self._wake.clear()
                return

    def step(self) -> dict[str, Decision]:
        """One pass over all pools. Returns the decision per pool; empty when not the leader."""
        if not self._is_leader():
            return {}
        decisions: dict[str, Decision] = {}
        for pool in self._pools:
            try:
                decisions[pool.config.name] = self._step_pool(pool)
            except Exception as exc:
                # One broken pool (API down, RBAC, observer bug) must not stop the others scaling.
                # An outage repeats every pass: one line each, the traceback only with --verbose.
                log.warning("pool %s: autoscaler step failed: %s: %s", pool.config.name, type(exc).__name__, exc)
                log.debug("traceback of the failed step", exc_info=True)
        self._publish_status()
        return decisions

    def _is_leader(self) -> bool:
        now = self._clock()
        if self._leader_checked_at is None or now - self._leader_checked_at >= LEADER_RENEW_S:
            self._leader_checked_at = now
            return self._leader.try_acquire_or_renew()
        return self._leader.is_leader

    # -- one pool ----------------------------------------------------------------------------------

    def _step_pool(self, pool: _PoolRuntime) -> Decision:
        snapshot, workers = self._observe(pool.config)
        pool.starts.saw(snapshot.now, (w.name for w in workers))
        # The backend owns the replica count; the observer only knows the RQ side.
        snapshot = dataclasses.replace(snapshot, current_replicas=pool.backend.current_replicas(),
                                       worker_starts_s=pool.starts.recent)
        decision = decide(snapshot, pool.config, pool.state)
        decision = self._act(pool, snapshot, decision, workers)
        self._record(pool, snapshot, decision)
        return decision

    def _act(
        self, pool: _PoolRuntime, snapshot: Snapshot, decision: Decision, workers: Sequence[WorkerRef]
    ) -> Decision:
        current = snapshot.current_replicas
        if decision.desired == current:
            pool.state = decision.state
            return decision
        if decision.desired > current:
            pool.backend.scale_to(decision.desired, [])
            pool.starts.asked(snapshot.now, decision.desired - current)
            pool.state = decision.state
            return decision
        wanted = current - decision.desired
        # Replicas that never became workers go first: they hold no job and may never take one.
        spares = pool.backend.spare_workers(workers) if isinstance(pool.backend, KnowsSpares) else []
        victims = (spares + choose_victims(workers, wanted))[:wanted]
        decision = self._fit_to_victims(pool, current, decision, victims)
        if decision.desired < current:
            pool.backend.scale_to(decision.desired, victims)
            pool.starts.withdrawn(sum(1 for v in victims if v in spares))
        return decision

    def _fit_to_victims(
        self, pool: _PoolRuntime, current: int, decision: Decision, victims: list[WorkerRef]
    ) -> Decision:
        """Shrink only by as many idle workers as we can name; keep the scale-down pending otherwise."""
        wanted = current - decision.desired
        if len(victims) == wanted:
            pool.state = decision.state
            return decision
        # The observation raced (a worker took a job, or pods not yet registered with RQ): remove only
        # the idle workers we know of, and keep surplus_since so the rest goes on the next pass
        # instead of after another full delay.
        pool.state = dataclasses.replace(decision.state, surplus_since=pool.state.surplus_since)
        desired = current - len(victims)
        note = f" (only {len(victims)} of {wanted} workers idle; removing those)"
        if not victims:
            return dataclasses.replace(
                decision, desired=current, direction="none", reason="no_idle_victims",
                message=decision.message + note,
            )  # fmt: skip
        return dataclasses.replace(decision, desired=desired, message=decision.message + note)

    # -- visibility --------------------------------------------------------------------------------

    def _record(self, pool: _PoolRuntime, snapshot: Snapshot, decision: Decision) -> None:
        name = pool.config.name
        last_reason = pool.last_decision["reason"] if pool.last_decision else None
        changed = (
            decision.desired != snapshot.current_replicas
            or decision.desired != pool.desired
            or decision.reason != last_reason
        )
        # INFO for decisions that change something (replicas or the reason), DEBUG for resync chatter.
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "pool %s: %s [%s] %s", name, decision.direction, decision.reason, decision.message,
        )  # fmt: skip
        pool.desired = decision.desired
        pool.current = snapshot.current_replicas
        pool.last_decision = {
            "desired": decision.desired,
            "direction": decision.direction,
            "reason": decision.reason,
            "message": decision.message,
            "at": self._wall_clock(),
        }
        metrics.DESIRED_REPLICAS.labels(pool=name).set(decision.desired)
        metrics.CURRENT_REPLICAS.labels(pool=name).set(snapshot.current_replicas)
        metrics.DECISIONS.labels(pool=name, direction=decision.direction, reason=decision.reason).inc()
        metrics.BACKLOG_SECONDS.labels(pool=name).set(snapshot.queued_work_s + snapshot.running_work_s)

    def status(self) -> dict:
        """JSON-able view of every pool, as served by `GET /v1/farm`."""
        return {
            "pools": {
                pool.config.name: {
                    "min": pool.config.min_replicas,
                    "max": pool.config.max_replicas,
                    "desired": pool.desired,
                    "current": pool.current,
                    "queues": list(pool.config.queues),
                    "last_decision": pool.last_decision,
                }
                for pool in self._pools
            }
        }

    def _publish_status(self) -> None:
        if self._on_status is None:
            return
        try:
            self._on_status(self.status())
        except Exception:
            log.exception("on_status callback failed")
