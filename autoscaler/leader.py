"""Leader election on a `coordination.k8s.io/v1` Lease, so two autoscaler replicas can run for
availability while only one of them scales.

Same scheme as client-go's leaderelection: the holder renews `renewTime`; a candidate takes over only
once the record has not changed for a full `leaseDurationSeconds` *as measured on its own clock* since
it first saw that record. Comparing the holder's timestamps with our wall clock would make the outcome
depend on clock skew between nodes. Writes go through `replace` with the resourceVersion we read, so
two candidates racing for an expired lease cannot both win: the loser gets 409.

Requests go through k8s.KubeCaller, as the scaling backend's do: same timeout, same backoff when the
API server is unreachable, same RBAC hint on 403. On shutdown the holder releases the lease (clears
the holder, as client-go's ReleaseOnCancel does), so a rival takes over at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

from autoscaler.k8s import LEASES, KubeCaller, KubernetesError, load_kube_client

log = logging.getLogger(__name__)


class Leader(Protocol):
    """What the controller needs from leader election."""

    def try_acquire_or_renew(self) -> bool: ...

    @property
    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """Local mode (`vidfarm up`): a single autoscaler process, nobody to elect against."""

    def try_acquire_or_renew(self) -> bool:
        return True

    @property
    def is_leader(self) -> bool:
        return True


class MicroTime(dt.datetime):
    """A Lease timestamp that serializes as the API server parses it (metav1.MicroTime: RFC3339 with
    exactly six fractional digits). The client writes datetimes with isoformat(), which drops the
    fraction when the microsecond is 0, and the API server then rejects the write: about one renewal
    in a million, or every one on a clock with whole-second resolution. The client's models keep a
    datetime subclass as it is, so this override is what goes on the wire."""

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return super().isoformat(sep, "microseconds")

    @classmethod
    def of(cls, stamp: dt.datetime) -> MicroTime:
        return cls.combine(stamp.date(), stamp.timetz())


class LeaseElector:
    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: int = 15,
        api_client: kclient.ApiClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_lost` runs whenever this candidate stops being the leader (lost, expired or released)."""
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        api_client = api_client or load_kube_client()
        self._api = kclient.CoordinationV1Api(api_client)
        self._call = KubeCaller(api_client, namespace, clock)
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_lost = on_lost
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self._acting = False  # what the last round answered, to notice the step down

    @property
    def is_leader(self) -> bool:
        # Leader only while our last successful renewal is younger than the lease: if renewals start
        # failing we stop acting before a rival may legitimately take over.
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.lease_duration_s

    def try_acquire_or_renew(self) -> bool:
        """One election round. True if we hold the lease after it."""
        now = self._clock()
        try:
            won = self._attempt(now)
        except (KubernetesError, ApiException) as exc:
            # Unknown outcome (KubeCaller logged unreachable or forbidden): stay leader only until our
            # last renewal runs out (see is_leader).
            if isinstance(exc, ApiException):
                log.warning("lease %s/%s: API error %s %s", self.namespace, self.name, exc.status, exc.reason)
            won = None
        if won:
            if not self._acting:
                log.info("lease %s/%s: %s is now the leader", self.namespace, self.name, self.identity)
            self._renewed_at = now
        elif won is False:
            # Someone else holds the lease (or beat us to the write): stop acting at once.
            self._renewed_at = None
        return self._settle()

    def release(self) -> None:
        """Give the lease up on shutdown, so a rival takes over now instead of after a lease duration."""
        was_leader = self._acting
        self._renewed_at = None
        self._settle()  # stop acting before the lease is free for others
        if not was_leader:
            return
        try:
            lease = self._call("get", LEASES, self._api.read_namespaced_lease, self.name, self.namespace)
            spec = lease.spec or kclient.V1LeaseSpec()
            if spec.holder_identity != self.identity:
                return
            spec.holder_identity = None
            spec.lease_duration_seconds = 1
            spec.renew_time = self._wall_clock()
            self._write(lease, spec)
            log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
        except (KubernetesError, ApiException) as exc:
            log.warning("lease %s/%s: not released (%s); a rival takes over once it expires",
                        self.namespace, self.name, exc)  # fmt: skip

    def _settle(self) -> bool:
        """Whether we lead now; runs `on_lost` once on the way down, however leadership ended."""
        leader = self.is_leader
        if self._acting and not leader:
            log.warning("lease %s/%s: %s is no longer the leader", self.namespace, self.name, self.identity)
            self._on_lost()
        self._acting = leader
        return leader

    def _attempt(self, now: float) -> bool:
        try:
            lease = self._call("get", LEASES, self._api.read_namespaced_lease, self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            # No lease yet: the first candidate to create it leads.
            return self._create()
        spec = lease.spec or kclient.V1LeaseSpec()
        if spec.holder_identity == self.identity:
            # Our own lease: renew it.
            return self._replace(lease, spec, acquired=False)
        if not self._expired(spec, now):
            return False
        # The holder stopped renewing for a whole lease duration: take over.
        log.info("lease %s/%s: holder %r expired, taking over", self.namespace, self.name, spec.holder_identity)
        return self._replace(lease, spec, acquired=True)

    def _expired(self, spec: kclient.V1LeaseSpec, now: float) -> bool:
        # Measure expiry from when *we* first saw this exact record, not from its timestamps.
        record = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = now
        if not spec.holder_identity:
            # Released lease (holder cleared on shutdown): free to take at once.
            return True
        duration = spec.lease_duration_seconds or self.lease_duration_s
        return now - self._observed_at >= duration

    def _create(self) -> bool:
        stamp = MicroTime.of(self._wall_clock())
        lease = kclient.V1Lease(
            metadata=kclient.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=kclient.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.lease_duration_s,
                acquire_time=stamp,
                renew_time=stamp,
                lease_transitions=0,
            ),
        )
        try:
            self._call("create", LEASES, self._api.create_namespaced_lease, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                # Another candidate created it between our read and our create: it leads.
                return False
            raise
        return True

    def _replace(self, lease: kclient.V1Lease, spec: kclient.V1LeaseSpec, *, acquired: bool) -> bool:
        stamp = self._wall_clock()
        spec.renew_time = stamp
        spec.lease_duration_seconds = self.lease_duration_s
        if acquired:
            spec.holder_identity = self.identity
            spec.acquire_time = stamp
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        try:
            self._write(lease, spec)
        except ApiException as exc:
            if exc.status == 409:
                log.info("lease %s/%s: lost the race to another candidate", self.namespace, self.name)
                return False
            raise
        return True

    def _write(self, lease: kclient.V1Lease, spec: kclient.V1LeaseSpec) -> None:
        """Replace the lease guarded by the resourceVersion we read: a concurrent writer makes this 409."""
        # Times read back from the server are plain datetimes again.
        spec.acquire_time = spec.acquire_time and MicroTime.of(spec.acquire_time)
        spec.renew_time = spec.renew_time and MicroTime.of(spec.renew_time)
        lease.spec = spec
        self._call("update", LEASES, self._api.replace_namespaced_lease, self.name, self.namespace, lease)
