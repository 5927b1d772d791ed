"""Backend for one machine: the pool is a set of `vidfarm worker` child processes.

Scale-in sends SIGTERM to the chosen idle workers only: RQ's warm shutdown makes an idle worker
exit at once, and one that picked up a job in the meantime finishes it first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoscaler.backend import WorkerRef
from vidfarm.lifeline import Popen
from vidfarm.localredis import free_port

log = logging.getLogger(__name__)


@dataclass
class LocalWorker:
    name: str
    proc: subprocess.Popen
    metrics_port: int
    stopping: bool = False


class LocalProcesses:
    name = "local"

    def __init__(
        self, pool: str, queues: Sequence[str], *, encoder: str = "x264",
        on_change: Callable[[], None] | None = None, popen: Popen = subprocess.Popen,
    ) -> None:
        self.pool = pool
        self.queues = list(queues)
        self.encoder = encoder
        self.on_change = on_change
        self._popen = popen
        self.workers: dict[str, LocalWorker] = {}
        self._serial = 0

    # -- Backend ----------------------------------------------------------------------------------

    def current_replicas(self) -> int:
        self._reap()
        return sum(1 for w in self.workers.values() if not w.stopping)

    def scale_to(self, desired: int, victims: Sequence[WorkerRef]) -> None:
        current = self.current_replicas()
        for _ in range(desired - current):
            self._spawn()
        if desired < current:
            for victim in victims[: current - desired]:
                self._stop(victim.name)
        if self.on_change is not None:
            self.on_change()

    # -- processes --------------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._serial += 1
        name = f"{self.pool}-{os.getpid()}-{self._serial}"
        port = free_port()
        cmd = [sys.executable, "-m", "vidfarm", "worker", "--name", name, "--pool", self.pool,
               "--encoder", self.encoder, "--metrics-port", str(port)]
        for queue in self.queues:
            cmd += ["--queue", queue]
        # Own process group: Ctrl-C in the terminal reaches `vidfarm up`, which then drains workers
        # in order instead of every worker getting SIGINT at once.
        proc = self._popen(cmd, start_new_session=True)
        self.workers[name] = LocalWorker(name, proc, port)
        log.info("started worker %s (pid %d)", name, proc.pid)

    def _stop(self, name: str) -> None:
        worker = self.workers.get(name)
        if worker is None or worker.stopping:
            return
        worker.stopping = True
        worker.proc.send_signal(signal.SIGTERM)
        log.info("asked worker %s to drain and exit", name)

    def _reap(self) -> None:
        for name, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[name]
            if not worker.stopping:
                log.warning("worker %s exited unexpectedly with status %s", name, code)

    def stop_all(self, timeout_s: float | None = None, *, force: bool = False) -> None:
        """Warm shutdown of every worker; with `force`, running jobs are interrupted (the reconciler
        re-queues them on the next start)."""
        sig = signal.SIGKILL if force else signal.SIGTERM
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.stopping = True
                worker.proc.send_signal(sig)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for worker in list(self.workers.values()):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=remaining)
        self._reap()

    def metrics_targets(self) -> list[str]:
        return [f"127.0.0.1:{w.metrics_port}" for w in self.workers.values()]
