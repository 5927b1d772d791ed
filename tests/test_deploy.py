"""Deployment artefacts: kustomize overlays, Grafana dashboard, Prometheus config, Dockerfile.

Overlays are rendered with `kubectl kustomize` when kubectl is installed, else
with tests/kustomize_lite.py (and when both are available, they must agree).
Rendered objects are validated against the Kubernetes 1.30 OpenAPI schema and
checked against the deployment policy: hardened pods, requests and limits,
least-privilege RBAC, NetworkPolicies, a grace period that outlasts a job.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from vidfarm.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
import kustomize_lite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vidfarm.json"
K8S_VERSION = "1.30"

OVERLAYS = ["cpu", "gpu"]
# Each optional component rendered on top of an overlay: "cpu+prometheus-operator" and so on.
COMPONENTS = {"prometheus-operator": "cpu", "ingress-nginx": "gpu"}
# Every rule below holds for all of these.
VARIANTS = OVERLAYS + [f"{overlay}+{component}" for component, overlay in COMPONENTS.items()]
# Media in a bucket instead of the shared volume: its own rules (no PVC), and the common ones below.
S3_VARIANTS = ["cpu+s3", "gpu+s3"]
# The wrappers deploy/README.md shows (S3, GKE, EKS), rendered exactly as written there.
README_WRAPPERS = ["my-farm", "gke", "eks"]
APP_ROLES = {"uploader", "worker", "autoscaler"}
# Kinds from CRDs (Prometheus Operator, Gateway API): not in the core schema, parse-checked only.
CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/", "networking.gke.io/")

# Every metric the code exports; the dashboard may use nothing else.
COUNTERS_GAUGES = {
    "vidfarm_uploads_total",
    "vidfarm_upload_bytes_total",
    "vidfarm_jobs_enqueued_total",
    "vidfarm_queue_jobs",
    "vidfarm_transcodes_total",
    "vidfarm_failures_total",
    "vidfarm_workers",
    "vidfarm_autoscaler_desired_replicas",
    "vidfarm_autoscaler_current_replicas",
    "vidfarm_autoscaler_decisions_total",
    "vidfarm_autoscaler_backlog_seconds",
    "vidfarm_renditions_not_scored_total",
}
HISTOGRAMS = {
    "vidfarm_upload_duration_seconds",
    "vidfarm_http_request_duration_seconds",
    "vidfarm_job_wait_seconds",
    "vidfarm_transcode_duration_seconds",
    "vidfarm_transcode_speed_ratio",
    "vidfarm_rendition_vmaf",
    "vidfarm_rendition_vmaf_p5",
}
KNOWN_SERIES = COUNTERS_GAUGES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}


# --- rendering -----------------------------------------------------------------


def _kubectl_build(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@functools.cache
def _render_path(path: str) -> tuple[dict, ...]:
    build = _kubectl_build if shutil.which("kubectl") else kustomize_lite.build
    return tuple(build(Path(path)))


@functools.cache
def variant_dir(variant: str) -> Path:
    """The kustomization directory of an overlay, or of an overlay plus one optional component."""
    overlay, _, component = variant.partition("+")
    if not component:
        return K8S / "overlays" / overlay
    d = Path(tempfile.mkdtemp(prefix=f"vidfarm-{overlay}-{component}-"))
    (d / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "vidfarm",
                # kustomize refuses absolute paths here.
                "resources": [os.path.relpath(K8S / "overlays" / overlay, d)],
                "components": [os.path.relpath(K8S / "components" / component, d)],
            }
        )
    )
    return d


def render(variant: str) -> list[dict]:
    if variant in README_WRAPPERS:
        return list(_render_path(str(readme_wrapper_dir(variant))))
    return list(_render_path(str(variant_dir(variant))))


def readme_wrappers() -> dict[str, str]:
    """{directory name: kustomization text} of every `# deploy/k8s/NAME/kustomization.yaml` block there."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n# deploy/k8s/([\w-]+)/kustomization\.yaml\n(.*?)```", readme, re.S)
    return dict(blocks)


@functools.cache
def readme_wrapper_dir(name: str) -> Path:
    """The README's wrapper in a directory beside the overlays, as the README places it, so its
    relative paths (`../overlays/cpu`) resolve exactly as written."""
    d = Path(tempfile.mkdtemp(prefix=f".test-{name}-", dir=K8S))
    (d / "kustomization.yaml").write_text(readme_wrappers()[name])
    return d


@pytest.fixture(scope="module", autouse=True)
def _remove_readme_wrappers():
    yield
    for d in K8S.glob(".test-*"):
        shutil.rmtree(d, ignore_errors=True)


