"""Worker start times as the autoscaler measures them: from the decision that asked for replicas to
the first pass that sees their workers registered."""

from __future__ import annotations

from autoscaler.starts import KEEP, StartTimes


def test_a_start_lasts_from_the_request_to_the_first_pass_that_sees_the_worker() -> None:
    starts = StartTimes()
    starts.saw(0.0, [])
    starts.asked(0.0, 2)
    starts.saw(5.0, [])
    starts.saw(20.0, ["w1"])
    starts.asked(22.0, 1)
    starts.saw(35.0, ["w1", "w2", "w3"])
    # Workers answer the oldest requests first: they cannot be told apart.
    assert starts.recent == (20.0, 35.0, 13.0)


def test_workers_running_before_the_autoscaler_are_no_starts() -> None:
    starts = StartTimes()
    starts.asked(0.0, 1)  # asked before the first observation: never paired with those already there
    starts.saw(10.0, ["old-1", "old-2"])
    assert starts.recent == ()
    starts.saw(12.0, ["old-1", "old-2", "new"])
    assert starts.recent == (12.0,)


def test_a_worker_restarted_on_its_own_is_no_start() -> None:
    starts = StartTimes()
    starts.saw(0.0, ["w1"])
    starts.saw(10.0, ["w1-restarted"])  # a crashed pod came back under a new name: nobody asked for it
    assert starts.recent == ()


def test_replicas_removed_before_they_started_are_not_waited_for() -> None:
    starts = StartTimes()
    starts.saw(0.0, [])
    starts.asked(0.0, 1)
    starts.asked(50.0, 2)
    starts.withdrawn(2)  # the two latest, stuck Pending, removed by the scale-down
    starts.saw(60.0, ["w1"])
    starts.saw(500.0, ["w1", "w2"])  # a later worker of nobody's asking: not a 450 s start
    assert starts.recent == (60.0,)


def test_only_the_latest_starts_count() -> None:
    starts = StartTimes()
    starts.saw(0.0, [])
    names: list[str] = []
    for i in range(KEEP + 5):
        starts.asked(float(i * 100), 1)
        names.append(f"w{i}")
        starts.saw(float(i * 100 + i), names)
    assert starts.recent == tuple(float(i) for i in range(5, KEEP + 5))
