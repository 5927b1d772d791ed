"""`vidfarm up`: the whole farm on one machine, in the foreground.

Starts (if needed) a private Redis, the API, and the autoscaler with the local-process backend,
which starts and stops `vidfarm worker` processes as the queue demands. The reconciler runs in the
same loop. Ctrl-C or SIGTERM drains everything: workers finish their transcode (a second Ctrl-C
interrupts them; those videos are re-queued on the next start), then the API and Redis stop.

However `up` itself ends (even SIGKILL or the OOM killer), nothing it started outlives it: every
child is started through `lifeline.Spawner`. One `up` runs per VIDFARM_HOME (an flock, which the
kernel drops with its holder), so a restart never finds a second redis-server on the same AOF.
The API and the private redis-server are supervised: restarted, with backoff, when they exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from autoscaler import runtime
from autoscaler.controller import Controller
from autoscaler.local import LocalProcesses
from autoscaler.observe import FarmObserver
from autoscaler.policy import PoolConfig
from vidfarm.farm import Farm
from vidfarm.lifeline import Spawner
from vidfarm.localredis import LocalRedis, free_port
from vidfarm.settings import PLAYBACK_SECRET_FILE, Settings

log = logging.getLogger("vidfarm.up")

SUPERVISE_EVERY_S = 0.2


class UpError(Exception):
    """`up` cannot run: the message is one line for the user, and `up` exits 1."""


@dataclass(frozen=True)
class UpOptions:
    """What `vidfarm up` was asked for; the defaults live in one place, the CLI flags (vidfarm/cli.py)."""

    host: str
    port: int
    min_workers: int
    max_workers: int
    scale_down_after_s: float | None  # None: learned from the workers' starts
    resync_s: float
    encoder: str
    queues: tuple[str, ...]  # empty: every queue the settings accept


def _local_secret(path: Path) -> str:
    """A secret generated once and kept (owner-only) in the vidfarm home."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def ensure_secrets(settings: Settings) -> Settings:
    """With no VIDFARM_API_KEYS, generate one key once and keep it in the vidfarm home; the same for
    the secret that signs playback URLs (VIDFARM_PLAYBACK_SECRET), so URLs survive a restart."""
    if not settings.playback_secret:
        settings = replace(settings, playback_secret=_local_secret(settings.home / PLAYBACK_SECRET_FILE))
    if settings.api_keys:
        return settings
    return replace(settings, api_keys=(_local_secret(settings.local_key_file),))


def fixed_scale_down(delay_s: float | None) -> dict[str, float]:
    """--scale-down-after fixes the delay (equal bounds); without it PoolConfig's defaults learn it."""
    if delay_s is None:
        return {}
    return {"scale_down_after_s": delay_s, "scale_down_min_s": delay_s, "scale_down_max_s": delay_s}


def serve_queues(settings: Settings, queues: tuple[str, ...]) -> Settings:
    """Accept exactly the queues the local pool serves: a video on a queue no worker reads would
    stay `queued` forever, so the API refuses it instead."""
    served = tuple(dict.fromkeys(queues)) or settings.served_queues
    if settings.default_queue not in served:
        raise UpError(f"the default queue {settings.default_queue!r} (VIDFARM_DEFAULT_QUEUE) is not among "
                      f"the queues served ({', '.join(served)}); add it with --queue")
    return replace(settings, queues=served)


@contextlib.contextmanager
def hold_home(home: Path) -> Iterator[None]:
    """One farm per home, for as long as this process lives. flock, because the kernel releases it
    when the holder dies however it dies: a crash never leaves a stale lock behind."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UpError(f"another `vidfarm up` (pid {holder}) is running on {home}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def api_socket(host: str, port: int) -> Iterator[socket.socket]:
    """The API's listening socket, bound here and handed to each API process: a port someone else
    holds stops `up` before it starts anything, and while a crashed API restarts, connections wait
    in the backlog instead of being refused."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UpError(f"port {port} is taken by another process; choose another with --port") from None
        raise UpError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    try:
        yield sock
    finally:
        sock.close()


def describe_exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


