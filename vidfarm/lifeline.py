"""Child processes that die with the process that started them, however it dies (even SIGKILL).

Linux delivers a parent-death signal (PR_SET_PDEATHSIG) to a child when its parent goes. Two traps:
the signal is tied to the *thread* that forked the child, not the process, and a parent dying
between fork and prctl is missed. `die_with_parent` closes the second by checking getppid() after
prctl; `Spawner` avoids the first by forking every child from one thread that lives as long as
the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1

Popen = Callable[..., subprocess.Popen]


def _load_prctl() -> Callable[..., int] | None:
    # Resolved here, in the parent: dlopen after fork in a threaded process can deadlock.
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return None  # not Linux: orphans are then possible, nothing else changes


_prctl = _load_prctl()


def die_with_parent(starter_pid: int | None = None) -> Callable[[], None]:
    """A `preexec_fn` that makes the child get SIGKILL when its parent dies."""
    starter = os.getpid() if starter_pid is None else starter_pid

    def _arm() -> None:
        if _prctl is None:
            return
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != starter:  # the parent died before prctl: no signal will ever come
            os._exit(1)

    return _arm


class Spawner:
    """Starts children that die with this process, from one thread that lives as long as it does
    (so a child started on behalf of a short-lived thread is not killed when that thread ends)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Sequence[str], dict[str, Any], Future]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="spawner", daemon=True).start()

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        done: Future[subprocess.Popen] = Future()
        self._requests.put((cmd, kwargs, done))
        return done.result()

    def _serve(self) -> None:
        starter = os.getpid()
        while True:
            cmd, kwargs, done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(cmd, preexec_fn=die_with_parent(starter), **kwargs))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, whose popen() raises it
                done.set_exception(exc)
