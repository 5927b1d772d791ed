"""KubernetesDeployment with the real `kubernetes` client against an API server started in the test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from kubernetes.client.exceptions import ApiException

from autoscaler.backend import WorkerRef
from autoscaler.controller import Controller
from autoscaler.k8s import ApiForbidden, ApiUnavailable, KubernetesDeployment
from autoscaler.policy import PoolConfig, Snapshot
from tests.conftest import FakeClock
from tests.kube_fake import DELETION_COST, FakeKube, Request

NS = "vidfarm"
DEPLOY = "worker-cpu"
SCALE = f"/apis/apps/v1/namespaces/{NS}/deployments/{DEPLOY}/scale"
PODS = f"/api/v1/namespaces/{NS}/pods"
POD_NAMES = ["worker-cpu-a", "worker-cpu-b", "worker-cpu-c", "worker-cpu-d"]


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        server.add_deployment(NS, DEPLOY, POD_NAMES, labels={"app.kubernetes.io/component": "worker-cpu"})
        yield server


def backend(fake: FakeKube, **kwargs: object) -> KubernetesDeployment:
    return KubernetesDeployment(NS, DEPLOY, api_client=fake.api_client(), **kwargs)


def idle(pod: str) -> WorkerRef:
    return WorkerRef(name=f"rq-{pod}", state="idle", pod=pod)


EVENTS = f"/api/v1/namespaces/{NS}/events"


def calls(fake: FakeKube) -> list[tuple[str, str]]:
    """The scaling calls; the Events recorded beside them are checked on their own."""
    return [(r.method, r.path) for r in fake.requests if r.path != EVENTS]


def test_reads_replicas_from_the_scale_subresource(fake: FakeKube) -> None:
    assert backend(fake).current_replicas() == 4
    assert calls(fake) == [("GET", SCALE)]


def test_scale_down_marks_victims_before_patching_replicas(fake: FakeKube) -> None:
    backend(fake).scale_to(2, [idle("worker-cpu-b"), idle("worker-cpu-d")])

    assert calls(fake) == [
        ("GET", SCALE),
        ("GET", PODS),
        ("PATCH", f"{PODS}/worker-cpu-b"),
        ("PATCH", f"{PODS}/worker-cpu-d"),
        ("PATCH", SCALE),
    ]
    pods_query = fake.requests[1].query
    assert pods_query["labelSelector"] == "app.kubernetes.io/component=worker-cpu"
    for patch in fake.requests[2:4]:
        assert patch.body == {"metadata": {"annotations": {DELETION_COST: "-1000"}}}
    assert fake.requests[4].body == {"metadata": {"resourceVersion": "101"}, "spec": {"replicas": 2}}
    # The fake ReplicaSet deletes by cost: exactly the victims went, the others (busy) stayed.
    assert fake.pod_names(NS) == ["worker-cpu-a", "worker-cpu-c"]


def test_stale_low_cost_on_a_non_victim_is_reset_first(fake: FakeKube) -> None:
    # worker-cpu-a was a victim in an earlier round that never happened, and is busy now.
    fake.pods[(NS, "worker-cpu-a")]["metadata"]["annotations"][DELETION_COST] = "-1000"

    backend(fake).scale_to(3, [idle("worker-cpu-c")])

    pod_patches = [(r.path.rsplit("/", 1)[1], r.body) for r in fake.requests if r.method == "PATCH"][:-1]
    assert pod_patches == [
        ("worker-cpu-a", {"metadata": {"annotations": {DELETION_COST: "0"}}}),
        ("worker-cpu-c", {"metadata": {"annotations": {DELETION_COST: "-1000"}}}),
    ]
    assert "worker-cpu-a" in fake.pod_names(NS)
    assert "worker-cpu-c" not in fake.pod_names(NS)


def test_scale_up_touches_no_pod(fake: FakeKube) -> None:
    backend(fake).scale_to(6, [])

    assert calls(fake) == [("GET", SCALE), ("PATCH", SCALE)]
    assert fake.replicas(NS, DEPLOY) == 6


def test_no_change_no_write(fake: FakeKube) -> None:
    backend(fake).scale_to(4, [])
    assert fake.writes() == []


def test_only_as_many_pods_removed_as_victims_marked(fake: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    # Asked for 4 -> 1 but only one victim has a live pod: remove that one, let nothing be guessed.
    victims = [idle("worker-cpu-b"), idle("gone-pod"), WorkerRef("no-pod-worker", "idle")]
    with caplog.at_level(logging.WARNING):
        backend(fake).scale_to(1, victims)

    assert fake.replicas(NS, DEPLOY) == 3
    assert fake.pod_names(NS) == ["worker-cpu-a", "worker-cpu-c", "worker-cpu-d"]
    assert "gone-pod" in caplog.text


def test_no_victim_pod_means_no_scale_down(fake: FakeKube) -> None:
    backend(fake).scale_to(3, [idle("not-a-pod")])
    assert ("PATCH", SCALE) not in fake.writes()
    assert fake.replicas(NS, DEPLOY) == 4


@pytest.mark.parametrize(("desired", "victims"), [(2, [idle("worker-cpu-a"), idle("worker-cpu-b")]), (7, [])])
def test_dry_run_makes_no_write_request(
    fake: FakeKube, caplog: pytest.LogCaptureFixture, desired: int, victims: list[WorkerRef]
) -> None:
    with caplog.at_level(logging.INFO):
        backend(fake, dry_run=True).scale_to(desired, victims)

    assert fake.writes() == []
    assert fake.replicas(NS, DEPLOY) == 4
    assert f"dry-run: would scale kubernetes:{NS}/{DEPLOY}" in caplog.text
    assert f"-> {desired}" in caplog.text


def test_conflict_is_retried_with_a_fresh_resource_version(fake: FakeKube) -> None:
    def concurrent_writer(request: Request) -> None:
        # Someone else updates the Deployment between our read and our first patch.
        if request.method == "PATCH" and request.path == SCALE and fake.before_request is not None:
            fake.before_request = None
            fake.bump_scale_version(NS, DEPLOY)

    fake.before_request = concurrent_writer
    backend(fake).scale_to(3, [idle("worker-cpu-d")])

    scale_calls = [(r.method, (r.body or {}).get("metadata")) for r in fake.requests if r.path == SCALE]
    assert scale_calls[0] == ("GET", None)
    assert scale_calls[1][0] == "PATCH"
    assert scale_calls[2] == ("GET", None)
    assert scale_calls[3][0] == "PATCH"
    assert scale_calls[3][1]["resourceVersion"] != scale_calls[1][1]["resourceVersion"]
    assert fake.replicas(NS, DEPLOY) == 3
    assert "worker-cpu-d" not in fake.pod_names(NS)


def test_conflict_with_a_concurrent_resize_removes_only_marked_pods(fake: FakeKube) -> None:
    def concurrent_scale_up(request: Request) -> None:
        if request.method == "PATCH" and request.path == SCALE and fake.before_request is not None:
            fake.before_request = None
            fake.bump_scale_version(NS, DEPLOY, replicas=6)  # kubectl scale --replicas=6 meanwhile

    fake.before_request = concurrent_scale_up
    backend(fake).scale_to(3, [idle("worker-cpu-d")])

    # One pod marked -> at most one removed from whatever the count is now: 6 -> 5, not 6 -> 3.
    assert fake.replicas(NS, DEPLOY) == 5
    assert "worker-cpu-d" not in fake.pod_names(NS)


def test_forbidden_scale_patch_logs_an_rbac_hint(fake: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    fake.forbid("PATCH", r"/deployments/[^/]+/scale$")
    with caplog.at_level(logging.ERROR), pytest.raises(ApiForbidden):
        backend(fake).scale_to(8, [])

    assert "RBAC forbids 'patch' on 'deployments/scale' (apiGroup 'apps')" in caplog.text
    assert 'resources: ["deployments/scale"], verbs: ["patch"]' in caplog.text
    assert "namespace 'vidfarm'" in caplog.text


def test_forbidden_pod_patch_names_pods(fake: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    fake.forbid("PATCH", r"/pods/")
    with caplog.at_level(logging.ERROR), pytest.raises(ApiForbidden):
        backend(fake).scale_to(3, [idle("worker-cpu-a")])

    assert "RBAC forbids 'patch' on 'pods' (apiGroup 'core')" in caplog.text
    # Without the mark the replica count must not move, or the ReplicaSet would pick a pod itself.
    assert ("PATCH", SCALE) not in fake.writes()


def test_missing_deployment_is_a_404(fake: FakeKube) -> None:
    missing = KubernetesDeployment(NS, "nope", api_client=fake.api_client())
    with pytest.raises(ApiException) as info:
        missing.current_replicas()
    assert info.value.status == 404


def test_unreachable_api_server_backs_off_exponentially(caplog: pytest.LogCaptureFixture) -> None:
    with FakeKube() as server:
        client = server.api_client()  # a port that will be closed once the server stops
    clock = FakeClock(now=0.0)
    unreachable = KubernetesDeployment(NS, DEPLOY, api_client=client, clock=clock)

    with caplog.at_level(logging.WARNING), pytest.raises(ApiUnavailable):
        unreachable.current_replicas()
    assert "unreachable" in caplog.text
    assert "backing off 0.5s" in caplog.text

    # Within the backoff window no request is even attempted.
    with pytest.raises(ApiUnavailable, match="next attempt in 0.5s"):
        unreachable.current_replicas()

    clock.now = 0.6
    with pytest.raises(ApiUnavailable):
        unreachable.current_replicas()
    assert "backing off 1.0s" in caplog.text  # doubled


def test_backoff_resets_once_the_server_answers(fake: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(now=0.0)
    deployment = backend(fake, clock=clock)
    deployment._call.backoff.failed()  # as if the previous call had failed
    clock.now = 1.0
    with caplog.at_level(logging.INFO):
        assert deployment.current_replicas() == 4
    assert "reachable again" in caplog.text
    assert not deployment._call.backoff.failing


# -- pods that never became workers ------------------------------------------------------------------


def busy(pod: str) -> WorkerRef:
    return WorkerRef(name=f"rq-{pod}", state="busy", pod=pod)


def stuck(fake: FakeKube, *pods: str) -> None:
    """Replace pods by ones stuck Pending: never ready, never registered with RQ."""
    for pod in pods:
        labels = fake.pods.pop((NS, pod))["metadata"]["labels"]
        fake.add_pod(NS, pod, labels, ready=False)


def test_spare_workers_are_the_not_ready_pods_without_a_worker(fake: FakeKube) -> None:
    stuck(fake, "worker-cpu-c", "worker-cpu-d")
    # worker-cpu-d registered and took a job before its readiness failed: never a spare.
    registered = [idle("worker-cpu-a"), busy("worker-cpu-b"), busy("worker-cpu-d")]

    spares = backend(fake).spare_workers(registered)

    assert [w.pod for w in spares] == ["worker-cpu-c"]
    # One request for the pods (the selector comes with the scale read); nothing written.
    assert calls(fake) == [("GET", SCALE), ("GET", PODS)]
    assert fake.writes() == []


class PodsObserver:
    """RQ's view: the registered workers given; no queued work, so the pool should shrink to the busy."""

    def __init__(self, workers: list[WorkerRef]) -> None:
        self.workers = workers

    def __call__(self, config: PoolConfig) -> tuple[Snapshot, list[WorkerRef]]:
        busy_count = sum(w.state == "busy" for w in self.workers)
        idle_count = sum(w.state == "idle" for w in self.workers)
        snapshot = Snapshot(now=0.0, queued_jobs=0, running_jobs=busy_count, idle_workers=idle_count,
                            busy_workers=busy_count, current_replicas=0)  # fmt: skip
        return snapshot, list(self.workers)


