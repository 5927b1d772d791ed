"""The worker process: an RQ SimpleWorker that announces itself and drains cleanly.

SimpleWorker runs the job in this process (ffmpeg is the heavy child anyway): no fork per job, so
dispatch is fast and job metrics land in this process's /metrics. SIGTERM is RQ's warm shutdown: an
idle worker exits at once, a busy one finishes its transcode first and shows as `draining`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

import redis
from prometheus_client import start_http_server
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError, StopRequested
from rq.job import Job
from rq.worker import WorkerStatus

from transcoder import job as job_module
from transcoder.command import ENCODERS, NVENC, X264, Encoder
from vidfarm import metrics, presence
from vidfarm.farm import Farm
from vidfarm.queues import Dispatcher, announce_released, forget_idle_queues, pool_queues
from vidfarm.states import TERMINAL, WorkerState

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
# How long RQ's command-channel listener (a thread) blocks in one read. RQ uses 60 s. When a worker
# stops, the listener may read the UNSUBSCRIBE reply before it is told to stop (likely on a busy
# machine) and then waits the whole read out; redis-py (8.2 and later) waits for the thread when it
# stops it, so with RQ's read a SIGTERM can take a minute. A short read costs no Redis command: it
# polls the open socket.
COMMAND_CHANNEL_POLL_S = 1.0
# How long an idle worker blocks waiting for a job before it looks at a stop request again (RQ's own
# wait is minutes long, see request_stop). Each slice costs about 8 Redis commands (RQ marks the worker
# idle and renews its key): 0.8 per second per idle worker at 10 s.
DEQUEUE_SLICE_S = 10
# While Redis is away, a worker that lost its loop asks again this often.
REDIS_RETRY_S = 1.0
# Test hook: "1" freezes this worker (SIGSTOP to itself, every thread) inside its first progress
# transaction, with that chunk's task and video rows locked: the fault the catalog's session bounds
# are for (tests/test_faults.py, bench/liveness.py).
FREEZE_IN_PROGRESS_ENV = "VIDFARM_TEST_FREEZE_IN_PROGRESS_TX"
# ffmpeg threads per decoder/encoder/filter graph. In Kubernetes the pod's CPU limit in whole cores,
# through the downward API (resourceFieldRef limits.cpu); unset, ffmpeg sizes them from the machine.
FFMPEG_THREADS_ENV = "VIDFARM_FFMPEG_THREADS"
NVENC_UNUSABLE = (
    "NVENC test encode failed: %s. This worker takes no job and exits (in Kubernetes: the pod crash-loops "
    "with this reason and holds no node for long). "
    "NVENC needs an NVIDIA GPU with a video encoder (T4, L4, L40S, A10G, GeForce/RTX; A100, H100 and "
    "H200 have none), NVIDIA_DRIVER_CAPABILITIES including 'video', and the driver's libnvidia-encode "
    "on LD_LIBRARY_PATH (the image searches /usr/local/nvidia/lib64, where GKE mounts it)."
)


def nvenc_error() -> str | None:
    """None when a one-frame NVENC encode works, else why not. Debian's ffmpeg lists h264_nvenc even
    without a GPU, and A100/H100 GPUs have none, so only a real encode tells."""
    probe = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "color=s=256x256:d=0.1",
             "-frames:v", "1", "-c:v", NVENC.codec, "-f", "null", "-"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if result.returncode == 0:
        return None
    return " ".join(result.stderr.split()) or f"ffmpeg exited with status {result.returncode}"


def detect_encoder() -> Encoder:
    return NVENC if nvenc_error() is None else X264


def resolve_encoder(name: str) -> Encoder:
    return detect_encoder() if name == "auto" else ENCODERS[name]


def ffmpeg_threads() -> int | None:
    raw = os.environ.get(FFMPEG_THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        log.warning("%s=%r is not a positive integer; ffmpeg picks its own thread counts", FFMPEG_THREADS_ENV, raw)
        return None
    return threads


class EncoderUnusable(RuntimeError):
    """The encoder the worker was started for cannot encode here: it must not take jobs."""


def check_nvenc_if_required(encoder: str) -> None:
    """EncoderUnusable, saying why, when `--encoder nvenc` was asked for and NVENC cannot encode."""
    if encoder != NVENC.name:
        return
    error = nvenc_error()
    if error is not None:
        raise EncoderUnusable(NVENC_UNUSABLE % error)


def freeze_once_in_progress_transaction(farm: Farm) -> None:
    frozen = threading.Event()

    def freeze() -> None:
        if not frozen.is_set():
            frozen.set()
            log.warning("worker: freezing inside a progress transaction (%s)", FREEZE_IN_PROGRESS_ENV)
            os.kill(os.getpid(), signal.SIGSTOP)

    farm.catalog.in_progress_transaction = freeze



class FarmWorker(SimpleWorker):
    def __init__(self, queues: Sequence[Queue], *, farm: Farm, info: presence.WorkerInfo, **kwargs) -> None:
        super().__init__(queues, name=info.name, connection=farm.rq_redis, **kwargs)
        self.farm = farm
        self.info = info
        self._beating = threading.Event()
        self.dispatcher = Dispatcher(farm.rq_redis, [q.name for q in queues])

    # -- presence ---------------------------------------------------------------------------------

    def beat(self) -> None:
        try:
            presence.beat(self.farm.redis, self.info, self.farm.settings.worker_heartbeat_ttl_s)
        except (redis.RedisError, OSError) as exc:  # Redis may be away; keep beating, it comes back
            log.warning("worker %s: heartbeat failed: %s", self.info.name, exc)

    def _beat_forever(self) -> None:
        while not self._beating.wait(HEARTBEAT_EVERY_S):
            self.beat()

    def start_heartbeat(self) -> None:
        self.beat()
        threading.Thread(target=self._beat_forever, name="presence", daemon=True).start()

    def stop_heartbeat(self) -> None:
        self._beating.set()
        # Best effort on the way out; the key expires anyway.
        with contextlib.suppress(Exception):
            presence.remove(self.farm.redis, self.info.name)

    # -- RQ hooks ---------------------------------------------------------------------------------

    def subscribe(self) -> None:
        """RQ's subscribe, with a listener that notices a stop within COMMAND_CHANNEL_POLL_S."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=COMMAND_CHANNEL_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler)

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.info.state = WorkerState.DRAINING if self._stop_requested else WorkerState.BUSY
        self.info.video_id = str(job.args[0]) if job.args else ""
        self.info.job_id = job.id
        self.beat()
        try:
            super().execute_job(job, queue)
        finally:
            self.info.video_id = self.info.job_id = ""
            self.info.state = WorkerState.DRAINING if self._stop_requested else WorkerState.IDLE
            self.beat()
            self._announce_released(queue)

    def _announce_released(self, queue: Queue) -> None:
        """The job's end may have released a finalize into its tenant's queue (RQ queues a dependent
        without telling the dispatch): announce that tenant; a worker that takes no next job wakes
        another for it. Best effort: the reconciler announces every tenant with queued tasks too."""
        try:
            announce_released(self.connection, queue.name)
            if self._stop_requested:
                self.dispatcher.ring()
        except redis.RedisError as exc:
            log.warning("worker %s: could not announce what its job released: %s", self.name, exc)

    def request_stop(self, signum, frame) -> None:
        # No Redis call here: a signal handler may interrupt this thread inside redis-py's pool lock.
        # The heartbeat thread publishes the new state within HEARTBEAT_EVERY_S.
        if self.info.video_id:
            self.info.state = WorkerState.DRAINING
            log.info("worker %s: draining, finishing video %s first", self.info.name, self.info.video_id)
        # RQ stops an idle worker by raising StopRequested from this handler, in whatever the main
        # thread is doing; a broad `except` on its way (one of RQ's own) can swallow it, and the worker
        # then waits minutes for a job. The flag outlives that: the loop checks it before each dequeue
        # and dequeue_job_and_maintain_ttl every DEQUEUE_SLICE_S.
        self._stop_requested = True
        super().request_stop(signum, frame)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None) -> tuple[Job, Queue] | None:
        """The next job as `vidfarm.queues.Dispatcher` picks it (first chunks first, round-robin
        across tenants), instead of RQ's pop from a fixed list of queues."""
        if timeout is None:  # burst mode: RQ does not wait at all
            return self._take(None)
        while not self._stop_requested:
            # A slice: the loop looks at a stop request between slices (RQ's own wait is minutes long).
            found = self._take(DEQUEUE_SLICE_S)
            if found is not None:
                return found
        return None  # RQ's loop then ends: a warm stop

    def _take(self, wait_s: float | None) -> tuple[Job, Queue] | None:
        """One slice of RQ's dequeue: mark idle, maintain, then take a job, waiting up to `wait_s`;
        Redis errors are waited out here, as RQ does while waiting for a job."""
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                popped = self.dispatcher.take(wait_s)
                if popped is None:
                    return None
                found = self._fetch(*popped)
                if found is not None:
                    self.heartbeat()
                    return found
                # The job was deleted while it waited (a stopped video): take the next one.
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("worker %s: Redis unavailable while waiting for a job (%s)", self.name, exc)
                time.sleep(REDIS_RETRY_S)

    def _fetch(self, queue_name: str, job_id: str) -> tuple[Job, Queue] | None:
        queue = Queue(queue_name, connection=self.connection, job_class=self.job_class, serializer=self.serializer)
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            return None
        job.redis_server_version = self.get_redis_server_version()
        log.info("worker %s: %s: %s", self.name, queue_name, job.description)
        return job, queue

    def clean_registries(self) -> None:
        """RQ's upkeep (abandoned started jobs, dependents left ready, expired entries) for every
        queue of the pools, not only the pool queues the worker was started with; then the queues
        left with nothing in them are forgotten."""
        own = self.queues
        names = [name for pool in self.dispatcher.pools for name in pool_queues(self.connection, pool,
                                                                                 with_work_only=False)]
        self.queues = [Queue(name, connection=self.connection) for name in names]
        try:
            super().clean_registries()
        finally:
            self.queues = own
        forget_idle_queues(self.connection, names)


