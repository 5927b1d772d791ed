"""Run ffmpeg as a child process: progress from `-progress pipe:1`, errors from stderr.

The child dies with its worker (PR_SET_PDEATHSIG), so a killed worker never leaves an orphan
ffmpeg writing files; cancellation and stalls stop it from here.
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from vidfarm.lifeline import die_with_parent

STDERR_TAIL_LINES = 12


class FfmpegError(Exception):
    """ffmpeg exited with an error of its own: the same input will fail the same way again."""

    def __init__(self, returncode: int, stderr_tail: str) -> None:
        super().__init__(stderr_tail or f"ffmpeg exited with status {returncode}")
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class FfmpegStalled(Exception):
    """No progress for too long: a hung input or a wedged decoder."""


class FfmpegKilled(Exception):
    """ffmpeg was killed by a signal nobody here sent (the OOM killer, an operator): not the input's
    fault, so the video deserves another attempt rather than failing."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"ffmpeg was killed by signal {signum}")
        self.signum = signum


class Canceled(Exception):
    """The video was canceled while ffmpeg ran."""


def _collect(pipe, sink: collections.deque[str]) -> None:
    for raw in iter(pipe.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        if line:
            sink.append(line)


def run_ffmpeg(
    args: Sequence[str],
    *,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    stall_timeout_s: float = 300.0,
    binary: str = "ffmpeg",
) -> float:
    """Run to completion; returns the seconds of output written. `on_progress` gets them as they grow."""
    proc = subprocess.Popen(
        [binary, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent(),
    )
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    drain = threading.Thread(target=_collect, args=(proc.stderr, stderr_tail), daemon=True)
    drain.start()
    watchdog = _Watchdog(proc, should_cancel, stall_timeout_s)
    watchdog.start()
    encoded_s = 0.0
    try:
        for raw in iter(proc.stdout.readline, b""):
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and value.lstrip("-").isdigit():
                watchdog.touch()
                encoded_s = max(encoded_s, int(value) / 1e6)
                if on_progress is not None:
                    on_progress(encoded_s)
        proc.wait()
    finally:
        watchdog.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drain.join(timeout=5)
    if watchdog.reason == "canceled":
        raise Canceled()
    if watchdog.reason == "stalled":
        raise FfmpegStalled(f"ffmpeg made no progress for {stall_timeout_s:.0f} s")
    if proc.returncode != 0:
        if proc.returncode < 0:
            raise FfmpegKilled(-proc.returncode)
        raise FfmpegError(proc.returncode, "\n".join(stderr_tail))
    return encoded_s


class _Watchdog(threading.Thread):
    """Kills ffmpeg when the video is canceled or when progress stops moving."""

    def __init__(self, proc: subprocess.Popen, should_cancel: Callable[[], bool] | None, stall_s: float):
        super().__init__(daemon=True)
        self.proc = proc
        self.should_cancel = should_cancel
        self.stall_s = stall_s
        self.last_progress = time.monotonic()
        self.reason: str | None = None
        self._stop_event = threading.Event()

    def touch(self) -> None:
        self.last_progress = time.monotonic()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            if self.should_cancel is not None and self.should_cancel():
                self.reason = "canceled"
            elif time.monotonic() - self.last_progress > self.stall_s:
                self.reason = "stalled"
            if self.reason:
                self.proc.kill()
                return
