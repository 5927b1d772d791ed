"""The replica policy: a pure function from what the queues look like to how many workers we want.

Written in the spirit of Kubernetes' ``replica_calculator.go``: no I/O, no clocks, no globals. Everything
the policy needs arrives in a :class:`Snapshot`, a :class:`PoolConfig` and the :class:`PolicyState` that
the previous call returned. That keeps every rule testable with a table and with property tests.

What it does differently from KEDA's Redis scaler (docs/design.md says why):

* running jobs count as needing a worker (KEDA reads ``LLEN`` only and scales a busy farm down);
* it never asks for fewer replicas than there are busy workers;
* it scales up at once, and scales down only after the surplus has lasted about as long as starting a
  worker takes (ski rental, ``scale_down_delay``): a delay learned from the measured starts instead of
  a fixed one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Float division can land a hair above an integer (3 / 0.1 == 30.000000000000004); without this
# slack, ceil() would ask for one worker too many.
_CEIL_SLACK = 1e-9


@dataclass(frozen=True)
class PoolConfig:
    name: str
    queues: tuple[str, ...]
    min_replicas: int = 0
    max_replicas: int = 4
    target_jobs_per_worker: float = 1.0
    target_backlog_seconds: float | None = None  # acceptable drain seconds per worker; None = off
    max_scale_up_step: int | None = None  # most replicas added per decision; None = unlimited
    scale_down_after_s: float = 60.0  # the scale-down delay until a worker start has been measured
    # Bounds of the learned delay (scale_down_delay); equal bounds make the delay fixed.
    scale_down_min_s: float = 10.0
    scale_down_max_s: float = 600.0

    def __post_init__(self) -> None:
        # Validate here so a bad pools.yaml fails at load time with the field named, not mid-loop.
        if not self.name:
            raise ValueError("pool name must not be empty")
        if not self.queues:
            raise ValueError(f"pool {self.name!r}: queues must list at least one queue")
        if self.min_replicas < 0:
            raise ValueError(f"pool {self.name!r}: min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"pool {self.name!r}: max_replicas must be >= 1 and >= min_replicas "
                f"({self.min_replicas}), got {self.max_replicas}"
            )
        if not self.target_jobs_per_worker > 0:
            raise ValueError(
                f"pool {self.name!r}: target_jobs_per_worker must be > 0, got {self.target_jobs_per_worker}"
            )
        if self.target_backlog_seconds is not None and not self.target_backlog_seconds > 0:
            raise ValueError(
                f"pool {self.name!r}: target_backlog_seconds must be > 0 or null, got {self.target_backlog_seconds}"
            )
        if self.max_scale_up_step is not None and self.max_scale_up_step < 1:
            raise ValueError(
                f"pool {self.name!r}: max_scale_up_step must be >= 1 or null, got {self.max_scale_up_step}"
            )
        if not self.scale_down_after_s >= 0:
            raise ValueError(f"pool {self.name!r}: scale_down_after_s must be >= 0, got {self.scale_down_after_s}")
        if not 0 <= self.scale_down_min_s <= self.scale_down_max_s:
            raise ValueError(
                f"pool {self.name!r}: scale_down_min_s must be >= 0 and <= scale_down_max_s "
                f"({self.scale_down_max_s}), got {self.scale_down_min_s}"
            )


@dataclass(frozen=True)
class Snapshot:
    now: float  # monotonic-ish seconds
    queued_jobs: int
    running_jobs: int
    idle_workers: int
    busy_workers: int  # workers transcoding right now (never go below this)
    current_replicas: int
    queued_work_s: float = 0.0  # estimated seconds of work queued (source durations * cost factor)
    running_work_s: float = 0.0  # estimated remaining seconds of running jobs
    # Recent worker starts, seconds from the decision that asked for a replica to its worker's first
    # heartbeat (autoscaler.starts), oldest first. Empty until one has been measured.
    worker_starts_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class PolicyState:
    surplus_since: float | None = None  # when the pool first had more replicas than needed


@dataclass(frozen=True)
class Decision:
    desired: int
    direction: str  # "up" | "down" | "none"
    reason: str  # machine-friendly reason code
    message: str  # human-readable sentence for logs
    state: PolicyState


@dataclass(frozen=True)
class _Target:
    """The replica count the load calls for, after bounds, and which rule set it."""

    replicas: int
    reason: str
    message: str


def _ceil_div(amount: float, per_worker: float) -> int:
    return max(0, math.ceil(amount / per_worker - _CEIL_SLACK))


def needed_for_load(snapshot: Snapshot, config: PoolConfig) -> tuple[int, str]:
    """Workers the load needs before any bound, and the rule that asked for the most."""
    # Queued AND running jobs: a running transcode occupies a worker just as much as a queued one
    # will. Reading only the queue length is exactly KEDA's bug with RQ.
    jobs = max(0, snapshot.queued_jobs) + max(0, snapshot.running_jobs)
    by_jobs = _ceil_div(jobs, config.target_jobs_per_worker)
    if config.target_backlog_seconds is None:
        return by_jobs, "queue_backlog"
    # AWS "backlog per instance": enough workers to drain the estimated work within the target.
    work_s = max(0.0, snapshot.queued_work_s) + max(0.0, snapshot.running_work_s)
    by_work = _ceil_div(work_s, config.target_backlog_seconds)
    if by_work > by_jobs:
        return by_work, "work_backlog"
    return by_jobs, "queue_backlog"


def _busy_floor(snapshot: Snapshot, config: PoolConfig) -> int:
    # Never ask for fewer replicas than busy workers: removing one would kill a transcode.
    # The floor alone never grows the pool past max_replicas, though: if max was lowered under a busy
    # pool we hold the current size (no kill) instead of adding replicas (over budget).
    return min(max(0, snapshot.busy_workers), max(config.max_replicas, snapshot.current_replicas))


def bounded_target(snapshot: Snapshot, config: PoolConfig) -> _Target:
    """The load's need clamped to [min, max] and raised to the busy floor, with the binding rule."""
    needed, load_reason = needed_for_load(snapshot, config)
    clamped = min(max(needed, config.min_replicas), config.max_replicas)
    busy_floor = _busy_floor(snapshot, config)
    if busy_floor > clamped:
        # More workers are busy than the bounded load asks for (e.g. target_jobs_per_worker > 1, or max
        # lowered): they keep their replicas until their jobs end.
        return _Target(busy_floor, "busy_floor", f"{snapshot.busy_workers} workers are busy")
    if needed > config.max_replicas:
        # Budget cap: the load wants more than the pool may have.
        return _Target(
            config.max_replicas, "at_max", f"load needs {needed} workers, capped at max {config.max_replicas}"
        )
    if needed < config.min_replicas:
        # The operator wants a warm floor even when idle.
        return _Target(config.min_replicas, "min_replicas", f"load needs {needed}, keeping min {config.min_replicas}")
    return _Target(needed, load_reason, _load_message(snapshot, config, needed))


