"""The one small interface every scaling backend implements (local processes, Kubernetes, ...).

The controller decides *how many* workers and, when shrinking, *which* ones; a backend only carries
that out. Keeping victim selection out of the backends is what lets us promise that no backend ever
stops a worker in the middle of a transcode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from vidfarm.states import WorkerState


@dataclass(frozen=True)
class WorkerRef:
    name: str  # RQ worker name
    state: WorkerState
    pod: str | None = None
    pid: int | None = None


class Backend(Protocol):
    name: str

    def current_replicas(self) -> int: ...

    def scale_to(self, desired: int, victims: Sequence[WorkerRef]) -> None:
        """Set the replica count. When shrinking, `victims` are the idle workers the controller chose;
        the backend must remove exactly those."""
        ...


@runtime_checkable
class KnowsSpares(Protocol):
    """A backend that can see replicas which are not workers: Kubernetes pods stuck Pending for
    capacity, in ImagePullBackOff or CrashLoopBackOff never register, so they are never idle victims,
    and without this the pool would stick at its maximum while the cluster keeps buying nodes."""

    def spare_workers(self, registered: Sequence[WorkerRef]) -> list[WorkerRef]:
        """Replicas that run no registered worker, to remove before any idle worker."""
        ...


def choose_victims(workers: Sequence[WorkerRef], count: int) -> list[WorkerRef]:
    """Up to `count` idle workers to remove, in a deterministic order.

    Only idle workers qualify: a busy one is transcoding, and a draining one is already on its way out
    (counting it again would shrink the pool twice). The order is by name so that two autoscaler
    replicas, or two passes over the same observation, pick the same victims. Fewer than `count` come
    back when there are not enough idle workers; the caller must then shrink by fewer.
    """
    if count <= 0:
        return []
    idle = sorted((w for w in workers if w.state == WorkerState.IDLE), key=lambda w: w.name)
    return idle[:count]
