"""Kubernetes backend: scale a worker Deployment through its `scale` subresource.

Why not just patch `spec.replicas` like KEDA? Because on scale-in the ReplicaSet then picks victims
itself and may kill a pod in the middle of an 11-minute transcode (kedacore/keda #3674, #6719). We
mark the idle pods the controller chose with a *lower* `controller.kubernetes.io/pod-deletion-cost`
right before lowering the replica count, so the ReplicaSet removes exactly those.

Pods that never became workers (Pending for capacity, ImagePullBackOff, CrashLoopBackOff, a GPU
worker whose NVENC check failed) are not ready and hold no job: `spare_workers` offers them as
victims before any idle worker. The ReplicaSet itself also deletes not-ready pods first.

RBAC this needs (namespace-scoped Role):
  apps / deployments/scale: get, patch;  "" / pods: list, patch;
  coordination.k8s.io / leases: get, create, update (leader election, see leader.py).
`KubeCaller` runs every request of both, with one timeout, backoff and RBAC hint.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from autoscaler.backend import WorkerRef
from autoscaler.config import PoolDeployment
from autoscaler.policy import PoolConfig

log = logging.getLogger(__name__)

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# Victims get a cost below the default (0, which unannotated pods have), so the ReplicaSet deletes them
# first among ready pods. Other pods carrying a stale low cost from an earlier scale-down get reset.
VICTIM_DELETION_COST = "-1000"
KEEP_DELETION_COST = "0"
# (connect, read) seconds: a hung API server must not freeze the control loop for other pools.
REQUEST_TIMEOUT = (3.0, 10.0)
CONFLICT_RETRIES = 5
# (apiGroup, resource) as an RBAC rule names them, for the 403 hint.
SCALE = ("apps", "deployments/scale")
PODS = ("", "pods")
LEASES = ("coordination.k8s.io", "leases")
EVENTS = ("", "events")
# How the autoscaler signs the Events it records (`kubectl get events` SOURCE column).
EVENT_COMPONENT = "vidfarm-autoscaler"

T = TypeVar("T")


class KubernetesError(RuntimeError):
    """A Kubernetes request failed in a way the controller should log and retry later."""


class ApiUnavailable(KubernetesError):
    """The API server could not be reached; calls are refused until the backoff delay has passed."""


class ApiForbidden(KubernetesError):
    """RBAC denied a request: retrying will not help until someone fixes the Role."""


def load_kube_client() -> kclient.ApiClient:
    """An ApiClient from the in-cluster service account, else from the local kubeconfig."""
    try:
        # Inside a pod: the mounted service account token and KUBERNETES_SERVICE_HOST.
        kconfig.load_incluster_config()
        log.info("using in-cluster Kubernetes config")
    except ConfigException:
        # On a laptop / CI: ~/.kube/config or $KUBECONFIG, current context.
        kconfig.load_kube_config()
        log.info("using kubeconfig")
    return kclient.ApiClient()


class Backoff:
    """Exponential backoff that refuses calls instead of sleeping, so one unreachable cluster does not
    stall the loop that serves the other pools."""

    def __init__(self, clock: Callable[[], float], initial_s: float = 0.5, max_s: float = 30.0) -> None:
        self._clock = clock
        self._initial_s = initial_s
        self._max_s = max_s
        self.delay_s = 0.0
        self.retry_at = 0.0

    @property
    def failing(self) -> bool:
        return self.delay_s > 0

    def seconds_to_wait(self) -> float:
        return max(0.0, self.retry_at - self._clock()) if self.failing else 0.0

    def failed(self) -> float:
        self.delay_s = self._initial_s if not self.failing else min(self._max_s, self.delay_s * 2)
        self.retry_at = self._clock() + self.delay_s
        return self.delay_s

    def succeeded(self) -> None:
        self.delay_s = 0.0
        self.retry_at = 0.0


class KubeCaller:
    """Runs API calls with a timeout, clear 403 logs and backoff when the API server is unreachable.

    Shared by the scaling backend and the leader elector, so both behave the same towards a slow,
    unreachable or forbidding API server.
    """

    def __init__(self, api_client: kclient.ApiClient, namespace: str, clock: Callable[[], float]) -> None:
        self._host = api_client.configuration.host
        self._namespace = namespace
        self.backoff = Backoff(clock)

    def __call__(self, verb: str, resource: tuple[str, str], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `fn`; `verb` and `resource` ((apiGroup, resource) as RBAC spells them) feed the logs."""
        wait_s = self.backoff.seconds_to_wait()
        if wait_s > 0:
            raise ApiUnavailable(f"Kubernetes API server {self._host} unreachable; next attempt in {wait_s:.1f}s")
        try:
            result = fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            self._reachable_again()
            if exc.status == 403:
                raise self._forbidden(verb, resource) from exc
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            delay = self.backoff.failed()
            log.warning(
                "Kubernetes API server %s unreachable (%s %s failed: %s); backing off %.1fs",
                self._host, verb, resource[1], type(exc).__name__, delay,
            )  # fmt: skip
            raise ApiUnavailable(f"Kubernetes API server {self._host} unreachable") from exc
        self._reachable_again()
        return result

    def _reachable_again(self) -> None:
        if self.backoff.failing:
            log.info("Kubernetes API server %s reachable again", self._host)
        self.backoff.succeeded()

    def _forbidden(self, verb: str, resource: tuple[str, str]) -> ApiForbidden:
        group, res = resource
        hint = (
            f"RBAC forbids '{verb}' on '{res}' (apiGroup '{group or 'core'}') in namespace "
            f"'{self._namespace}': grant the autoscaler's ServiceAccount a Role with "
            f'apiGroups: ["{group}"], resources: ["{res}"], verbs: ["{verb}"]'
        )
        log.error(hint)
        return ApiForbidden(hint)