class Supervised:
    """A child that is restarted when it exits. Every exit is logged; an exit soon after a start
    doubles the wait before the next one, so a crash loop does not spin."""

    FIRST_DELAY_S = 0.5
    MAX_DELAY_S = 10.0
    HEALTHY_AFTER_S = 30.0

    def __init__(self, name: str, start: Callable[[], subprocess.Popen]) -> None:
        self.name = name
        self._start = start
        self.delay_s = self.FIRST_DELAY_S
        self.proc = start()
        self.started_at = time.monotonic()

    def check(self, halt: threading.Event) -> None:
        code = self.proc.poll()
        if code is None:
            return
        if time.monotonic() - self.started_at >= self.HEALTHY_AFTER_S:
            self.delay_s = self.FIRST_DELAY_S
        log.warning("%s exited unexpectedly (%s); restarting in %.1f s", self.name, describe_exit(code), self.delay_s)
        if halt.wait(self.delay_s):
            return
        self.delay_s = min(self.delay_s * 2, self.MAX_DELAY_S)
        self.started_at = time.monotonic()
        try:
            self.proc = self._start()
        except (OSError, RuntimeError) as exc:
            log.warning("%s did not restart: %s", self.name, exc)  # the dead proc makes the next check retry
            return
        log.info("%s restarted (pid %d)", self.name, self.proc.pid)


