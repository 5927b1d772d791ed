"""Leader election on a `coordination.k8s.io/v1` Lease, so two autoscaler replicas can run for
availability while only one of them scales.

Same scheme as client-go's leaderelection: the holder renews `renewTime`; a candidate takes over only
once the record has not changed for a full `leaseDurationSeconds` *as measured on its own clock* since
it first saw that record. Comparing the holder's timestamps with our wall clock would make the outcome
depend on clock skew between nodes. Writes go through `replace` with the resourceVersion we read, so
two candidates racing for an expired lease cannot both win: the loser gets 409.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import urllib3
from kubernetes import client as kclient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (3.0, 5.0)


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
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self._api = kclient.CoordinationV1Api(api_client)
        self._clock = clock
        self._wall_clock = wall_clock
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

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
        except ApiException as exc:
            # Unknown outcome: stay leader only until our last renewal runs out (see is_leader).
            self._log_api_error(exc)
            return self.is_leader
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("lease %s/%s: API server unreachable (%s)", self.namespace, self.name, exc)
            return self.is_leader
        if won:
            if self._renewed_at is None:
                log.info("lease %s/%s: %s is now the leader", self.namespace, self.name, self.identity)
            self._renewed_at = now
        elif self._renewed_at is not None:
            # Someone else holds the lease (or beat us to the write): stop acting at once.
            log.warning("lease %s/%s: %s lost leadership", self.namespace, self.name, self.identity)
            self._renewed_at = None
        return self.is_leader

    def _attempt(self, now: float) -> bool:
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
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
        stamp = self._wall_clock()
        body = kclient.V1Lease(
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
            self._api.create_namespaced_lease(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
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
        lease.spec = spec
        try:
            # `lease.metadata.resource_version` is the version we read: a concurrent writer makes this 409.
            self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 409:
                log.info("lease %s/%s: lost the race to another candidate", self.namespace, self.name)
                return False
            raise
        return True

    def _log_api_error(self, exc: ApiException) -> None:
        if exc.status == 403:
            log.error(
                "RBAC forbids lease access in namespace '%s': grant apiGroups: [\"coordination.k8s.io\"], "
                'resources: ["leases"], verbs: ["get", "create", "update"]',
                self.namespace,
            )
        else:
            log.warning("lease %s/%s: API error %s %s", self.namespace, self.name, exc.status, exc.reason)
