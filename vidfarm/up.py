"""`vidfarm up`: the whole farm on one machine, in the foreground.

Starts (if needed) a private Redis, the API, and the autoscaler with the local-process backend,
which starts and stops `vidfarm worker` processes as the queue demands. The reconciler runs in the
same loop. Ctrl-C or SIGTERM drains everything: workers finish their transcode (a second Ctrl-C
interrupts them; those videos are re-queued on the next start), then the API and Redis stop.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import start_http_server

from autoscaler import runtime
from autoscaler.controller import Controller
from autoscaler.local import LocalProcesses
from autoscaler.observe import FarmObserver
from autoscaler.policy import PoolConfig
from vidfarm.farm import Farm
from vidfarm.localredis import LocalRedis, free_port
from vidfarm.settings import Settings

log = logging.getLogger("vidfarm.up")


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    min_workers: int = 0
    max_workers: int = os.cpu_count() or 2
    scale_down_after_s: float = 60.0
    resync_s: float = 5.0
    encoder: str = "x264"
    queue: str = "cpu"


def ensure_api_key(settings: Settings) -> Settings:
    """With no VIDFARM_API_KEYS, generate one key once and keep it in the vidfarm home."""
    if settings.api_keys:
        return settings
    path = settings.local_key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    key = path.read_text().strip()
    return replace(settings, api_keys=(key,))


class FarmProcesses:
    """Owns every process `vidfarm up` starts, so nothing is left behind."""

    def __init__(self, settings: Settings, options: UpOptions) -> None:
        self.settings = ensure_api_key(settings)
        self.options = options
        self.redis: LocalRedis | None = None
        self.api: subprocess.Popen | None = None
        self.backend: LocalProcesses | None = None
        self.metrics_port = free_port()
        self.stop = threading.Event()

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> Farm:
        settings = self.settings
        settings.home.mkdir(parents=True, exist_ok=True)
        if settings.redis_url is None:
            self.redis = LocalRedis(settings.home / "redis").start()
            log.info("started redis-server on port %d (AOF in %s)", self.redis.port, self.redis.data_dir)
            self.settings = settings = replace(settings, redis_url=self.redis.url)
        self._export_env(settings)
        farm = Farm(settings)
        farm.catalog  # noqa: B018 - create or migrate the schema once, before anything uses it
        farm.storage  # noqa: B018
        self.api = subprocess.Popen(
            [sys.executable, "-m", "vidfarm", "api", "--host", self.options.host, "--port", str(self.options.port)],
            start_new_session=True,
        )
        start_http_server(self.metrics_port, addr="127.0.0.1")
        return farm

    @staticmethod
    def _export_env(settings: Settings) -> None:
        """Children read the same settings from the environment."""
        os.environ.update({
            "VIDFARM_HOME": str(settings.home),
            "REDIS_URL": settings.redis_url or "",
            "DATABASE_URL": settings.database_url,
            "VIDFARM_STORAGE_DIR": str(settings.storage_dir),
            "VIDFARM_API_KEYS": ",".join(settings.api_keys),
        })
        os.environ.pop("VIDFARM_API_KEYS_FILE", None)

    def write_targets(self) -> None:
        """Prometheus file_sd targets for every process we run."""
        targets = [f"127.0.0.1:{self.options.port}", f"127.0.0.1:{self.metrics_port}"]
        if self.backend is not None:
            targets += self.backend.metrics_targets()
        path = self.settings.home / "prometheus" / "targets.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {"job": "vidfarm"}}], indent=2))
        os.replace(tmp, path)

    # -- run --------------------------------------------------------------------------------------

    def run_controller(self, farm: Farm) -> Controller:
        pool = PoolConfig(
            name=self.options.queue, queues=(self.options.queue,),
            min_replicas=self.options.min_workers, max_replicas=self.options.max_workers,
            scale_down_after_s=self.options.scale_down_after_s,
        )
        self.backend = LocalProcesses(pool.name, pool.queues, encoder=self.options.encoder,
                                      on_change=self.write_targets)
        controller = Controller(
            [(pool, self.backend)], FarmObserver(farm),
            resync_s=self.options.resync_s, on_status=lambda status: runtime.publish_status(farm, status),
        )
        runtime.start(farm, controller, self.stop, resync_s=self.options.resync_s)
        self.write_targets()
        return controller

    def wait_api_ready(self, timeout_s: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        url = f"http://{self.options.host}:{self.options.port}/readyz"
        while time.monotonic() < deadline:
            if self.api is not None and self.api.poll() is not None:
                raise RuntimeError(f"the API exited with status {self.api.returncode} (port {self.options.port} busy?)")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the API did not become ready at {url}")

    # -- stop -------------------------------------------------------------------------------------

    def shutdown(self, *, force: bool = False) -> None:
        self.stop.set()
        if self.backend is not None:
            busy = [w for w in self.backend.workers.values() if w.proc.poll() is None]
            if busy and not force:
                log.info("stopping %d worker(s); busy ones finish their current transcode first "
                         "(Ctrl-C again to interrupt; interrupted videos are re-queued)", len(busy))
            self.backend.stop_all(force=force)
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.api.kill()
        if self.redis is not None:
            self.redis.stop()
        log.info("farm stopped")


def run_up(settings: Settings, options: UpOptions, *, after_start=None) -> None:
    """Run until SIGINT/SIGTERM (or until `after_start` returns, for `vidfarm demo`)."""
    procs = FarmProcesses(settings, options)
    interrupts = {"count": 0}

    def _on_signal(signum, _frame):
        interrupts["count"] += 1
        if interrupts["count"] == 1:
            log.info("stopping (signal %d)", signum)
            procs.stop.set()
        else:
            log.warning("second signal: interrupting running transcodes")
            if procs.backend is not None:
                procs.backend.stop_all(timeout_s=0, force=True)

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        farm = procs.start()
        procs.run_controller(farm)
        procs.wait_api_ready()
        if settings.api_keys:
            # Keys the operator configured are secrets: never in the logs (they end up in log stores).
            log.info("API on http://%s:%d  API keys: from the environment", options.host, options.port)
        else:
            log.info("API on http://%s:%d  API key: %s (kept in %s)", options.host, options.port,
                     procs.settings.api_keys[0], procs.settings.local_key_file)
        log.info("workers: %d..%d on queue %r; Ctrl-C stops the farm", options.min_workers,
                 options.max_workers, options.queue)
        if after_start is not None:
            after_start(procs)
        else:
            procs.stop.wait()
    finally:
        procs.shutdown(force=interrupts["count"] > 1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def key_for_cli(settings: Settings) -> str | None:
    """The key CLI commands use when none is given: the first configured one, else `up`'s."""
    if settings.api_keys:
        return settings.api_keys[0]
    path: Path = settings.local_key_file
    return path.read_text().strip() if path.exists() else None