class FarmProcesses:
    """Owns every process `vidfarm up` starts, so nothing is left behind."""

    def __init__(self, settings: Settings, options: UpOptions, api_sock: socket.socket) -> None:
        # Keys the operator configured are secrets: never in the logs (they end up in log stores).
        self.show_key = not settings.api_keys
        self.settings = ensure_secrets(settings)
        self.options = options
        self.api_sock = api_sock
        self.spawner = Spawner()
        self.redis: LocalRedis | None = None
        self.supervised: list[Supervised] = []
        self.backend: LocalProcesses | None = None
        self._supervisor: threading.Thread | None = None
        # The pipe on which the first API says it serves; set once: every later start is a restart.
        self.api_serving: int | None = None
        self.metrics_port = free_port()
        self.stop = threading.Event()  # the farm is stopping: no new work, workers drain
        self.halt = threading.Event()  # workers are gone: stop restarting the API and Redis

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> Farm:
        if self.settings.redis_url is None:
            self.redis = LocalRedis(self.settings.home / "redis", popen=self.spawner.popen)
            self.supervised.append(Supervised("redis-server", lambda: self.redis.start().proc))
            log.info("started redis-server on port %d (AOF in %s)", self.redis.port, self.redis.data_dir)
            self.settings = replace(self.settings, redis_url=self.redis.url)
        farm = Farm(self.settings)
        farm.catalog  # noqa: B018 - create or migrate the schema once, before anything uses it
        farm.storage  # noqa: B018
        self.supervised.append(Supervised("the API", self._start_api))
        start_http_server(self.metrics_port, addr="127.0.0.1")
        return farm

    @functools.cached_property
    def popen(self) -> Callable[..., subprocess.Popen]:
        """Starts a vidfarm child: dies with `up`, reads the same settings (so only after Redis is up)."""
        return functools.partial(self.spawner.popen, env=self.settings.to_env(os.environ))

    def _start_api(self) -> subprocess.Popen:
        """An API process on `up`'s socket. The first one also gets a pipe on which it says that it
        serves (see wait_api_serving); a restarted one need not: the farm is up, any exit is a crash."""
        fd = self.api_sock.fileno()
        cmd = [sys.executable, "-m", "vidfarm", "api", "--fd", str(fd)]
        if self.api_serving is not None:
            return self.popen(cmd, pass_fds=(fd,), start_new_session=True)
        self.api_serving, said = os.pipe()
        try:
            return self.popen([*cmd, "--ready-fd", str(said)], pass_fds=(fd, said), start_new_session=True)
        finally:
            os.close(said)  # the API holds the only write end: its exit is our end of file

    def supervise(self) -> None:
        """Restart the API and Redis whenever they exit, until the farm has drained its workers."""

        def loop() -> None:
            while not self.halt.wait(SUPERVISE_EVERY_S):
                for child in self.supervised:
                    child.check(self.halt)

        self._supervisor = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._supervisor.start()

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
        # One pool for every served queue: its workers read them all (x264 unless --encoder says
        # otherwise), so a `gpu` video on a machine without a GPU still gets transcoded.
        queues = self.settings.queues
        pool = PoolConfig(
            name=queues[0], queues=queues,
            min_replicas=self.options.min_workers, max_replicas=self.options.max_workers,
            **fixed_scale_down(self.options.scale_down_after_s),
        )
        self.backend = LocalProcesses(pool.name, pool.queues, encoder=self.options.encoder,
                                      on_change=self.write_targets, popen=self.popen)
        controller = Controller(
            [(pool, self.backend)], FarmObserver(farm),
            resync_s=self.options.resync_s, on_status=lambda status: runtime.publish_status(farm, status),
        )
        runtime.start(farm, controller, self.stop, resync_s=self.options.resync_s)
        self.write_targets()
        return controller

    def wait_api_serving(self, timeout_s: float = 30.0) -> None:
        """Until the first API says it serves. An exit before that is a failed start (a bad setting):
        `up` stops, naming the exit. An exit after it is a crash, which the supervisor restarts:
        clients may have been answered already, and the connections waiting in the backlog must be
        served, not reset by `up` closing the port. (`up` used to judge by its own /readyz poll, and
        when it was slow to see the 200 another client had seen, it took an API killed in between
        for a failed start and stopped the farm.)"""
        api = self.supervised[-1].proc
        readable, _, _ = select.select([self.api_serving], [], [], timeout_s)
        said = os.read(self.api_serving, 1) if readable else None
        os.close(self.api_serving)
        if said is None:
            raise UpError(f"the API did not start serving within {timeout_s:g} s")
        if not said:  # end of file without a byte: the API exited before it served
            raise UpError(f"the API exited with {describe_exit(api.wait())} while starting")

    def wait_api_ready(self, timeout_s: float = 30.0) -> None:
        """Until the API answers /readyz (the API serves: an exit now is the supervisor's to restart)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        url = f"http://{self.options.host}:{self.options.port}/readyz"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise UpError(f"the API did not become ready at {url}")

    # -- stop -------------------------------------------------------------------------------------

    def shutdown(self, *, force: bool = False) -> None:
        self.stop.set()
        if self.backend is not None:
            busy = [w for w in self.backend.workers.values() if w.proc.poll() is None]
            if busy and not force:
                log.info("stopping %d worker(s); busy ones finish their current transcode first "
                         "(Ctrl-C again to interrupt; interrupted videos are re-queued)", len(busy))
            self.backend.stop_all(force=force)
        self.halt.set()
        if self._supervisor is not None:
            self._supervisor.join()  # it may be starting a child right now: let it finish, then stop that
        for child in reversed(self.supervised):  # the API before the Redis it uses
            self._terminate(child.proc)
        log.info("farm stopped")

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()  # the API drains its requests; redis-server flushes the AOF
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Interrupts:
    """SIGINT/SIGTERM: the first drains the farm, a second interrupts running transcodes."""

    def __init__(self, procs: FarmProcesses) -> None:
        self.procs = procs
        self.count = 0

    def __call__(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            log.info("stopping (signal %d)", signum)
            self.procs.stop.set()
        else:
            log.warning("second signal: interrupting running transcodes")
            if self.procs.backend is not None:
                self.procs.backend.stop_all(timeout_s=0, force=True)


def run_up(settings: Settings, options: UpOptions, *,
           after_start: Callable[[FarmProcesses], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM (or until `after_start` returns, for `vidfarm demo`).
    Raises UpError, having started nothing or stopped what it started, when the farm cannot run."""
    settings = serve_queues(settings, options.queues)
    # The API plans each video's chunks for the most workers its one pool runs.
    settings = replace(settings, pool_max_workers=options.max_workers)
    if not settings.local_url:  # without a public URL, the links in webhook payloads point at the API `up` serves
        settings = replace(settings, local_url=f"http://{options.host}:{options.port}")
    with hold_home(settings.home), api_socket(options.host, options.port) as sock:
        procs = FarmProcesses(settings, options, sock)
        interrupts = _Interrupts(procs)
        previous = {s: signal.signal(s, interrupts) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            _run(procs, after_start)
        finally:
            procs.shutdown(force=interrupts.count > 1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _run(procs: FarmProcesses, after_start: Callable[[FarmProcesses], None] | None) -> None:
    options = procs.options
    farm = procs.start()
    procs.run_controller(farm)
    procs.wait_api_serving()
    procs.supervise()  # from here on, an exit of the API or of Redis is a crash to restart
    procs.wait_api_ready()
    if procs.show_key:
        log.info("API on http://%s:%d  API key: %s (kept in %s)", options.host, options.port,
                 procs.settings.api_keys[0], procs.settings.local_key_file)
    else:
        log.info("API on http://%s:%d  API keys: from the environment", options.host, options.port)
    log.info("pool %s: %d..%d workers serving queues %s; Ctrl-C stops the farm", procs.backend.pool,
             options.min_workers, options.max_workers, ", ".join(procs.backend.queues))
    if after_start is not None:
        after_start(procs)
    else:
        procs.stop.wait()


def key_for_cli(settings: Settings) -> str | None:
    """The key CLI commands use when none is given: the first configured one, else `up`'s."""
    if settings.api_keys:
        return settings.api_keys[0]
    path: Path = settings.local_key_file
    return path.read_text().strip() if path.exists() else None