def default_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def run_worker(
    farm: Farm,
    queues: Sequence[str],
    *,
    encoder: str = "auto",
    name: str | None = None,
    pool: str | None = None,
    metrics_port: int | None = None,
) -> None:
    # Taking jobs would fail every one of them. Exiting is what shows: a pod that stays up not ready
    # keeps a GPU node (do-not-disrupt) and looks like capacity, while a crash loop says why in its
    # status and events, and is not ready, so the autoscaler removes it first.
    check_nvenc_if_required(encoder)
    chosen = dataclasses.replace(resolve_encoder(encoder), threads=ffmpeg_threads())
    name = name or default_name()
    job_module.use_farm(farm)
    job_module.IDENTITY.name = name
    job_module.IDENTITY.encoder = chosen
    job_module.IDENTITY.stall_timeout_s = farm.settings.stall_timeout_s
    for result in TERMINAL:
        metrics.TRANSCODES.labels(chosen.name, result)  # present at zero from the start
    farm.catalog  # noqa: B018 - migrate and connect before taking the first job
    if os.environ.get(FREEZE_IN_PROGRESS_ENV) == "1":
        freeze_once_in_progress_transaction(farm)
    farm.storage  # noqa: B018 - a missing bucket or wrong credentials stop the worker here
    # Last: an open metrics port is what the readiness probe reads as "ready to take jobs".
    metrics_url = ""
    if metrics_port is not None:
        server, _ = start_http_server(metrics_port)
        metrics_url = f"http://{socket.gethostname()}:{server.server_port}/metrics"
    info = presence.WorkerInfo(
        name=name, pid=os.getpid(), host=os.environ.get("HOSTNAME", socket.gethostname()),
        queues=",".join(queues), encoder=chosen.name, pool=pool or queues[0], metrics_url=metrics_url,
    )
    log.info("worker %s: pool %s, queues %s, encoder %s, ffmpeg threads %s", name, info.pool, ",".join(queues),
             chosen.name, chosen.threads or "auto")
    work_through_redis_outages(lambda: FarmWorker([Queue(q, connection=farm.rq_redis) for q in queues], farm=farm,
                                                  info=info, maintenance_interval=60))


