"""How run_ffmpeg reports the ways a child can end, with a real child process standing in for ffmpeg."""

from __future__ import annotations

import signal

import pytest

from transcoder.runner import FfmpegError, FfmpegKilled, run_ffmpeg


def run_shell(script: str) -> float:
    return run_ffmpeg(["-c", script], binary="sh", stall_timeout_s=30)


def test_a_child_killed_by_a_signal_is_ffmpeg_killed_not_an_input_error() -> None:
    with pytest.raises(FfmpegKilled) as killed:
        run_shell("kill -KILL $$")
    assert killed.value.signum == signal.SIGKILL
    assert not isinstance(killed.value, FfmpegError)


def test_an_error_exit_is_ffmpeg_error_with_the_stderr_tail() -> None:
    with pytest.raises(FfmpegError) as failed:
        run_shell("echo 'moov atom not found' >&2; exit 1")
    assert (failed.value.returncode, failed.value.stderr_tail) == (1, "moov atom not found")


def test_progress_is_the_furthest_output_time() -> None:
    assert run_shell("echo out_time_us=1500000; echo out_time_us=2500000") == 2.5