class KubernetesDeployment:
    """Backend that scales one Deployment; see the module docstring for the scale-in protocol."""

    def __init__(
        self,
        namespace: str,
        deployment: str,
        *,
        api_client: kclient.ApiClient | None = None,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.name = f"kubernetes:{namespace}/{deployment}"
        self.dry_run = dry_run
        api_client = api_client or load_kube_client()
        self._apps = kclient.AppsV1Api(api_client)
        self._core = kclient.CoreV1Api(api_client)
        self._call = KubeCaller(api_client, namespace, clock)
        # A Deployment's selector is immutable: read once from the scale subresource, then reused.
        self._selector: str | None = None

    # -- Backend -----------------------------------------------------------------------------------

    def current_replicas(self) -> int:
        return _spec_replicas(self._read_scale())

    def spare_workers(self, registered: Sequence[WorkerRef]) -> list[WorkerRef]:
        """Live pods that are not ready and run no registered worker, in name order (KnowsSpares).

        A registered worker is never spare, even when not ready: it may be in the middle of a job.
        """
        workers_pods = {w.pod for w in registered if w.pod}
        return [
            WorkerRef(name=f"pod/{name}", state="idle", pod=name)
            for name, pod in sorted(self._live_pods().items())
            if name not in workers_pods and not _ready(pod)
        ]

    def scale_to(self, desired: int, victims: Sequence[WorkerRef]) -> None:
        scale = self._read_scale()
        current = _spec_replicas(scale)
        if desired == current:
            return
        if self.dry_run:
            self._log_dry_run(current, desired, victims)
            return
        if desired > current:
            # Scale up: no pod is at risk, patch straight away.
            self._patch_replicas(desired, scale, max_removed=None)
            self._record_event("ScaledUp", f"vidfarm autoscaler: {current} -> {desired} replicas (queued work)")
            return
        self._scale_down(scale, current, desired, victims)

    # -- scale-in ----------------------------------------------------------------------------------

    def _scale_down(self, scale: Any, current: int, desired: int, victims: Sequence[WorkerRef]) -> None:
        chosen = list(victims)[: current - desired]
        marked = self._mark_victims(chosen)
        if not marked:
            # Without marked pods the ReplicaSet would pick for itself and might kill a busy pod.
            log.warning("%s: no victim pod could be marked; not scaling down", self.name)
            return
        # Remove only as many pods as we marked, never one the ReplicaSet would have to guess.
        target = current - len(marked)
        self._patch_replicas(target, scale, max_removed=len(marked))
        log.info("%s: scaled down %d -> %d removing pods %s", self.name, current, target, ", ".join(marked))
        self._record_event("ScaledDown", f"vidfarm autoscaler: {current} -> {target} replicas, removing idle or "
                           f"never-ready pods {', '.join(marked)}")

    # -- events ------------------------------------------------------------------------------------

    def _record_event(self, reason: str, message: str) -> None:
        """A Kubernetes Event on the Deployment (`kubectl describe deploy`, `kubectl get events`) beside
        the log line. Best effort: an Event that cannot be written never stops scaling."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{self.deployment}.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.deployment,
                               "namespace": self.namespace},
            "reason": reason, "message": message, "type": "Normal", "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT, "reportingInstance": os.environ.get("POD_NAME", ""),
        }
        try:
            self._call("create", EVENTS, self._core.create_namespaced_event, self.namespace, body)
        except (ApiException, KubernetesError) as exc:
            log.debug("%s: event %s not recorded: %s", self.name, reason, exc)

    def _live_pods(self) -> dict[str, Any]:
        """The Deployment's pods that are not already terminating, by name."""
        selector = self._selector or _selector(self._read_scale())
        pods = self._call("list", PODS, self._core.list_namespaced_pod, self.namespace, label_selector=selector).items
        return {p.metadata.name: p for p in pods if p.metadata.deletion_timestamp is None}

    def _mark_victims(self, victims: Sequence[WorkerRef]) -> list[str]:
        live = self._live_pods()
        wanted = [v.pod for v in victims if v.pod]
        missing = [name for name in wanted if name not in live]
        if missing or len(wanted) < len(victims):
            log.warning("%s: victims without a live pod, skipped: %s", self.name, missing or "(no pod name)")
        victim_pods = [name for name in wanted if name in live]
        # Reset stale low costs first: a pod marked in an earlier round that was not removed (and may be
        # busy now) must not be cheaper than, or as cheap as, this round's victims.
        for name, pod in live.items():
            if name not in victim_pods and _deletion_cost(pod) not in (None, KEEP_DELETION_COST):
                self._patch_deletion_cost(name, KEEP_DELETION_COST)
        for name in victim_pods:
            self._patch_deletion_cost(name, VICTIM_DELETION_COST)
        return victim_pods

    def _patch_deletion_cost(self, pod: str, cost: str) -> None:
        body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}}
        self._call("patch", PODS, self._core.patch_namespaced_pod, pod, self.namespace, body)

    # -- scale subresource -------------------------------------------------------------------------

    def _read_scale(self) -> Any:
        scale = self._call(
            "get",
            SCALE,
            self._apps.read_namespaced_deployment_scale,
            self.deployment,
            self.namespace,
        )
        if self._selector is None and scale.status is not None and scale.status.selector:
            self._selector = scale.status.selector
        return scale

    def _patch_replicas(self, target: int, scale: Any, *, max_removed: int | None) -> None:
        """Patch spec.replicas guarded by resourceVersion; on 409 re-read and retry.

        When shrinking, `max_removed` caps how far below the freshly read count we may go, so a
        concurrent change never makes us remove pods we did not mark.
        """
        for attempt in range(1, CONFLICT_RETRIES + 1):
            body = {
                "metadata": {"resourceVersion": scale.metadata.resource_version},
                "spec": {"replicas": target},
            }
            try:
                self._call(
                    "patch",
                    SCALE,
                    self._apps.patch_namespaced_deployment_scale,
                    self.deployment,
                    self.namespace,
                    body,
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                log.info("%s: scale conflict (attempt %d), re-reading", self.name, attempt)
            scale = self._read_scale()
            current = _spec_replicas(scale)
            if max_removed is not None:
                target = max(target, current - max_removed)
            if target == current:
                return
        raise KubernetesError(f"{self.name}: scale patch still conflicting after {CONFLICT_RETRIES} tries")

    def _log_dry_run(self, current: int, desired: int, victims: Sequence[WorkerRef]) -> None:
        if desired > current:
            log.info("dry-run: would scale %s up %d -> %d", self.name, current, desired)
            return
        pods = [v.pod or v.name for v in list(victims)[: current - desired]]
        log.info(
            "dry-run: would scale %s down %d -> %d, marking pods %s with %s=%s first",
            self.name, current, desired, pods, DELETION_COST_ANNOTATION, VICTIM_DELETION_COST,
        )  # fmt: skip


def _spec_replicas(scale: Any) -> int:
    return int(scale.spec.replicas or 0) if scale.spec is not None else 0


def _selector(scale: Any) -> str:
    # The scale subresource publishes the Deployment's label selector as a string, which saves a GET on
    # the Deployment (and the RBAC rule it would need).
    selector = scale.status.selector if scale.status is not None else None
    if not selector:
        raise KubernetesError("scale subresource has no status.selector; cannot find the worker pods")
    return selector


def _ready(pod: Any) -> bool:
    conditions = (pod.status.conditions if pod.status is not None else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _deletion_cost(pod: Any) -> str | None:
    annotations = pod.metadata.annotations or {}
    return annotations.get(DELETION_COST_ANNOTATION)


def deployments_for(
    pools: Sequence[PoolDeployment], *, dry_run: bool = False, api_client: kclient.ApiClient | None = None
) -> list[tuple[PoolConfig, KubernetesDeployment]]:
    """(pool, backend) pairs for `Controller`, from `load_config(...).pools`, sharing one API client."""
    api_client = api_client or load_kube_client()
    return [
        (entry.pool, KubernetesDeployment(entry.namespace, entry.deployment, api_client=api_client, dry_run=dry_run))
        for entry in pools
    ]
