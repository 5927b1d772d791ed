"""The replica policy: one table row per rule, then property tests of the invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import Decision, PolicyState, PoolConfig, Snapshot, decide, scale_down_delay


def pool(**overrides: object) -> PoolConfig:
    fields: dict = {"name": "cpu", "queues": ("cpu",), "min_replicas": 0, "max_replicas": 4}
    fields.update(overrides)
    return PoolConfig(**fields)


def snap(
    *,
    now: float = 1000.0,
    queued: int = 0,
    running: int = 0,
    idle: int = 0,
    busy: int = 0,
    current: int = 0,
    queued_work_s: float = 0.0,
    running_work_s: float = 0.0,
    starts: tuple[float, ...] = (),
) -> Snapshot:
    return Snapshot(now, queued, running, idle, busy, current, queued_work_s, running_work_s, worker_starts_s=starts)


NO_SURPLUS = PolicyState()
LONG_SURPLUS = PolicyState(surplus_since=0.0)  # now=1000: surplus for 1000 s, past any delay below


# fmt: off
TABLE = [
    # id, config overrides, snapshot, state, expected (desired, direction, reason)
    ("burst from zero scales up at once",
     {}, snap(queued=3), NO_SURPLUS, (3, "up", "queue_backlog")),
    ("running jobs count: all busy, nothing queued -> keep them (KEDA's LLEN bug)",
     {}, snap(running=3, busy=3, current=3), NO_SURPLUS, (3, "none", "steady")),
    ("queued plus running",
     {}, snap(queued=1, running=2, busy=2, current=2), NO_SURPLUS, (3, "up", "queue_backlog")),
    ("capped at max",
     {}, snap(queued=10), NO_SURPLUS, (4, "up", "at_max")),
    ("at max already: hold with at_max",
     {}, snap(queued=10, running=4, busy=4, current=4), NO_SURPLUS, (4, "none", "at_max")),
    ("below min: raise to min",
     {"min_replicas": 2}, snap(current=0), NO_SURPLUS, (2, "up", "min_replicas")),
    ("at min and idle: hold at min",
     {"min_replicas": 2}, snap(idle=2, current=2), LONG_SURPLUS, (2, "none", "min_replicas")),
    ("jobs per worker target rounds up",
     {"target_jobs_per_worker": 2.0}, snap(queued=5), NO_SURPLUS, (3, "up", "queue_backlog")),
    ("float target does not overshoot (3 / 0.1 is not 31)",
     {"target_jobs_per_worker": 0.1, "max_replicas": 100}, snap(queued=3), NO_SURPLUS,
     (30, "up", "queue_backlog")),
    ("backlog seconds target asks for more than the job count",
     {"target_backlog_seconds": 300.0}, snap(queued=1, queued_work_s=1000.0), NO_SURPLUS,
     (4, "up", "work_backlog")),
    ("backlog seconds includes running work",
     {"target_backlog_seconds": 300.0}, snap(running=1, busy=1, current=1, running_work_s=500.0),
     NO_SURPLUS, (2, "up", "work_backlog")),
    ("backlog seconds off: work seconds ignored",
     {}, snap(queued=1, queued_work_s=10_000.0), NO_SURPLUS, (1, "up", "queue_backlog")),
    ("job count wins when larger than the backlog target",
     {"target_backlog_seconds": 10_000.0}, snap(queued=3, queued_work_s=100.0), NO_SURPLUS,
     (3, "up", "queue_backlog")),
    ("step limit bounds a scale up",
     {"max_scale_up_step": 2, "max_replicas": 10}, snap(queued=9, current=1, idle=1), NO_SURPLUS,
     (3, "up", "step_limit")),
    ("step limit does not hold the pool under min",
     {"max_scale_up_step": 1, "min_replicas": 3}, snap(current=0), NO_SURPLUS, (3, "up", "min_replicas")),
    ("step limit larger than the need: not mentioned",
     {"max_scale_up_step": 5}, snap(queued=2), NO_SURPLUS, (2, "up", "queue_backlog")),
    ("surplus starts: hold and remember when",
     {}, snap(idle=2, current=2), NO_SURPLUS, (2, "none", "hold_scale_down_delay")),
    ("surplus shorter than the delay: hold",
     {}, snap(idle=2, current=2), PolicyState(surplus_since=950.0), (2, "none", "hold_scale_down_delay")),
    ("surplus as long as the delay: scale down",
     {}, snap(queued=0, running=1, busy=1, idle=2, current=3), PolicyState(surplus_since=940.0),
     (1, "down", "idle_scale_down")),
    ("idle for the delay: to zero",
     {}, snap(idle=2, current=2), PolicyState(surplus_since=940.0), (0, "down", "scale_to_zero")),
    ("zero delay: scale down on the first pass",
     {"scale_down_after_s": 0.0}, snap(idle=2, current=2), NO_SURPLUS, (0, "down", "scale_to_zero")),
    ("scale down stops at min",
     {"min_replicas": 1}, snap(idle=3, current=3), LONG_SURPLUS, (1, "down", "idle_scale_down")),
    ("never below busy workers when the job target would allow it",
     {"target_jobs_per_worker": 4.0}, snap(running=4, busy=4, current=4), LONG_SURPLUS,
     (4, "none", "busy_floor")),
    ("busy floor during scale down",
     {"target_jobs_per_worker": 4.0}, snap(running=3, busy=3, idle=2, current=5), LONG_SURPLUS,
     (3, "down", "idle_scale_down")),
    ("max lowered under a busy pool: shrink only the idle ones, kill nobody",
     {"max_replicas": 2}, snap(running=4, busy=4, idle=2, current=6), LONG_SURPLUS,
     (4, "down", "idle_scale_down")),
    ("busy floor never grows the pool past max",
     {"max_replicas": 2}, snap(running=5, busy=5, current=2), NO_SURPLUS, (2, "none", "at_max")),
    ("current above max with no load: scale down after the delay",
     {"max_replicas": 2}, snap(idle=5, current=5), LONG_SURPLUS, (0, "down", "scale_to_zero")),
    ("learned delay: surplus shorter than the median start holds",
     {}, snap(idle=2, current=2, starts=(28.0, 31.0, 30.0)), PolicyState(surplus_since=971.0),
     (2, "none", "hold_scale_down_delay")),
    ("learned delay: surplus as long as the median start scales down, before the configured 60 s",
     {}, snap(idle=2, current=2, starts=(28.0, 31.0, 30.0)), PolicyState(surplus_since=970.0),
     (0, "down", "scale_to_zero")),
    ("learned delay: one start stuck for an hour does not move the median",
     {}, snap(idle=1, current=1, starts=(30.0, 3600.0, 29.0)), PolicyState(surplus_since=970.0),
     (0, "down", "scale_to_zero")),
    ("demand returns during the delay: back to steady",
     {}, snap(queued=1, running=1, busy=1, idle=1, current=2), PolicyState(surplus_since=990.0),
     (2, "none", "steady")),
]
# fmt: on


@pytest.mark.parametrize(
    ("overrides", "snapshot", "state", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_rule(overrides: dict, snapshot: Snapshot, state: PolicyState, expected: tuple) -> None:
    decision = decide(snapshot, pool(**overrides), state)
    assert (decision.desired, decision.direction, decision.reason) == expected
    assert decision.message  # every decision explains itself


@pytest.mark.parametrize(
    ("starts", "delay"),
    [
        ((), 60.0),  # nothing measured yet: the configured delay
        ((20.0, 40.0, 30.0, 35.0), 32.5),  # the median of the measured starts
        ((1.0, 2.0, 1.5), 10.0),  # local processes start in a second: the floor keeps the pool from flapping
        ((900.0, 1200.0), 600.0),  # a cluster short of nodes for a while: idle workers cost at most the cap
    ],
)
def test_the_scale_down_delay_is_about_what_a_start_costs(starts: tuple[float, ...], delay: float) -> None:
    assert scale_down_delay(snap(starts=starts), pool(scale_down_after_s=60.0)) == delay


def test_equal_bounds_fix_the_delay() -> None:
    config = pool(scale_down_after_s=3.0, scale_down_min_s=3.0, scale_down_max_s=3.0)  # vidfarm up --scale-down-after 3
    assert scale_down_delay(snap(starts=(30.0,)), config) == 3.0


def test_the_hold_says_where_its_delay_comes_from() -> None:
    held = decide(snap(idle=1, current=1, starts=(30.0, 40.0)), pool(), PolicyState(surplus_since=990.0))
    assert "scale down in 25s (median start 35s of the last 2)" in held.message


def test_hold_remembers_when_the_surplus_started() -> None:
    first = decide(snap(now=100.0, idle=1, current=1), pool(), NO_SURPLUS)
    assert first.state.surplus_since == 100.0
    later = decide(snap(now=130.0, idle=1, current=1), pool(), first.state)
    assert later.state.surplus_since == 100.0  # not reset by the next observation
    assert "30s" in later.message


def test_demand_in_the_middle_restarts_the_delay() -> None:
    config = pool()
    state = decide(snap(now=0.0, idle=1, current=1), config, NO_SURPLUS).state
    state = decide(snap(now=50.0, queued=1, idle=1, current=1), config, state).state  # a job arrived
    assert state.surplus_since is None
    held = decide(snap(now=70.0, idle=1, current=1), config, state)
    assert (held.desired, held.reason) == (1, "hold_scale_down_delay")  # 60 s counted afresh from 70


def test_scale_up_clears_a_pending_scale_down() -> None:
    decision = decide(snap(queued=5, idle=1, current=1), pool(), PolicyState(surplus_since=1.0))
    assert decision.direction == "up"
    assert decision.state.surplus_since is None


def test_scale_down_message_names_the_counts() -> None:
    decision = decide(snap(idle=2, current=2), pool(), PolicyState(surplus_since=900.0))
    assert "2 -> 0" in decision.message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"min_replicas": -1}, "min_replicas"),
        ({"min_replicas": 5, "max_replicas": 4}, "max_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"target_jobs_per_worker": 0}, "target_jobs_per_worker"),
        ({"target_backlog_seconds": -5.0}, "target_backlog_seconds"),
        ({"max_scale_up_step": 0}, "max_scale_up_step"),
        ({"scale_down_after_s": -1.0}, "scale_down_after_s"),
        ({"scale_down_min_s": 30.0, "scale_down_max_s": 20.0}, "scale_down_min_s"),
        ({"scale_down_min_s": -1.0}, "scale_down_min_s"),
        ({"queues": ()}, "queues"),
    ],
)
def test_invalid_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        pool(**overrides)


# -- properties ------------------------------------------------------------------------------------

configs = st.builds(
    lambda min_r, extra, target, backlog, step, delay, low, span: PoolConfig(
        "p", ("q",), min_r, min_r + extra if min_r + extra >= 1 else 1, target, backlog, step, delay, low, low + span
    ),
    st.integers(0, 5),
    st.integers(0, 10),
    st.floats(0.25, 5.0),
    st.none() | st.floats(1.0, 3600.0),
    st.none() | st.integers(1, 5),
    st.floats(0.0, 300.0),
    st.floats(0.0, 120.0),
    st.floats(0.0, 600.0),
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    busy = draw(st.integers(0, 20))
    idle = draw(st.integers(0, 20))
    current = draw(st.integers(0, 25))
    return Snapshot(
        now=draw(st.floats(0.0, 1e6)),
        queued_jobs=draw(st.integers(0, 100)),
        running_jobs=draw(st.integers(busy, busy + 3)),  # every busy worker runs a job
        idle_workers=idle,
        busy_workers=busy,
        current_replicas=current,
        queued_work_s=draw(st.floats(0.0, 1e5)),
        running_work_s=draw(st.floats(0.0, 1e5)),
        worker_starts_s=tuple(draw(st.lists(st.floats(0.0, 7200.0), max_size=20))),
    )


states = st.builds(PolicyState, st.none() | st.floats(0.0, 1e6))


def check_invariants(s: Snapshot, c: PoolConfig, d: Decision) -> None:
    assert (
        d.direction
        == {1: "up", -1: "down", 0: "none"}[(d.desired > s.current_replicas) - (d.desired < s.current_replicas)]
    )
    assert d.desired >= c.min_replicas
    # Never shrink below the busy workers.
    if d.desired < s.current_replicas:
        assert d.desired >= s.busy_workers
    # Never grow above max.
    if d.desired > s.current_replicas:
        assert d.desired <= c.max_replicas
    # Above max only by holding busy workers that are already there.
    assert d.desired <= max(c.max_replicas, min(s.busy_workers, s.current_replicas), s.current_replicas)
    if d.desired > c.max_replicas:
        assert d.desired <= s.current_replicas
    # Scale up bounded by the step, except to reach min.
    if c.max_scale_up_step is not None and d.desired > s.current_replicas:
        assert d.desired - s.current_replicas <= c.max_scale_up_step or d.desired <= max(c.min_replicas, s.busy_workers)


@settings(max_examples=400, deadline=None)
@given(snapshots(), configs, states)
def test_invariants_hold(s: Snapshot, c: PoolConfig, state: PolicyState) -> None:
    check_invariants(s, c, decide(s, c, state))


@settings(max_examples=300, deadline=None)
@given(snapshots(), configs, states)
def test_every_job_gets_a_worker_up_to_max(s: Snapshot, c: PoolConfig, state: PolicyState) -> None:
    # Whenever the pool is resized (other than by the step limit), it ends with a slot for every queued
    # and running job, or at max.
    d = decide(s, c, state)
    if d.direction != "none" and d.reason != "step_limit":
        needed = math.ceil((s.queued_jobs + s.running_jobs) / c.target_jobs_per_worker - 1e-9)
        assert d.desired >= min(needed, c.max_replicas)


@settings(max_examples=300, deadline=None)
@given(snapshots(), configs, states)
def test_scale_down_only_after_the_delay(s: Snapshot, c: PoolConfig, state: PolicyState) -> None:
    d = decide(s, c, state)
    if d.direction == "down":
        since = s.now if state.surplus_since is None else state.surplus_since
        assert s.now - since >= scale_down_delay(s, c)


@settings(max_examples=300, deadline=None)
@given(snapshots(), configs)
def test_a_learned_delay_stays_within_its_bounds(s: Snapshot, c: PoolConfig) -> None:
    if s.worker_starts_s:
        assert c.scale_down_min_s <= scale_down_delay(s, c) <= c.scale_down_max_s


@settings(max_examples=200, deadline=None)
@given(configs, st.integers(0, 25), st.floats(0.0, 1000.0))
def test_idle_pool_reaches_min_after_the_delay(c: PoolConfig, current: int, start: float) -> None:
    # Replay the loop: nothing queued or running -> the pool ends at min, not before the delay.
    state = PolicyState()
    replicas = current
    for tick in range(0, 400, 5):
        now = start + tick
        d = decide(snap(now=now, idle=replicas, current=replicas), c, state)
        if d.direction == "down":
            assert now - start >= c.scale_down_after_s
        replicas, state = d.desired, d.state
    assert replicas == c.min_replicas
