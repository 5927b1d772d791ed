"""A small in-process Kubernetes API server for tests of the real `kubernetes` client.

It speaks just what the autoscaler uses, with the semantics that matter for correctness:

* `deployments/{name}/scale` GET/PATCH with optimistic concurrency (409 on a stale resourceVersion);
  lowering replicas deletes pods like a ReplicaSet would: not-ready pods first, then the lowest
  `controller.kubernetes.io/pod-deletion-cost` (then by name, to stay deterministic);
* pods list (labelSelector `k=v,...`) and PATCH (merge of metadata.annotations);
* Events create (recorded in `events`);
* Leases get/create/replace with 404 / 409 answers, and 400 for a MicroTime (acquireTime, renewTime)
  without exactly six fractional digits, as the real API server answers;
* 403 on demand (`forbid`), and a `before_request` hook to inject concurrent writers.

Every request is recorded in `requests` so tests can assert the exact sequence made.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client as kclient

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

SCALE_PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments/(?P<name>[^/]+)/scale$")
PODS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$")
LEASES_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases$")
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
EVENTS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")
LEASE_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class FakeKube:
    """State plus an HTTP server; use as a context manager."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.version = 100
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.forbidden: list[tuple[str, re.Pattern[str]]] = []
        self.before_request: Callable[[Request], None] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> kclient.ApiClient:
        configuration = kclient.Configuration(host=self.url)
        # One attempt per call: the tests count requests, urllib3 retries would blur that.
        configuration.retries = 0
        return kclient.ApiClient(configuration)

    # -- fixtures ----------------------------------------------------------------------------------

    def add_deployment(self, ns: str, name: str, pods: list[str], labels: dict[str, str] | None = None) -> None:
        labels = labels or {"app": name}
        with self.lock:
            self.deployments[(ns, name)] = {"replicas": len(pods), "rv": self._bump(), "labels": labels}
            for pod in pods:
                self.add_pod(ns, pod, labels)

    def add_pod(
        self, ns: str, name: str, labels: dict[str, str], annotations: dict | None = None, *, ready: bool = True
    ) -> None:
        """A pod; `ready=False` is one stuck Pending (no node, image pull failing...)."""
        with self.lock:
            self.pods[(ns, name)] = {
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": dict(labels),
                    "annotations": dict(annotations or {}),
                    "resourceVersion": str(self._bump()),
                },
                "spec": {"containers": [{"name": "worker", "image": "vidfarm"}]},
                "status": {
                    "phase": "Running" if ready else "Pending",
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            }

    def forbid(self, method: str, path_pattern: str) -> None:
        self.forbidden.append((method, re.compile(path_pattern)))

    def replicas(self, ns: str, name: str) -> int:
        return self.deployments[(ns, name)]["replicas"]

    def pod_names(self, ns: str) -> list[str]:
        return sorted(name for (pod_ns, name) in self.pods if pod_ns == ns)

    def bump_scale_version(self, ns: str, name: str, replicas: int | None = None) -> None:
        """What a concurrent writer (kubectl scale, another controller) does to the Deployment."""
        with self.lock:
            deployment = self.deployments[(ns, name)]
            deployment["rv"] = self._bump()
            if replicas is not None:
                self._set_replicas(ns, name, replicas)

    def writes(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if r.method != "GET"]

    # -- request handling --------------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(request)
        if self.before_request is not None:
            self.before_request(request)
        with self.lock:
            try:
                for method, pattern in self.forbidden:
                    if method == request.method and pattern.search(request.path):
                        raise ApiError(403, "Forbidden", f"{request.method} {request.path} is forbidden")
                return 200, self._route(request)
            except ApiError as exc:
                return exc.code, _status(exc)

    def _route(self, r: Request) -> Any:
        routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Any]]]] = [
            (SCALE_PATH, {"GET": self._get_scale, "PATCH": self._patch_scale}),
            (PODS_PATH, {"GET": self._list_pods}),
            (POD_PATH, {"PATCH": self._patch_pod}),
            (LEASES_PATH, {"POST": self._create_lease}),
            (LEASE_PATH, {"GET": self._get_lease, "PUT": self._replace_lease}),
            (EVENTS_PATH, {"POST": self._create_event}),
        ]
        for pattern, handlers in routes:
            match = pattern.match(r.path)
            if match and r.method in handlers:
                return handlers[r.method](r, **match.groupdict())
        raise ApiError(404, "NotFound", f"no route for {r.method} {r.path}")

    def _deployment(self, ns: str, name: str) -> dict[str, Any]:
        if (ns, name) not in self.deployments:
            raise ApiError(404, "NotFound", f'deployments.apps "{name}" not found')
        return self.deployments[(ns, name)]

    def _scale_json(self, ns: str, name: str) -> dict[str, Any]:
        deployment = self._deployment(ns, name)
        selector = ",".join(f"{k}={v}" for k, v in sorted(deployment["labels"].items()))
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": str(deployment["rv"])},
            "spec": {"replicas": deployment["replicas"]},
            "status": {"replicas": deployment["replicas"], "selector": selector},
        }

    def _get_scale(self, r: Request, ns: str, name: str) -> Any:
        return self._scale_json(ns, name)

    def _patch_scale(self, r: Request, ns: str, name: str) -> Any:
        deployment = self._deployment(ns, name)
        wanted_rv = (r.body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != str(deployment["rv"]):
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes")
        replicas = (r.body.get("spec") or {}).get("replicas")
        if replicas is not None:
            self._set_replicas(ns, name, int(replicas))
        deployment["rv"] = self._bump()
        return self._scale_json(ns, name)

    def _set_replicas(self, ns: str, name: str, replicas: int) -> None:
        deployment = self.deployments[(ns, name)]
        pods = self._matching_pods(ns, deployment["labels"])
        # As a ReplicaSet ranks them: not-ready pods go first, then the lowest deletion cost.
        by_cost = sorted(pods, key=lambda p: (_ready(p), _cost(p), p["metadata"]["name"]))
        for pod in by_cost[: max(0, len(pods) - replicas)]:
            del self.pods[(ns, pod["metadata"]["name"])]
        for index in range(len(pods), replicas):
            self.add_pod(ns, f"{name}-new-{self.version}-{index}", deployment["labels"])
        deployment["replicas"] = replicas

    def _matching_pods(self, ns: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [
            pod
            for (pod_ns, _), pod in sorted(self.pods.items())
            if pod_ns == ns and labels.items() <= pod["metadata"]["labels"].items()
        ]

    def _list_pods(self, r: Request, ns: str) -> Any:
        selector = r.query.get("labelSelector", "")
        labels = dict(part.split("=", 1) for part in selector.split(",") if part)
        return {
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": str(self.version)},
            "items": self._matching_pods(ns, labels),
        }

    def _patch_pod(self, r: Request, ns: str, name: str) -> Any:
        if (ns, name) not in self.pods:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        pod = self.pods[(ns, name)]
        annotations = ((r.body or {}).get("metadata") or {}).get("annotations") or {}
        pod["metadata"]["annotations"].update(annotations)
        pod["metadata"]["resourceVersion"] = str(self._bump())
        return pod

    def _create_event(self, r: Request, ns: str) -> Any:
        event = dict(r.body)
        meta = event.setdefault("metadata", {})
        if not meta.get("name") and not meta.get("generateName"):
            raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
        meta.setdefault("name", f"{meta.get('generateName', '')}{self._bump()}")
        meta["namespace"] = ns
        self.events.append(event)
        return event

    def _get_lease(self, r: Request, ns: str, name: str) -> Any:
        if (ns, name) not in self.leases:
            raise ApiError(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        return self.leases[(ns, name)]

    def _create_lease(self, r: Request, ns: str) -> Any:
        name = r.body["metadata"]["name"]
        if (ns, name) in self.leases:
            raise ApiError(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists')
        return self._store_lease(ns, name, r.body)

    def _replace_lease(self, r: Request, ns: str, name: str) -> Any:
        current = self._get_lease(r, ns, name)
        if str(r.body["metadata"].get("resourceVersion")) != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes")
        return self._store_lease(ns, name, r.body)

    def _store_lease(self, ns: str, name: str, body: dict[str, Any]) -> Any:
        spec = body.get("spec") or {}
        for field in ("acquireTime", "renewTime"):
            # metav1.MicroTime parses with RFC3339Micro: exactly six fractional digits, or 400.
            if field in spec and not MICRO_TIME.match(str(spec[field])):
                raise ApiError(400, "BadRequest", f"spec.{field}: cannot parse {spec[field]!r} as RFC3339Micro")
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": str(self._bump())},
            "spec": body.get("spec") or {},
        }
        self.leases[(ns, name)] = lease
        return lease

    def _bump(self) -> int:
        self.version += 1
        return self.version


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])


def _cost(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"].get(DELETION_COST, "0"))


def _status(exc: ApiError) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": exc.message,
        "reason": exc.reason,
        "code": exc.code,
    }


def _handler_for(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            code, payload = fake.handle(Request(self.command, parts.path, query, body))
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # keep pytest output clean

    return Handler