def _load_message(snapshot: Snapshot, config: PoolConfig, needed: int) -> str:
    text = (
        f"{snapshot.queued_jobs} queued + {snapshot.running_jobs} running jobs "
        f"at {config.target_jobs_per_worker:g}/worker"
    )
    if config.target_backlog_seconds is not None:
        work_s = snapshot.queued_work_s + snapshot.running_work_s
        text += f", {work_s:.0f}s of work at {config.target_backlog_seconds:g}s/worker"
    return f"{text} -> {needed} workers"


def _scale_up(snapshot: Snapshot, config: PoolConfig, target: _Target) -> Decision:
    current = snapshot.current_replicas
    desired = target.replicas
    reason, message = target.reason, target.message
    if config.max_scale_up_step is not None and desired - current > config.max_scale_up_step:
        # Step limit protects a small cluster from a thundering herd of pod starts. It never holds the
        # pool under min or under its busy workers: those floors are not "scaling up for load".
        floor = max(config.min_replicas, _busy_floor(snapshot, config))
        desired = max(current + config.max_scale_up_step, floor)
        if desired < target.replicas:
            reason = "step_limit"
            message = f"{target.message}; adding at most {config.max_scale_up_step} per decision"
    # Any scale up cancels a pending scale-down: the surplus is gone.
    return Decision(
        desired=desired,
        direction="up",
        reason=reason,
        message=f"scale up {current} -> {desired}: {message}",
        state=PolicyState(surplus_since=None),
    )