def step_controller(fake: FakeKube, workers: list[WorkerRef]) -> None:
    config = PoolConfig("cpu", ("cpu",), max_replicas=4, scale_down_after_s=0.0)
    Controller([(config, backend(fake))], PodsObserver(workers), clock=FakeClock(now=0.0)).step()


def test_pool_at_max_with_stuck_pods_and_no_idle_worker_still_shrinks(fake: FakeKube) -> None:
    # Two workers busy, two pods that never started: before, no idle victim meant no scale-in ever.
    stuck(fake, "worker-cpu-c", "worker-cpu-d")
    step_controller(fake, [busy("worker-cpu-a"), busy("worker-cpu-b")])

    assert fake.replicas(NS, DEPLOY) == 2
    assert fake.pod_names(NS) == ["worker-cpu-a", "worker-cpu-b"]


def test_not_ready_pods_go_before_idle_workers(fake: FakeKube) -> None:
    stuck(fake, "worker-cpu-d")
    step_controller(fake, [idle("worker-cpu-a"), busy("worker-cpu-b"), busy("worker-cpu-c")])

    # Shrinking 4 -> 2: the stuck pod first, then the idle worker; both marked before the patch.
    assert fake.replicas(NS, DEPLOY) == 2
    assert fake.pod_names(NS) == ["worker-cpu-b", "worker-cpu-c"]
    marked = [r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "PATCH" and "/pods/" in r.path]
    assert marked == ["worker-cpu-d", "worker-cpu-a"]


def test_each_scaling_decision_is_a_kubernetes_event_on_the_deployment(fake: FakeKube) -> None:
    """`kubectl describe deploy worker-cpu` shows what the autoscaler did, not only its log."""
    scaler = backend(fake)
    scaler.scale_to(6, [])
    scaler.scale_to(5, [idle("worker-cpu-b")])
    scaler.scale_to(5, [])  # no change, no event
    assert [(e["reason"], e["type"]) for e in fake.events] == [("ScaledUp", "Normal"), ("ScaledDown", "Normal")]
    for event in fake.events:
        assert event["involvedObject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOY,
                                           "namespace": NS}
        assert event["source"] == {"component": "vidfarm-autoscaler"}
    assert "4 -> 6" in fake.events[0]["message"]
    assert "6 -> 5" in fake.events[1]["message"] and "worker-cpu-b" in fake.events[1]["message"]


def test_an_event_that_cannot_be_written_never_stops_scaling(fake: FakeKube) -> None:
    fake.forbid("POST", r"/events$")
    backend(fake).scale_to(6, [])
    assert fake.replicas(NS, DEPLOY) == 6
    assert not fake.events
