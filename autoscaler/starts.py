"""How long a worker takes to start, as the autoscaler sees it: from the decision that asked for a
replica to the first pass that sees a new worker registered (its presence heartbeat). That is what a
start costs the pool in time and in billed seconds, whatever the backend (a pod scheduled, its image
pulled and Python started; a local process), and the policy learns its scale-down delay from it
(`policy.scale_down_delay`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

# The estimate follows the last starts only: a cluster's start time drifts (a node pool scaled to zero
# or warm, an image cached on the node or not).
KEEP = 20


@dataclass
class StartTimes:
    """Pairs each new worker with the oldest replica asked for and not yet seen (a start cannot be told
    apart from another: any worker that shows up answers the oldest request)."""

    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP))
    _asked_at: deque[float] = field(default_factory=deque)
    _known: set[str] | None = None

    @property
    def recent(self) -> tuple[float, ...]:
        return tuple(self._recent)

    def asked(self, now: float, count: int) -> None:
        """`count` replicas were asked for at `now`."""
        self._asked_at.extend([now] * count)

    def withdrawn(self, count: int) -> None:
        """`count` replicas that never became workers were removed: the latest asked for (they are the
        furthest from starting) are not waited for any more."""
        for _ in range(min(count, len(self._asked_at))):
            self._asked_at.pop()

    def saw(self, now: float, names: Iterable[str]) -> None:
        """The workers registered at `now`. The first call only learns who is there: a worker already
        running when the autoscaler starts was not started by it."""
        names = set(names)
        if self._known is not None:
            for _ in names - self._known:
                if not self._asked_at:
                    break  # a worker restarted on its own (a crashed pod): no start of ours to measure
                self._recent.append(now - self._asked_at.popleft())
        self._known = names