def scale_down_delay(snapshot: Snapshot, config: PoolConfig) -> float:
    """How long a surplus must last before idle workers go: about what starting one costs.

    Ski rental: an idle worker costs its rent every second; letting it go and starting one again when
    work comes costs a start (billed while it boots, and the wait of whoever needs it). Keeping it as
    long as a start takes, then letting it go, never costs more than twice the best choice made with
    hindsight, whatever the arrivals."""
    starts = snapshot.worker_starts_s
    if not starts:
        # Nothing measured yet (a new autoscaler, a pool that never grew): the configured delay.
        return config.scale_down_after_s
    # The median: one pod stuck Pending for a node, or one cached image, does not move it.
    estimate = statistics.median(starts)
    # Bounded: under the minimum a pool would flap between passes; the maximum caps what a cluster
    # short of capacity for a while can make the pool pay in idle workers.
    return min(max(estimate, config.scale_down_min_s), config.scale_down_max_s)


def _delay_source(snapshot: Snapshot) -> str:
    starts = snapshot.worker_starts_s
    if not starts:
        return "configured delay"
    return f"median start {statistics.median(starts):.0f}s of the last {len(starts)}"


def _scale_down(snapshot: Snapshot, config: PoolConfig, state: PolicyState, target: _Target) -> Decision:
    current = snapshot.current_replicas
    # Remember when the surplus began; it must last the delay without a break, so a brief lull between
    # two uploads does not throw away warm workers.
    since = snapshot.now if state.surplus_since is None else state.surplus_since
    waited = snapshot.now - since
    delay = scale_down_delay(snapshot, config)
    if waited < delay:
        remaining = delay - waited
        return Decision(
            desired=current,
            direction="none",
            reason="hold_scale_down_delay",
            message=(
                f"holding {current} replicas: {target.message}; surplus for {waited:.0f}s, "
                f"scale down in {remaining:.0f}s ({_delay_source(snapshot)})"
            ),
            state=PolicyState(surplus_since=since),
        )
    desired = target.replicas
    # Going to zero gets its own code so dashboards can tell "farm asleep" from "farm shrank".
    reason = "scale_to_zero" if desired == 0 else "idle_scale_down"
    return Decision(
        desired=desired,
        direction="down",
        reason=reason,
        message=f"scale down {current} -> {desired} after {waited:.0f}s of surplus: {target.message}",
        state=PolicyState(surplus_since=None),
    )


def _hold(snapshot: Snapshot, target: _Target) -> Decision:
    # The pool has what the load needs; clear any pending scale-down so the delay restarts next time.
    reason = "steady" if target.reason in ("queue_backlog", "work_backlog") else target.reason
    return Decision(
        desired=snapshot.current_replicas,
        direction="none",
        reason=reason,
        message=f"keeping {snapshot.current_replicas} replicas: {target.message}",
        state=PolicyState(surplus_since=None),
    )


def decide(snapshot: Snapshot, config: PoolConfig, state: PolicyState) -> Decision:
    """Desired replicas for one pool, with a reason code and a sentence for the logs."""
    target = bounded_target(snapshot, config)
    if target.replicas > snapshot.current_replicas:
        return _scale_up(snapshot, config, target)
    if target.replicas < snapshot.current_replicas:
        return _scale_down(snapshot, config, state, target)
    return _hold(snapshot, target)