def work_through_redis_outages(make_worker: Callable[[], FarmWorker]) -> None:
    """Run RQ's loop until it stops as asked. RQ survives a Redis outage only while it waits for a
    job: one that comes while it records a finished job ends its loop ("found an unhandled
    exception, quitting", or the error itself when its teardown fails too), and a worker that exits
    then leaves the queue without a consumer (a pool at its maximum starts no other). So a loop that
    ended without a stop request is started again, under the same name, once Redis answers."""
    while True:
        worker = make_worker()
        worker.start_heartbeat()
        try:
            worker.work(logging_level="WARNING", with_scheduler=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("worker %s: Redis went away (%s)", worker.name, exc)
        finally:
            worker.stop_heartbeat()
        if worker._stop_requested:
            return
        log.warning("worker %s: RQ's loop ended unasked; taking jobs again once Redis answers", worker.name)
        try:
            time.sleep(REDIS_RETRY_S)  # a loop that keeps ending is not restarted in a tight spin
            wait_for_redis(worker)
        except StopRequested:  # RQ's signal handler, still installed: asked to stop meanwhile
            return


def wait_for_redis(worker: FarmWorker) -> None:
    """Until Redis answers; then mark the worker's last RQ registration dead (it could not say so
    itself), so registering again under its name is allowed."""
    while True:
        try:
            worker.connection.ping()
            break
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(REDIS_RETRY_S)
    with contextlib.suppress(redis.RedisError):
        worker.register_death()