def find(resources: list[dict], kind: str, name: str) -> dict:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_templates(resources: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template) for every workload in the render."""
    return [
        (r, r["spec"]["template"]) for r in resources if r["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def app_workloads(resources: list[dict]) -> list[dict]:
    return [
        r
        for r, tpl in pod_templates(resources)
        if tpl["metadata"]["labels"].get("app.kubernetes.io/component") in APP_ROLES
    ]


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


# --- rendering and schema --------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_overlay_renders_the_whole_farm(variant):
    res = render(variant)
    names = {(r["kind"], r["metadata"]["name"]) for r in res}
    for expected in [
        ("Namespace", "vidfarm"),
        ("StatefulSet", "redis"),
        ("StatefulSet", "postgres"),
        ("PersistentVolumeClaim", "vidfarm-storage"),
        ("Deployment", "uploader"),
        ("Deployment", "worker-cpu"),
        ("Deployment", "autoscaler"),
        ("Deployment", "grafana"),
        ("Deployment", "prometheus"),
        ("HTTPRoute", "uploader"),
        ("PodDisruptionBudget", "uploader"),
        ("PodDisruptionBudget", "worker-cpu"),
    ]:
        assert expected in names
    assert (("Deployment", "worker-gpu") in names) == variant.startswith("gpu")
    assert (("Ingress", "uploader") in names) == variant.endswith("+ingress-nginx")
    for r in res:
        if r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == "vidfarm", r["metadata"]["name"]
    # Secrets are created by hand (deploy/README.md), never shipped.
    assert not [r for r in res if r["kind"] == "Secret"]


def _validate(resources: list[dict]) -> None:
    for r in resources:
        assert r.get("apiVersion") and r.get("kind") and r.get("metadata", {}).get("name")
        if r["apiVersion"].startswith(CRD_GROUPS):
            assert isinstance(r.get("spec"), dict)
            continue
        kubernetes_validate.validate(r, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS + S3_VARIANTS + README_WRAPPERS)
def test_overlay_validates_against_kubernetes_schema(variant):
    _validate(render(variant))


def test_prometheus_operator_component():
    res = render("cpu+prometheus-operator")
    monitors = {r["metadata"]["name"]: r for r in res if r["apiVersion"].startswith("monitoring.coreos.com/")}
    assert set(monitors) == {"vidfarm-uploader", "vidfarm-workers", "vidfarm-autoscaler"}
    uploader_svc = find(res, "Service", "uploader")
    assert monitors["vidfarm-uploader"]["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in uploader_svc["spec"]["ports"]
    }
    # Every PodMonitor selects pods that really have the named port.
    for m in monitors.values():
        if m["kind"] != "PodMonitor":
            continue
        selector = m["spec"]["selector"]["matchLabels"]
        selected = [w for w, tpl in pod_templates(res) if selector.items() <= tpl["metadata"]["labels"].items()]
        assert selected, m["metadata"]["name"]
        port = m["spec"]["podMetricsEndpoints"][0]["port"]
        for w in selected:
            assert port in {p["name"] for p in container(w).get("ports", [])}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
@pytest.mark.parametrize("variant", VARIANTS + S3_VARIANTS + README_WRAPPERS)
def test_kustomize_lite_agrees_with_kubectl(variant):
    path = readme_wrapper_dir(variant) if variant in README_WRAPPERS else variant_dir(variant)

    def key(r):
        return (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])

    real = {key(r): r for r in _kubectl_build(path)}
    lite = {key(r): r for r in kustomize_lite.build(path)}
    assert real.keys() == lite.keys()
    for k, r in real.items():
        assert lite[k] == r, k


# --- policy: every pod --------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS + S3_VARIANTS + README_WRAPPERS)
def test_every_pod_is_hardened_and_bounded(variant):
    for workload, tpl in pod_templates(render(variant)):
        name = workload["metadata"]["name"]
        spec = tpl["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 1) != 0, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, (name, c["name"])
            assert sc.get("privileged") in (None, False), (name, c["name"])
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), (name, c["name"])
            assert not sc.get("capabilities", {}).get("add"), (name, c["name"])
            for section in ("requests", "limits"):
                got = c.get("resources", {}).get(section, {})
                assert {"cpu", "memory"} <= got.keys(), (name, c["name"], section)


@pytest.mark.parametrize("variant", VARIANTS + S3_VARIANTS)
def test_only_the_autoscaler_and_prometheus_talk_to_the_api_server(variant):
    for workload, tpl in pod_templates(render(variant)):
        if workload["metadata"]["name"] not in ("autoscaler", "prometheus"):
            assert tpl["spec"].get("automountServiceAccountToken") is False, workload["metadata"]["name"]


# --- workers ----------------------------------------------------------------------


def resolved_env(resources: list[dict], workload: dict) -> dict[str, str]:
    """The container's plain environment: literal values and ConfigMap keys (not Secrets or fields)."""
    env = {}
    for e in container(workload).get("env", []):
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if "value" in e:
            env[e["name"]] = e["value"]
        elif ref:
            env[e["name"]] = find(resources, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def pod_settings(resources: list[dict], workload: dict) -> Settings:
    """The Settings `vidfarm` builds in this pod, from the environment the manifests give it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("VIDFARM_"):
                patch.delenv(name)
        for name, value in resolved_env(resources, workload).items():
            if name != "VIDFARM_API_KEYS_FILE":  # a Secret mounted in the pod only
                patch.setenv(name, value)
        return Settings.from_env()


def longest_chunk_job_timeout_s(resources: list[dict], workload: dict) -> int:
    """The job timeout of the longest chunk: a chunk is under two chunk lengths (the last one takes the
    remainder), whatever the video's length."""
    settings = pod_settings(resources, workload)
    return settings.job_timeout_s(2 * settings.chunk_seconds)


# What GKE honours of a worker's grace period during node upgrades (and of a PDB).
GKE_UPGRADE_GRACE_S = 3600


def worker_deployments(resources: list[dict]) -> list[dict]:
    workers = [
        w for w in app_workloads(resources)
        if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert workers
    return workers


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_workers_leave_replicas_to_the_autoscaler_and_outlive_a_job(variant):
    res = render(variant)
    for w in worker_deployments(res):
        # The autoscaler owns the count: a value here resets it on every apply or GitOps sync.
        assert "replicas" not in w["spec"], w["metadata"]["name"]
        # Must cover the longest chunk's job timeout, or scale-in kills transcodes; with chunking a job
        # is one chunk, so no more than GKE honours on upgrades (a 24 h grace it would cut anyway).
        grace = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert longest_chunk_job_timeout_s(res, w) <= grace <= GKE_UPGRADE_GRACE_S
        c = container(w)
        # Entrypoint is the image's `tini -- vidfarm`; no command override
        # that could put a shell between tini and the worker.
        assert "command" not in c
        assert c["args"][0] == "worker"
        assert "--metrics-port" in c["args"]
        assert "livenessProbe" not in c
        # Ready once the worker takes jobs: its metrics port opens after the start-up checks.
        assert c["readinessProbe"]["tcpSocket"]["port"] in ("metrics", int(_arg(c["args"], "--metrics-port")))


@pytest.mark.parametrize("variant", VARIANTS)
def test_busy_workers_are_not_evicted_by_node_scale_down(variant):
    for w in worker_deployments(render(variant)):
        ann = w["spec"]["template"]["metadata"]["annotations"]
        assert ann["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert ann["karpenter.sh/do-not-disrupt"] == "true"


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_worker_names_the_pool_that_scales_it(variant):
    """--pool, not the first queue, ties a worker to the pools.yaml entry whose scale-in picks it."""
    res = render(variant)
    pools = _pools(res)
    scaled = {p["deployment"]: name for name, p in pools.items()}
    for w in worker_deployments(res):
        args = container(w)["args"]
        pool = _arg(args, "--pool")
        assert scaled[w["metadata"]["name"]] == pool
        assert _queues(args)[: len(pools[pool]["queues"])] == pools[pool]["queues"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ffmpeg_threads_follow_the_cpu_limit(variant):
    from transcoder.worker import FFMPEG_THREADS_ENV

    for w in worker_deployments(render(variant)):
        c = container(w)
        ref = env_map(c)[FFMPEG_THREADS_ENV]["valueFrom"]["resourceFieldRef"]
        # Whole cores (divisor 1 rounds up), of this container's limit, which must exist.
        assert ref == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}
        assert c["resources"]["limits"]["cpu"]


# Measured by bench/worker_memory.py and recorded in BENCHMARKS.md ("Worker memory"): the highest
# peak RSS of any job's ffmpeg (a 4K HDR PQ chunk: zscale tone mapping, 2160p/1440p/1080p/720p, with
# ffmpeg threads = worker-cpu's CPU limit) and of the `vidfarm worker` process itself. Re-measure
# and update them when the job commands, the ladder or the CPU limit change.
WORKER_FFMPEG_PEAK_MIB = 1703
WORKER_PROCESS_PEAK_MIB = 60
MEASURED_AT_THREADS = 4
# Half again on top, for what a few seconds of test pattern does not show: real sources' deeper
# reference lists and bigger frames in flight, allocator growth over hours-long encodes.
MEMORY_HEADROOM = 1.5
# GPU workers also hold the CUDA/NVENC driver's host memory: an allowance, not a measurement (no
# NVENC-capable GPU was in the benchmark's reach).
GPU_DRIVER_ALLOWANCE_MIB = 1024
MIB = 1024 * 1024


def _cores(quantity: str) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def worker_memory_needed_mib(resources: dict) -> float:
    needed = (WORKER_FFMPEG_PEAK_MIB + WORKER_PROCESS_PEAK_MIB) * MEMORY_HEADROOM
    return needed + (GPU_DRIVER_ALLOWANCE_MIB if "nvidia.com/gpu" in resources["limits"] else 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_memory_covers_the_measured_peak(variant):
    for w in worker_deployments(render(variant)):
        name, resources = w["metadata"]["name"], container(w)["resources"]
        limit = _bytes(resources["limits"]["memory"])
        assert limit >= worker_memory_needed_mib(resources) * MIB, name
        # Request = limit: under node memory pressure the kubelet evicts first the pods using more
        # than they requested, and evicting a worker throws its transcode away.
        assert _bytes(resources["requests"]["memory"]) == limit, name
        # The peak was measured with this many ffmpeg threads; more threads (a higher CPU limit) use
        # more memory, so a higher limit needs a new measurement first.
        assert math.ceil(_cores(resources["limits"]["cpu"])) <= MEASURED_AT_THREADS, name


def test_benchmarks_record_the_worker_memory_figures():
    """The constants above are the ones BENCHMARKS.md reports, so neither changes alone."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text[text.index("## Worker memory"):]
    assert f"highest ffmpeg peak: {WORKER_FFMPEG_PEAK_MIB} MiB" in section
    assert f"worker process peak (VmHWM, after a job): {WORKER_PROCESS_PEAK_MIB} MiB" in section
    assert f"worker-cpu CPU limit: {MEASURED_AT_THREADS}" in section


def _queues(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--queue"]


def test_cpu_and_gpu_workers():
    res = render("gpu")
    cpu, gpu = container(find(res, "Deployment", "worker-cpu")), find(res, "Deployment", "worker-gpu")
    assert _queues(cpu["args"]) == ["cpu"]
    assert cpu["args"][cpu["args"].index("--encoder") + 1] == "x264"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]

    gpu_spec = gpu["spec"]["template"]["spec"]
    gc = container(gpu)
    # Own queue first: RQ checks queues in order, so CPU work only when idle.
    assert _queues(gc["args"]) == ["gpu", "cpu"]
    assert gc["args"][gc["args"].index("--encoder") + 1] == "nvenc"
    assert gc["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Labels that GPU Feature Discovery or the GPU Operator set on running nodes only are missing
    # from node group templates and NodePools: selecting on them, no GPU node ever scales up.
    selected = set(gpu_spec.get("nodeSelector", {})) | {
        expr["key"]
        for term in gpu_spec.get("affinity", {}).get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
        for expr in term.get("matchExpressions", [])
    }
    assert not [k for k in selected if k.startswith(("nvidia.com/", "feature.node.kubernetes.io/"))], selected
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_spec["tolerations"])
    assert "video" in env_map(gc)["NVIDIA_DRIVER_CAPABILITIES"]["value"]


# --- app pods ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_app_pods_share_one_image_and_the_environment(variant):
    res = render(variant)
    apps = app_workloads(res)
    assert {w["metadata"]["name"] for w in apps} >= {"uploader", "worker-cpu", "autoscaler"}
    assert len({container(w)["image"] for w in apps}) == 1
    for w in apps:
        name, c = w["metadata"]["name"], container(w)
        env = env_map(c)
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vidfarm", "key": "REDIS_URL"}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vidfarm", "key": "DATABASE_URL"}
        assert env["VIDFARM_STORAGE_DIR"]["value"] == "/data/storage"
        assert c["imagePullPolicy"] == "IfNotPresent", name
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        # Every role touches the shared volume; the autoscaler's reconciler sweeps partial uploads there.
        claim = volumes[mounts["/data/storage"]]["persistentVolumeClaim"]["claimName"]
        assert claim == "vidfarm-storage", name
        # Scrape annotations point at a port the container really opens.
        ann = w["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/path"] == "/metrics"
        assert int(ann["prometheus.io/port"]) in {p["containerPort"] for p in c["ports"]}
    pvc = find(res, "PersistentVolumeClaim", "vidfarm-storage")["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    # Set by the overlay: GKE's and EKS's default classes are ReadWriteOnce and would never bind.
    assert pvc["storageClassName"]


@pytest.mark.parametrize("variant", S3_VARIANTS)
def test_s3_component_replaces_the_shared_volume_with_scratch_and_a_bucket(variant):
    res = render(variant)
    assert not [r for r in res if r["kind"] == "PersistentVolumeClaim" and r["metadata"]["name"] == "vidfarm-storage"]
    assert find(res, "ConfigMap", "vidfarm-s3")["data"]["VIDFARM_STORAGE_URL"].startswith("s3://")
    apps = app_workloads(res)
    assert {w["metadata"]["name"] for w in apps} >= {"uploader", "worker-cpu", "autoscaler"}
    for w in apps:
        name, c, spec = w["metadata"]["name"], container(w), w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert not [v for v in volumes.values() if "persistentVolumeClaim" in v], name
        # Settings from the ConfigMap; keys from an optional Secret, so a role (IRSA) may replace them.
        assert {"configMapRef": {"name": "vidfarm-s3"}} in c["envFrom"], name
        assert {"secretRef": {"name": "vidfarm-s3", "optional": True}} in c["envFrom"], name
        scratch = env_map(c)["VIDFARM_SCRATCH_DIR"]["value"]
        mount = next(m for m in c["volumeMounts"] if scratch.startswith(m["mountPath"]))
        assert "sizeLimit" in volumes[mount["name"]]["emptyDir"], name
        role = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        if role == "worker":
            assert _bytes(volumes[mount["name"]]["emptyDir"]["sizeLimit"]) >= 50 * 1024**3, name
            assert "ephemeral-storage" in c["resources"]["requests"], name
        if role in ("uploader", "worker"):
            assert spec["serviceAccountName"] == "vidfarm-media" and spec["automountServiceAccountToken"] is False
    for account in ("vidfarm-media", "vidfarm-autoscaler"):  # where an IRSA role goes
        assert "eks.amazonaws.com/role-arn" in find(res, "ServiceAccount", account)["metadata"]["annotations"]


@pytest.mark.parametrize("variant", S3_VARIANTS)
def test_s3_component_lets_api_and_workers_reach_the_store_and_the_data_stores(variant):
    res = render(variant)
    policy = find(res, "NetworkPolicy", "media-egress")["spec"]
    assert policy["policyTypes"] == ["Egress"]
    (selector,) = policy["podSelector"]["matchExpressions"]
    assert set(selector["values"]) == {"uploader", "worker"}  # the autoscaler also needs the API server
    ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 6379), ("TCP", 5432), ("TCP", 443)} <= ports


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_api_gets_the_api_keys(variant):
    for workload, tpl in pod_templates(render(variant)):
        name, spec = workload["metadata"]["name"], tpl["spec"]
        secrets = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        env = {e["name"] for c in spec["containers"] for e in c.get("env", [])}
        is_api = name == "uploader"
        assert ("vidfarm-api-keys" in secrets) == is_api, name
        assert ("VIDFARM_API_KEYS_FILE" in env) == is_api, name
    uploader = container(find(render(variant), "Deployment", "uploader"))
    assert env_map(uploader)["VIDFARM_API_KEYS_FILE"]["value"].startswith(
        next(m["mountPath"] for m in uploader["volumeMounts"] if m["name"] == "api-keys")
    )


def _published_paths(res: list[dict]) -> list[tuple[str, str]]:
    """(kind, path prefix) of every route from outside the cluster to the uploader."""
    paths = [
        ("Ingress", p["path"])
        for ing in res if ing["kind"] == "Ingress"
        for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]
    ]
    paths += [
        ("HTTPRoute", m["path"]["value"])
        for route in res if route["kind"] == "HTTPRoute"
        for rule in route["spec"]["rules"] for m in rule["matches"]
    ]
    return paths


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_client_api_is_published(variant):
    res = render(variant)
    paths = _published_paths(res)
    assert paths
    for kind, path in paths:
        # /v1 and below only: /metrics, /docs, /healthz and /readyz stay inside the cluster.
        assert path == "/v1" or path.startswith("/v1/"), (kind, path)
    kinds = {k for k, _ in paths}
    assert "HTTPRoute" in kinds  # the first-class way in
    assert ("Ingress" in kinds) == variant.endswith("+ingress-nginx")


@pytest.mark.parametrize("variant", VARIANTS)
def test_uploader_drains_before_it_stops(variant):
    up = find(render(variant), "Deployment", "uploader")
    command = container(up)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # preStop, then the API's graceful shutdown (30 s for requests in flight), before SIGKILL.
    assert up["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= int(command[1]) + 30


def test_uploader_api_probes_pdb_and_the_way_in():
    res = render("cpu")
    up = find(res, "Deployment", "uploader")
    c = container(up)
    assert up["spec"]["replicas"] == 2
    assert c["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    labels = up["spec"]["template"]["metadata"]["labels"]
    pdb = find(res, "PodDisruptionBudget", "uploader")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = find(res, "Service", "uploader")
    assert svc["spec"]["selector"].items() <= labels.items()
    # The Gateway API route is the way in: only /v1, to the Service, with timeouts that fit uploads and
    # event streams, and a parent Gateway named with its namespace (it usually lives in another one).
    route = find(res, "HTTPRoute", "uploader")["spec"]
    assert all(ref.get("namespace") for ref in route["parentRefs"])
    for rule in route["rules"]:
        assert [m["path"] for m in rule["matches"]] == [{"type": "PathPrefix", "value": "/v1"}]
        assert [(b["name"], b["port"]) for b in rule["backendRefs"]] == [("uploader", svc["spec"]["ports"][0]["port"])]
        for timeout in ("request", "backendRequest"):
            assert int(rule["timeouts"][timeout].rstrip("s")) >= 3600
    # ingress-nginx is an option (a component), with the annotations multi-GiB uploads need.
    assert not [r for r in res if r["kind"] == "Ingress"]
    ann = find(render("gpu+ingress-nginx"), "Ingress", "uploader")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert ann["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600


def _pools_configmap_name(res: list[dict]) -> str:
    asc = find(res, "Deployment", "autoscaler")
    mount = next(m for m in container(asc)["volumeMounts"] if m["mountPath"] == "/etc/vidfarm/pools.yaml")
    volume = next(v for v in asc["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    return volume["configMap"]["name"]


def _pools(res: list[dict]) -> dict:
    asc = find(res, "Deployment", "autoscaler")
    c = container(asc)
    config_path = c["args"][c["args"].index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == config_path)
    volume = next(v for v in asc["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = find(res, "ConfigMap", volume["configMap"]["name"])
    return {p["name"]: p for p in yaml.safe_load(cm["data"][mount["subPath"]])["pools"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_autoscaler_runs_two_replicas_with_its_pools(variant):
    res = render(variant)
    asc = find(res, "Deployment", "autoscaler")
    c = container(asc)
    assert asc["spec"]["replicas"] == 2
    assert asc["spec"]["template"]["spec"]["serviceAccountName"] == "vidfarm-autoscaler"
    assert c["args"] == ["autoscaler", "--config", "/etc/vidfarm/pools.yaml", "--metrics-port", "9101"]
    pools = _pools(res)
    expected = {"cpu": ("worker-cpu", ["cpu"], 0, 10)}
    if variant.startswith("gpu"):
        expected["gpu"] = ("worker-gpu", ["gpu"], 0, 4)
    assert {n: (p["deployment"], p["queues"], p["min"], p["max"]) for n, p in pools.items()} == expected
    for p in pools.values():
        find(res, "Deployment", p["deployment"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_pools_config_loads_with_the_autoscaler(variant):
    """The shipped pools file is one the real loader accepts, for this namespace and Lease."""
    config_mod = pytest.importorskip("autoscaler.config")
    res = render(variant)
    asc = find(res, "Deployment", "autoscaler")
    c = container(asc)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/vidfarm/pools.yaml")
    volume = next(v for v in asc["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    text = find(res, "ConfigMap", volume["configMap"]["name"])["data"][mount["subPath"]]
    document = yaml.safe_load(text)
    # The namespace is set in one place, the overlay: the pod reads its own (downward API).
    assert "namespace" not in document and all("namespace" not in p for p in document["pools"])
    assert env_map(c)["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POD_NAMESPACE", asc["metadata"]["namespace"])
        config = config_mod.parse_config(document, source=f"{variant} pools.yaml")
    assert config.lease_name == "vidfarm-autoscaler"
    assert {p.namespace for p in config.pools} == {asc["metadata"]["namespace"]}


def test_readme_states_the_workers_grace_period():
    """deploy/README.md tells operators how long a worker rollout may take: it must match."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    stated = {int(n) for n in re.findall(r"terminationGracePeriodSeconds: (\d+)", readme)}
    actual = {
        w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for variant in OVERLAYS for w in worker_deployments(render(variant))
    }
    assert stated == actual


# --- RBAC --------------------------------------------------------------------------


def _rules(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_is_least_privilege(variant):
    res = render(variant)
    assert not [r for r in res if r["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in (r for r in res if r["kind"] == "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
    # Exactly what autoscaler/k8s.py and autoscaler/leader.py call (the selector comes from the scale).
    role = find(res, "Role", "vidfarm-autoscaler")
    assert _rules(role) == {
        ("apps", "deployments/scale", "get"),
        ("apps", "deployments/scale", "patch"),
        ("", "pods", "list"),
        ("", "pods", "patch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "events", "create"),
    }
    # Reading and renewing a Lease: its own only (create cannot be narrowed by name).
    pools = yaml.safe_load(find(res, "ConfigMap", _pools_configmap_name(res))["data"]["pools.yaml"])
    for rule in role["rules"]:
        if rule["resources"] == ["leases"] and set(rule["verbs"]) & {"get", "update"}:
            assert rule["resourceNames"] == [pools["lease_name"]]
    # Prometheus only discovers pods.
    assert _rules(find(res, "Role", "prometheus")) <= {("", "pods", v) for v in ("get", "list", "watch")}
    for binding in (r for r in res if r["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        role = find(res, "Role", binding["roleRef"]["name"])
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert subject["namespace"] == role["metadata"]["namespace"]
            find(res, "ServiceAccount", subject["name"])


# --- data stores ---------------------------------------------------------------------


@pytest.mark.parametrize("store, port", [("redis", 6379), ("postgres", 5432)])
def test_data_stores_reachable_only_from_farm_pods(store, port):
    res = render("gpu")
    sts = find(res, "StatefulSet", store)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in res
        if p["kind"] == "NetworkPolicy" and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert policies, f"no NetworkPolicy selects {store}"
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress"]
        for rule in p["spec"]["ingress"]:
            assert [pt["port"] for pt in rule["ports"]] == [port]
            for peer in rule["from"]:
                # Same-namespace pods with the farm label; no namespaceSelector or ipBlock.
                assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "vidfarm"}}}
    # ...and every app pod carries that label.
    for w in app_workloads(res):
        assert w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vidfarm"
    assert sts["spec"]["volumeClaimTemplates"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 999


UNITS = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "k": 1000, "m": 1000**2, "g": 1000**3,
         "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", quantity).groups()
    return int(number) * UNITS.get(unit.lower(), 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_redis_is_durable_bounded_and_password_protected(variant):
    res = render(variant)
    conf = find(res, "ConfigMap", "redis-config")["data"]["redis.conf"]
    lines = {line.strip() for line in conf.splitlines()}
    assert {"appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"} <= lines
    assert any(line.startswith("save ") for line in lines)
    c = container(find(res, "StatefulSet", "redis"))
    # noeviction without maxmemory grows until the OOM killer ends Redis; an AOF rewrite forks and
    # its copy-on-write pages need room under the same limit.
    maxmemory = [_bytes(line.split()[1]) for line in lines if line.startswith("maxmemory ")]
    assert len(maxmemory) == 1 and 0 < maxmemory[0] <= _bytes(c["resources"]["limits"]["memory"]) // 2
    # The password is on no command line (`ps` shows those to anyone on the node): an init container
    # writes it from the Secret into a memory-backed file that redis.conf includes.
    spec = find(res, "StatefulSet", "redis")["spec"]["template"]["spec"]
    for each in spec["initContainers"] + spec["containers"]:
        assert "requirepass" not in " ".join(each.get("command", []) + each.get("args", [])).replace(
            "printf \"requirepass %s", ""), each["name"]
    (init,) = spec["initContainers"]
    assert env_map(init)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "vidfarm"
    included = next(line.split()[1] for line in lines if line.startswith("include "))
    written = re.search(r"> (\S+)", init["command"][-1]).group(1)
    assert written == included
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert volumes[mounts[str(Path(included).parent)]]["emptyDir"]["medium"] == "Memory"
    assert str(Path(included).parent) in {m["mountPath"] for m in c["volumeMounts"]}


def test_secret_example_covers_every_secret_reference():
    """secret.example.yaml documents every key the manifests read (and is not applied)."""
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base["resources"]
    examples = {
        s["metadata"]["name"]: set(s["stringData"])
        for s in yaml.safe_load_all((K8S / "base" / "secret.example.yaml").read_text())
    }
    for workload, tpl in pod_templates(render("gpu")):
        spec = tpl["spec"]
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in examples.get(ref["name"], set()), (workload["metadata"]["name"], ref)
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in examples


# --- Grafana and Prometheus ------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def test_dashboard_queries_use_only_exported_metrics():
    dash = _dashboard()
    panels = _panels(dash)
    assert len(panels) >= 10
    for p in panels:
        exprs = [t.get("expr", "") for t in p.get("targets", []) if t.get("expr")]
        assert exprs, f"panel {p['title']!r} has no query"
        # The dashboard's datasource variable, not a uid of one Grafana (import or provisioning picks it).
        assert p["datasource"]["uid"] == "${datasource}"
        for expr in exprs:
            names = set(re.findall(r"\bvidfarm_[a-z0-9_]+", expr))
            assert names, (p["title"], expr)
            assert names <= KNOWN_SERIES, (p["title"], names - KNOWN_SERIES)
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            assert set(re.findall(r"\bvidfarm_[a-z0-9_]+", var["query"]["query"])) <= KNOWN_SERIES
    # Panel ids unique (Grafana links and provisioning depend on it).
    ids = [p["id"] for p in dash["panels"]] + [c["id"] for p in dash["panels"] for c in p.get("panels", [])]
    assert len(ids) == len(set(ids))


def test_dashboard_keeps_farms_apart_and_imports_into_any_grafana():
    """No hard-coded datasource uid (a datasource variable, __inputs for import), and a namespace
    variable every query is scoped by, so two farms scraped by one Prometheus do not add up."""
    dash = _dashboard()
    assert [i["pluginId"] for i in dash["__inputs"]] == ["prometheus"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "namespace" in variables["namespace"]["query"]["query"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}"
    queries = [t["expr"] for p in _panels(dash) for t in p["targets"]]
    queries += [v["query"]["query"] for v in variables.values() if v["type"] == "query" and v["name"] != "namespace"]
    for expr in queries:
        for selector in re.findall(r"\bvidfarm_[a-z0-9_]+(\{[^}]*\})?", expr):
            assert 'namespace=~"$namespace"' in selector, expr
    prometheus = (K8S / "components" / "observability" / "prometheus" / "prometheus.yml").read_text()
    relabels = yaml.safe_load(prometheus)["scrape_configs"][0]["relabel_configs"]
    assert {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"} in relabels


def test_dashboard_opens_on_the_scaling_view():
    first = _panels(_dashboard())[0]
    text = " ".join(t["expr"] for t in first["targets"])
    for metric in (
        "vidfarm_queue_jobs",
        "vidfarm_autoscaler_desired_replicas",
        "vidfarm_autoscaler_current_replicas",
    ):
        assert metric in text


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == ["prometheus"]
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vidfarm.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"


def test_cluster_grafana_files_are_copies_of_deploy_grafana():
    """kustomize can't read outside its root: the component holds a copy that must not drift."""
    copy_root = K8S / "components" / "observability" / "grafana"
    canonical = {p.relative_to(GRAFANA): p.read_bytes() for p in GRAFANA.rglob("*") if p.is_file()}
    copied = {p.relative_to(copy_root): p.read_bytes() for p in copy_root.rglob("*") if p.is_file()}
    assert canonical == copied, "copy deploy/grafana/ to deploy/k8s/components/observability/grafana/"


def test_cluster_grafana_mounts_what_provisioning_expects():
    res = render("cpu")
    graf = find(res, "Deployment", "grafana")
    c = container(graf)
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in graf["spec"]["template"]["spec"]["volumes"]}
    dash_cm = find(res, "ConfigMap", volumes[mounts[env["VIDFARM_DASHBOARDS_DIR"]]]["configMap"]["name"])
    assert json.loads(dash_cm["data"]["vidfarm.json"]) == _dashboard()
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(env["VIDFARM_DASHBOARDS_DIR"])
    for sub in ("datasources", "dashboards"):
        assert f"/etc/grafana/provisioning/{sub}" in mounts
    assert find(res, "Service", "prometheus")["spec"]["ports"][0]["port"] == int(
        env["PROMETHEUS_URL"].rsplit(":", 1)[1]
    )


def test_local_prometheus_reads_the_vidfarm_up_targets_file():
    config_path = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    files = [f for job in config["scrape_configs"] for sd in job["file_sd_configs"] for f in sd["files"]]
    # Prometheus resolves relative paths against the config file's directory:
    # this is the default VIDFARM_HOME (./.vidfarm) of a farm run from the repo root.
    assert [(config_path.parent / f).resolve() for f in files] == [ROOT / ".vidfarm" / "prometheus" / "targets.json"]


# --- image --------------------------------------------------------------------------


def _project_dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]



def test_dockerfile_builds_one_non_root_image_with_signal_forwarding():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and stages[-1] == "python:3.11-slim-bookworm"
    assert "pip wheel" in text
    assert re.search(r"apt-get install[^\n]*\bffmpeg\b[^\n]*\btini\b", text)
    assert re.search(r"^USER 10001(:10001)?$", text, re.M)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    # exec form, tini first, and no -g (that would SIGTERM ffmpeg along with the worker).
    assert entrypoint[:2] == ["tini", "--"] and entrypoint[-1] == "vidfarm"
    assert json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1)) == ["api"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "README.md" not in ignored


def test_image_finds_gke_driver_libraries_and_pins_its_dependencies():
    text = (ROOT / "Dockerfile").read_text()
    library_path = re.search(r"LD_LIBRARY_PATH=(\S+)", text).group(1).split(":")
    assert "/usr/local/nvidia/lib64" in library_path  # where GKE mounts libnvidia-encode
    assert re.search(r"pip wheel [^\n]*--constraint constraints.txt", text)
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", line) for line in pins)
    declared = {re.split(r"[\[<>=!~ ]", dep)[0].lower().replace("_", "-") for dep in _project_dependencies()}
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in pins}
    assert declared <= pinned, declared - pinned


# --- a cluster owner's first day on GKE and EKS (issue 21) ------------------------------------------


def _namespaced(r: dict) -> bool:
    return r["kind"] not in kustomize_lite._CLUSTER_SCOPED and not r["kind"].startswith("ValidatingAdmissionPolicy")


def test_readme_shows_the_wrappers_these_tests_render():
    assert set(readme_wrappers()) == set(README_WRAPPERS)


@pytest.mark.parametrize("wrapper", README_WRAPPERS)
def test_readme_wrappers_put_everything_in_the_farm_namespace(wrapper):
    """The README's wrappers, exactly as written: what a component adds (the S3 ServiceAccount, ConfigMap
    and NetworkPolicy) lands beside the pods that use it, or those pods never start."""
    res = render(wrapper)
    for r in res:
        if _namespaced(r):
            assert r["metadata"].get("namespace") == "vidfarm", (r["kind"], r["metadata"]["name"])
    names = {(r["kind"], r["metadata"]["name"]) for r in res}
    for workload, tpl in pod_templates(res):
        spec = tpl["spec"]
        account = spec.get("serviceAccountName")
        if account:
            assert ("ServiceAccount", account) in names, (workload["metadata"]["name"], account)
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names


def test_readme_private_registry_step_covers_every_service_account():
    readme = (ROOT / "deploy" / "README.md").read_text()
    patched = set(re.search(r"for sa in ([\w -]+); do", readme).group(1).split())
    # Every pod that runs the farm's image (the others pull public images).
    used = {
        w["spec"]["template"]["spec"].get("serviceAccountName", "default")
        for variant in VARIANTS + S3_VARIANTS + README_WRAPPERS
        for w in app_workloads(render(variant))
    }
    assert used <= patched, used - patched


def _uploader(res: list[dict]) -> dict:
    return find(res, "Deployment", "uploader")


@pytest.mark.parametrize("variant", VARIANTS + README_WRAPPERS)
def test_public_url_and_trusted_proxies_are_set(variant):
    """Behind a TLS gateway every URL a client receives must be https: the public URL is explicit in
    every app pod, and the API believes X-Forwarded-* only from address ranges, never from anyone."""
    import ipaddress

    res = render(variant)
    env = resolved_env(res, _uploader(res))
    public = env["VIDFARM_PUBLIC_URL"]
    assert public.startswith("https://")
    trusted = env["FORWARDED_ALLOW_IPS"].split(",")
    assert "*" not in trusted
    for entry in trusted:
        ipaddress.ip_network(entry.strip())  # raises on anything but an address or a range
    for w in app_workloads(res):
        assert resolved_env(res, w)["VIDFARM_PUBLIC_URL"] == public, w["metadata"]["name"]
    # The name clients use is the one the route answers to.
    assert public.removeprefix("https://").split("/")[0] in find(res, "HTTPRoute", "uploader")["spec"]["hostnames"]
    # uvicorn reads FORWARDED_ALLOW_IPS only if no --forwarded-allow-ips overrides it.
    assert "--forwarded-allow-ips" not in container(_uploader(res))["args"]


def test_gke_gateway_gets_a_health_check_and_timeout_it_honours():
    """GKE's load balancer checks `/` (a 404 here) and cuts requests after 30 s unless told otherwise."""
    res = render("gke")
    health = find(res, "HealthCheckPolicy", "uploader")["spec"]
    assert health["default"]["config"]["httpHealthCheck"]["requestPath"] == "/readyz"
    backend = find(res, "GCPBackendPolicy", "uploader")["spec"]
    assert backend["default"]["timeoutSec"] >= 3600
    for policy in (health, backend):
        assert policy["targetRef"] == {"group": "", "kind": "Service", "name": "uploader"}
    assert all("timeouts" not in rule for rule in find(res, "HTTPRoute", "uploader")["spec"]["rules"])


def test_gke_trusts_googles_load_balancers():
    env = resolved_env(render("gke"), _uploader(render("gke")))
    assert {"35.191.0.0/16", "130.211.0.0/22"} <= set(env["FORWARDED_ALLOW_IPS"].split(","))


# The largest source the worker memory figures above were measured for (bench/worker_memory.py: 4K).
MEASURED_MAX_PIXELS = 3840 * 2160


@pytest.mark.parametrize("variant", VARIANTS + README_WRAPPERS)
def test_chunks_are_planned_for_the_largest_pool(variant):
    """The API and the reconciler plan a long video into at least as many chunks as its pool's most
    workers: the number they read must be what pools.yaml lets the autoscaler run."""
    res = render(variant)
    largest = max(p["max"] for p in _pools(res).values())
    for planner in (_uploader(res), find(res, "Deployment", "autoscaler")):
        assert pod_settings(res, planner).pool_max_workers == largest, planner["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS + S3_VARIANTS + README_WRAPPERS)
def test_each_overlay_accepts_exactly_what_its_workers_serve(variant):
    """An upload the farm accepts must be one a pool scales workers for and a worker is sized for:
    else it waits forever (a queue nobody drains) or is OOM-killed (above the measured 4K)."""
    res = render(variant)
    settings = pod_settings(res, _uploader(res))
    pools = _pools(res)
    scaled = {q for p in pools.values() for q in p["queues"]}
    consumed = {q for w in worker_deployments(res) for q in _queues(container(w)["args"])}
    assert set(settings.served_queues) == scaled
    assert scaled <= consumed
    assert settings.max_pixels <= MEASURED_MAX_PIXELS


@pytest.mark.parametrize("wrapper, storage_class", [("gke", "standard-rwo"), ("eks", "vidfarm-gp3")])
def test_redis_and_postgres_volumes_get_a_class_the_cloud_has(wrapper, storage_class):
    """EKS has no default StorageClass since 1.30: without one named, the claims stay Pending."""
    res = render(wrapper)
    for store in ("redis", "postgres"):
        (claim,) = find(res, "StatefulSet", store)["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == storage_class, store
    classes = {r["metadata"]["name"]: r for r in res if r["kind"] == "StorageClass"}
    if wrapper == "eks":
        gp3 = classes[storage_class]
        assert gp3["provisioner"] == "ebs.csi.aws.com" and gp3["parameters"]["type"] == "gp3"
        assert gp3["volumeBindingMode"] == "WaitForFirstConsumer"  # EBS volumes live in one zone


def _longest_chunk_scratch_bytes(settings: Settings) -> float:
    """A chunk job's renditions at the ladder's bitrate caps, for the longest chunk at 60 fps with a 4K
    ladder (the largest source the overlays accept): what the job writes to scratch before uploading."""
    from transcoder.ladder import HIGH_FPS_BOOST, RUNGS

    kbps = sum(RUNGS[r].maxrate_kbps for r in ("2160p", "1440p", "1080p", "720p")) * HIGH_FPS_BOOST
    return kbps * 1000 / 8 * 2 * settings.chunk_seconds


# A default EKS managed node's root disk (20 GiB) holds the OS, the images and the logs too.
DEFAULT_NODE_DISK_LEFT = 10 * 1024**3


@pytest.mark.parametrize("variant", S3_VARIANTS + ["eks"])
def test_s3_workers_request_the_scratch_of_a_chunk_not_of_a_video(variant):
    res = render(variant)
    readme = (ROOT / "deploy" / "README.md").read_text()
    stated_limit = re.search(r"`sizeLimit: (\w+)`", readme).group(1)
    for w in worker_deployments(res):
        c = container(w)
        request = _bytes(c["resources"]["requests"]["ephemeral-storage"])
        assert _longest_chunk_scratch_bytes(pod_settings(res, w)) <= request <= DEFAULT_NODE_DISK_LEFT
        scratch = env_map(c)["VIDFARM_SCRATCH_DIR"]["value"]
        mount = next(m for m in c["volumeMounts"] if scratch.startswith(m["mountPath"]))
        volume = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        # The limit (what finalize may use) is the one the README states.
        assert volume["emptyDir"]["sizeLimit"] == stated_limit


def test_benchmarks_record_the_scratch_measurement():
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text[text.index("## Worker scratch with S3"):]
    assert "python bench/s3_scratch.py" in section and "| finalize" in section and "| chunk" in section


# GPUs with an NVENC encoder, as the clouds name them.
GKE_NVENC_ACCELERATORS = {"nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-p4"}
EC2_NVENC_FAMILIES = {"g4dn", "g5", "g6", "g6e"}


def test_gke_workers_name_an_nvenc_gpu_and_its_driver():
    """Node auto-provisioning and Autopilot pick the GPU from this selector and install no driver
    without the driver-version one."""
    res = render("gke")
    selector = find(res, "Deployment", "worker-gpu")["spec"]["template"]["spec"]["nodeSelector"]
    assert selector["cloud.google.com/gke-accelerator"] in GKE_NVENC_ACCELERATORS
    assert selector["cloud.google.com/gke-gpu-driver-version"] in ("default", "latest")
    assert "nodeSelector" not in find(res, "Deployment", "worker-cpu")["spec"]["template"]["spec"]


def test_eks_workers_land_on_nvenc_instance_types():
    spec = find(render("eks"), "Deployment", "worker-gpu")["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expr,) = term["matchExpressions"]
    # A label every node template carries (so the first GPU node still scales up from zero).
    assert expr["key"] == "node.kubernetes.io/instance-type" and expr["operator"] == "In"
    assert {t.split(".")[0] for t in expr["values"]} <= EC2_NVENC_FAMILIES


@pytest.mark.parametrize("variant", ["gpu", "gke", "eks"])
def test_a_gpu_worker_that_cannot_encode_says_why_in_the_pod_status(variant):
    """The worker exits when NVENC fails (tests/test_worker_startup.py); the reason must reach
    `kubectl describe pod`, not only the log of a container that restarted."""
    c = container(find(render(variant), "Deployment", "worker-gpu"))
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def _egress_rules(res: list[dict]) -> list[dict]:
    return find(res, "NetworkPolicy", "media-egress")["spec"]["egress"]


def test_media_egress_takes_the_destinations_the_readme_adds():
    """External databases and webhook receivers: the README's patch, applied as written, opens them."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    section = readme[readme.index("#### More egress destinations"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    d = Path(tempfile.mkdtemp(prefix=".test-egress-", dir=K8S))
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "vidfarm",
        "resources": ["../overlays/cpu"], "components": ["../components/s3"], **yaml.safe_load(block)}))
    added = _egress_rules(list(_render_path(str(d))))[-1]
    assert added["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert {p["port"] for p in added["ports"]} == {5432, 6379}
    # ...and the README's external-database advice points at it.
    external = readme[readme.index("### External PostgreSQL"):]
    assert "more-egress-destinations" in external[:external.index("\n### ", 5)]


def test_eks_media_pods_reach_the_pod_identity_agent():
    rules = _egress_rules(render("eks"))
    assert any({"ipBlock": {"cidr": "169.254.170.23/32"}} in r.get("to", []) and r["ports"][0]["port"] == 80
               for r in rules)


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_drains_go_one_pool_member_at_a_time(variant):
    res = render(variant)
    budgets = [r for r in res if r["kind"] == "PodDisruptionBudget"]
    for w in worker_deployments(res):
        labels = w["spec"]["template"]["metadata"]["labels"]
        (pdb,) = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        # Drains progress (never 0) and take one worker at a time, each finishing its chunk.
        assert pdb["spec"]["maxUnavailable"] == 1, w["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS + README_WRAPPERS)
def test_pods_on_the_shared_volume_skip_the_recursive_chown(variant):
    res = render(variant)
    for workload, tpl in pod_templates(res):
        spec = tpl["spec"]
        if any("persistentVolumeClaim" in v for v in spec.get("volumes", [])) and workload["kind"] == "Deployment":
            assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch", workload["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_autoscaler_may_patch_only_the_deletion_cost_of_a_pod(variant):
    """RBAC's `pods patch` is namespace-wide; the admission policy narrows it to one annotation."""
    res = render(variant)
    policy = find(res, "ValidatingAdmissionPolicy", "vidfarm-autoscaler-pod-patches")["spec"]
    assert policy["failurePolicy"] == "Fail"
    (rule,) = policy["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["pods"] and rule["operations"] == ["UPDATE"]
    (condition,) = policy["matchConditions"]
    assert "':vidfarm-autoscaler'" in condition["expression"]
    (check,) = policy["validations"]
    assert "object.spec == oldObject.spec" in check["expression"]
    assert any("pod-deletion-cost" in v["expression"] for v in policy["variables"])
    binding = find(res, "ValidatingAdmissionPolicyBinding", "vidfarm-autoscaler-pod-patches")["spec"]
    assert binding == {"policyName": "vidfarm-autoscaler-pod-patches", "validationActions": ["Deny"]}
    # The minimum version it needs is stated.
    assert "Kubernetes 1.30 or newer" in (ROOT / "deploy" / "README.md").read_text()


# What the `restricted` Pod Security Standard allows besides the pod fields checked above.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_namespace_enforces_the_restricted_pod_security_standard(variant):
    res = render(variant)
    labels = find(res, "Namespace", "vidfarm")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload, tpl in pod_templates(res):
        for v in tpl["spec"].get("volumes", []):
            assert set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES, (workload["metadata"]["name"], v["name"])


def test_another_namespace_is_one_line():
    """A wrapper's `namespace:` moves everything: objects, RoleBinding subjects, and (through
    POD_NAMESPACE) where the autoscaler looks for its Deployments and Lease."""
    d = Path(tempfile.mkdtemp(prefix=".test-namespace-", dir=K8S))
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "media",
        "resources": ["../overlays/gpu"]}))
    res = list(_render_path(str(d)))
    assert find(res, "Namespace", "media")
    for r in res:
        if _namespaced(r) and r["kind"] != "Namespace":
            assert r["metadata"]["namespace"] == "media", (r["kind"], r["metadata"]["name"])
        for subject in r.get("subjects", []):
            assert subject["namespace"] == "media", r["metadata"]["name"]
    document = yaml.safe_load(find(res, "ConfigMap", _pools_configmap_name(res))["data"]["pools.yaml"])
    assert "namespace" not in document
