"""Worker start-up and stop as a cluster runs them: the NVENC check that makes a GPU pod crash-loop,
ffmpeg threads bounded by the pod's CPU limit, a worker that leaves at once when told to stop."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import JobStatus

from tests.conftest import ROOT, make_clip, settings_env
from transcoder.command import X264, chunk_args
from transcoder.ladder import OutputPlan
from transcoder.worker import (
    DEQUEUE_SLICE_S,
    FFMPEG_THREADS_ENV,
    FarmWorker,
    ffmpeg_threads,
    nvenc_error,
    work_through_redis_outages,
)
from vidfarm.chunks import ChunkWindow
from vidfarm.farm import Farm
from vidfarm.localredis import free_port
from vidfarm.presence import WorkerInfo
from vidfarm.settings import Settings


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(nvenc_error() is None, reason="this machine has a working NVENC")
def test_nvenc_worker_without_nvenc_exits_and_says_why(settings: Settings) -> None:
    """A GPU without NVENC must fail visibly (the pod crash-loops with the reason), not idle on a GPU node."""
    port = free_port()
    cmd = [sys.executable, "-m", "vidfarm", "worker", "--encoder", "nvenc", "--pool", "gpu", "--queue", "gpu",
           "--metrics-port", str(port)]
    done = subprocess.run(cmd, env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "NVENC test encode failed" in done.stderr
    assert "T4, L4, L40S, A10G" in done.stderr and "exits" in done.stderr
    assert not port_open(port)  # never looked ready


def farm_worker(farm: Farm) -> FarmWorker:
    info = WorkerInfo(name=f"test-{os.getpid()}", pid=os.getpid(), host="test", queues="cpu", encoder="x264")
    return FarmWorker([Queue("cpu", connection=farm.rq_redis)], farm=farm, info=info)


@pytest.mark.timeout(60)
def test_an_idle_worker_stops_even_when_the_signals_exception_was_swallowed(farm: Farm) -> None:
    # RQ stops an idle worker by raising from its signal handler into whatever runs; a broad `except`
    # there (RQ has several) swallows it. Then only the stop flag is left, set here while the worker
    # waits for a job: it must notice within a slice, not after RQ's wait of minutes.
    worker = farm_worker(farm)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threading.Timer(1.0, setattr, (worker, "_stop_requested", True)).start()
    started = time.monotonic()
    try:
        worker.work(logging_level="WARNING", with_scheduler=False)
    finally:
        for sig, handler in handlers.items():  # work() installed RQ's in this (pytest's) process
            signal.signal(sig, handler)
    assert time.monotonic() - started < 1 + DEQUEUE_SLICE_S + 3


@pytest.mark.timeout(60)
def test_a_redis_error_while_rq_records_a_job_does_not_end_the_worker(farm: Farm) -> None:
    # Redis going away while RQ does a job's bookkeeping ends RQ's loop ("found an unhandled
    # exception, quitting"). The worker must take jobs again once Redis answers, not exit: here the
    # first loop meets the error on its first job, and the next loop runs the second job.
    queue = Queue("cpu", connection=farm.rq_redis)
    loops: list[FarmWorker] = []

    class RedisDropsOnce(FarmWorker):
        def execute_job(self, job, queue) -> None:
            if len(loops) == 1:
                raise redis.ConnectionError("Redis went away while recording the job")
            super().execute_job(job, queue)
            self._stop_requested = True  # the second job ran: the test is over

    def next_loop() -> FarmWorker:
        info = WorkerInfo(name=f"test-{os.getpid()}", pid=os.getpid(), host="test", queues="cpu", encoder="x264")
        loops.append(RedisDropsOnce([queue], farm=farm, info=info))
        return loops[-1]

    queue.enqueue("os.getpid")
    second = queue.enqueue("os.getpid")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        work_through_redis_outages(next_loop)
    finally:
        for sig, handler in handlers.items():  # work() installed RQ's in this (pytest's) process
            signal.signal(sig, handler)
    assert len(loops) == 2
    assert second.get_status(refresh=True) == JobStatus.FINISHED


def test_a_stopping_worker_leaves_rqs_command_channel_at_once(farm: Farm) -> None:
    # RQ listens for commands (stop-job, shutdown) in a thread. Under load that thread can read the
    # UNSUBSCRIBE reply before it is told to stop, and then waits out its whole read timeout; since
    # redis-py 8.2 stopping it waits too, so SIGTERM took up to a minute. Forced here in that order.
    worker = farm_worker(farm)
    worker.subscribe()
    worker.pubsub.unsubscribe()
    time.sleep(0.3)  # the listener has read the reply and gone back to waiting
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 3
    assert not worker.pubsub_thread.is_alive()


@pytest.mark.parametrize(("raw", "threads"), [("4", 4), ("", None), ("0", None), ("2.5", None)])
def test_ffmpeg_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, threads: int | None) -> None:
    monkeypatch.setenv(FFMPEG_THREADS_ENV, raw)
    assert ffmpeg_threads() == threads


def test_thread_counts_reach_decoder_filters_and_every_encoder(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "src.mp4", "testsrc2=size=320x240:rate=15:duration=1", True, [])
    plans = [(OutputPlan("240p", 320, 240, Fraction(15), 400), tmp_path / "a.mp4"),
             (OutputPlan("120p", 160, 120, Fraction(15), 200), tmp_path / "b.mp4")]
    whole = {"window": ChunkWindow(seek_s=0.0, grid_start_frame=0, skip_frames=0), "frames": None}
    args = chunk_args(source, plans, encoder=dataclasses.replace(X264, threads=2), **whole)

    assert args[args.index("-i") - 2 : args.index("-i")] == ["-threads", "2"]  # decoder
    assert args[args.index("-filter_complex_threads") + 1] == "2"
    assert args.count("-threads") == 1 + len(plans)  # and each rendition's encoder
    # This ffmpeg accepts them and encodes.
    subprocess.run(["ffmpeg", *args], check=True, capture_output=True)
    assert all(path.stat().st_size > 0 for _, path in plans)

    unbounded = chunk_args(source, plans, encoder=X264, **whole)
    assert "-threads" not in unbounded and "-filter_complex_threads" not in unbounded
