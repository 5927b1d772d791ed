"""Trace-driven simulation: vidfarm's autoscaler vs a KEDA-like and an HPA-like policy.

Run:  python bench/autoscale_sim.py [--seed 7] [--out bench/out] [--long-only]

The vidfarm policy is not re-implemented here: the simulation drives the real `autoscaler.controller.
Controller` (and so the real `policy.decide` and `backend.choose_victims`) through a simulated Backend.
The other two policies follow KEDA's and the HPA's documented behaviour (summarised, with links to
the sources, in docs/design.md):

* KEDA-like: Redis list scaler (`LLEN` only, running jobs invisible), `listLength` 1, activation polled
  every 30 s, scale to zero after `cooldownPeriod` 300 s without activity; between 1 and max an HPA with
  default behaviour (15 s sync, tolerance 0.1, scale-down stabilization 300 s, scale-up at most
  max(100 %, 4 pods) per 15 s).
* HPA-like: the best a user can do with a plain HPA: an external metric of queued + running jobs
  (e.g. prometheus-adapter), AverageValue target 1, minReplicas 1 (an HPA cannot go to zero), same
  default behaviour.

Both leave victim choice to the ReplicaSet: starting (not ready) pods go first, then a random ready pod,
busy or not. A terminated busy worker gets SIGTERM, finishes its job if it can within the 30 s grace
period, else it is killed; RQ re-queues the abandoned job only after its heartbeat expires and a
maintenance pass runs (modelled as 90 s + uniform 0-600 s, see docs/design.md), and the work is redone.

Time advances in 1 s ticks. Worker-seconds bill every pod from creation (start latency included) to exit.

A second table (issue 13) replays long uploads (10-120 min) as the job graph vidfarm.jobs queues:
the chunk jobs of the real chunk plan plus one audio job at upload, a finalize job once they are all
done, one FIFO queue shared by every video. It compares 60 s chunks with one chunk per video for
several max-worker settings, with the vidfarm policy only.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from _common import ONE_CHUNK_S, chunk_plan  # noqa: E402  (bench/, next to this file)

from autoscaler.backend import WorkerRef  # noqa: E402
from autoscaler.controller import Controller  # noqa: E402
from autoscaler.policy import PoolConfig, Snapshot  # noqa: E402
from vidfarm.states import WorkerState  # noqa: E402

TICK_S = 1.0
MAX_REPLICAS = 10
GRACE_S = 30.0  # terminationGracePeriodSeconds default
TRACE_S = 4 * 3600  # arrivals during the first 4 hours
TAIL_S = 3600  # then one hour to drain and settle, billed for every policy alike


# -- workload ------------------------------------------------------------------------------------------


@dataclass
class Job:
    id: int
    arrival: float
    work_s: float
    remaining_s: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    kills: int = 0


def work_seconds(rng: random.Random) -> float:
    # Transcode work: lognormal, median 150 s, clipped to 30 s .. 20 min.
    return min(1200.0, max(30.0, rng.lognormvariate(math.log(150.0), 0.9)))


def steady_trace(rng: random.Random, load_workers: float = 3.0) -> list[Job]:
    """Poisson arrivals keeping about `load_workers` workers busy on average."""
    mean_work = 203.0  # mean of the clipped lognormal above, measured over these traces
    rate = load_workers / mean_work
    jobs: list[Job] = []
    t = rng.expovariate(rate)
    while t < TRACE_S:
        jobs.append(Job(len(jobs), t, work_seconds(rng)))
        t += rng.expovariate(rate)
    return jobs


def bursty_trace(rng: random.Random) -> list[Job]:
    """Batches of 5-30 uploads within 20 s (a user drops a folder), 5-40 min apart."""
    jobs: list[Job] = []
    t = rng.uniform(60.0, 300.0)
    while t < TRACE_S:
        for _ in range(rng.randint(5, 30)):
            jobs.append(Job(len(jobs), t + rng.uniform(0.0, 20.0), work_seconds(rng)))
        t += rng.uniform(300.0, 2400.0)
    jobs.sort(key=lambda j: j.arrival)
    for index, job in enumerate(jobs):
        job.id = index
    return jobs


# -- long uploads, split into chunks (issue 13) -----------------------------------------------------

# Encode cost of the picture (every rung from one decode) in worker-seconds per source second. An
# assumption, not a measurement: about real time for 1080p + 720p with x264 veryfast on one worker.
# Only ratios between rows matter; it scales every time in the table alike.
ENCODE_COST = 1.0
AUDIO_COST = 0.02  # the whole AAC track once
FINALIZE_COST = 0.01  # stream copy: stitch + package, a few % of the encode at most (issue 13 target 2 %)
CHUNK_OVERHEAD_S = 1.0  # per chunk job: process start and decoding the warm-up before the chunk
LONG_FPS = Fraction(30)


@dataclass
class Upload:
    """One long video: its chunk and audio jobs are queued at upload; finalize when they are done."""

    id: int
    arrival: float
    source_s: float
    parts: list[Job]
    finalize: Job
    left: int = 0

    def __post_init__(self) -> None:
        self.left = len(self.parts)

    @property
    def ready_s(self) -> float | None:
        done = self.finalize.finished_at
        return None if done is None else done - self.arrival


def long_arrivals(rng: random.Random) -> list[tuple[float, float]]:
    """(arrival, source seconds): lectures and recordings, lognormal median 40 min, 10-120 min, one
    every 15 min on average (about 3 busy workers of load at ENCODE_COST 1)."""
    uploads = []
    t = rng.expovariate(1 / 900.0)
    while t < TRACE_S:
        uploads.append((t, min(7200.0, max(600.0, rng.lognormvariate(math.log(2400.0), 0.5)))))
        t += rng.expovariate(1 / 900.0)
    return uploads


def split_upload(index: int, arrival: float, source_s: float, chunk_s: float, workers: int,
                 next_id: int) -> Upload:
    """The job graph vidfarm.jobs plans for one upload, with the real chunk plan (a first chunk of one
    segment, then at least `workers` chunks of whole segments up to `chunk_s`, the last one absorbing
    the remainder)."""
    spans = chunk_plan(source_s, LONG_FPS, chunk_s, workers)
    lengths = [float((s.frames or 0) / LONG_FPS) for s in spans[:-1]]
    lengths.append(source_s - sum(lengths))
    works = [n * ENCODE_COST + CHUNK_OVERHEAD_S for n in lengths] + [source_s * AUDIO_COST]
    parts = [Job(next_id + i, arrival, w) for i, w in enumerate(works)]
    finalize = Job(next_id + len(parts), math.inf, source_s * FINALIZE_COST)
    return Upload(index, arrival, source_s, parts, finalize)


def long_trace(rng: random.Random, chunk_s: float, workers: int) -> tuple[list[Upload], list[Job]]:
    uploads: list[Upload] = []
    next_id = 0
    for index, (arrival, source_s) in enumerate(long_arrivals(rng)):
        uploads.append(split_upload(index, arrival, source_s, chunk_s, workers, next_id))
        next_id += len(uploads[-1].parts) + 1
    return uploads, [job for u in uploads for job in u.parts]


def finalize_when_done(uploads: Sequence[Upload], cluster: Cluster) -> Callable[[Job, float], None]:
    """Cluster.on_finish: the last chunk or audio job of a video to end queues its finalize job."""
    owner = {job.id: u for u in uploads for job in u.parts}

    def on_finish(job: Job, now: float) -> None:
        upload = owner.get(job.id)
        if upload is None:
            return
        upload.left -= 1
        if upload.left == 0:
            upload.finalize.arrival = now
            cluster.queue.append(upload.finalize)

    return on_finish


# -- the simulated cluster ------------------------------------------------------------------------


@dataclass
class Pod:
    id: int
    created: float
    ready_at: float
    job: Job | None = None
    terminating_since: float | None = None

    def ready(self, now: float) -> bool:
        return now >= self.ready_at


@dataclass
class Cluster:
    rng: random.Random
    start_latency: Callable[[random.Random], float]
    pods: list[Pod] = field(default_factory=list)
    queue: deque[Job] = field(default_factory=deque)
    requeue: list[tuple[float, Job]] = field(default_factory=list)
    worker_seconds: float = 0.0
    kills: int = 0
    on_finish: Callable[[Job, float], None] | None = None  # RQ's Dependency: queues a finalize job
    _next_pod: int = 0

    # state the policies read
    def replicas(self) -> list[Pod]:
        return [p for p in self.pods if p.terminating_since is None]

    def busy(self) -> int:
        return sum(1 for p in self.replicas() if p.job is not None)

    def running_jobs(self) -> int:
        return sum(1 for p in self.pods if p.job is not None)

    # actions
    def add_pods(self, count: int, now: float) -> None:
        for _ in range(count):
            self.pods.append(Pod(self._next_pod, now, now + self.start_latency(self.rng)))
            self._next_pod += 1

    def terminate(self, victims: Sequence[Pod], now: float) -> None:
        for pod in victims:
            pod.terminating_since = now

    def terminate_like_replicaset(self, count: int, now: float) -> None:
        # Not-ready pods first, then random ready ones, busy or idle: no pod-deletion-cost is set.
        live = self.replicas()
        starting = [p for p in live if not p.ready(now)]
        ready = [p for p in live if p.ready(now)]
        self.rng.shuffle(starting)
        self.rng.shuffle(ready)
        self.terminate((starting + ready)[:count], now)

    # time
    def advance(self, now: float, arrivals: Sequence[Job]) -> None:
        self.queue.extend(arrivals)
        self._requeue_abandoned(now)
        self._run_jobs(now)
        self._finish_terminations(now)
        self.dispatch(now)
        self.worker_seconds += len(self.pods) * TICK_S

    def _requeue_abandoned(self, now: float) -> None:
        due = [job for at, job in self.requeue if at <= now]
        self.requeue = [(at, job) for at, job in self.requeue if at > now]
        self.queue.extend(due)

    def _run_jobs(self, now: float) -> None:
        for pod in self.pods:
            if pod.job is None:
                continue
            pod.job.remaining_s -= TICK_S
            if pod.job.remaining_s <= 0:
                done, pod.job = pod.job, None
                done.finished_at = now
                if self.on_finish is not None:
                    self.on_finish(done, now)

    def _finish_terminations(self, now: float) -> None:
        survivors = []
        for pod in self.pods:
            if pod.terminating_since is None:
                survivors.append(pod)
            elif pod.job is None:
                continue  # idle (or done in time): warm shutdown exits at once
            elif now - pod.terminating_since >= GRACE_S:
                self._kill(pod, now)
            else:
                survivors.append(pod)  # RQ warm shutdown: finishing the current job
        self.pods = survivors

    def _kill(self, pod: Pod, now: float) -> None:
        # SIGKILL after the grace period: the transcode is lost; RQ notices much later.
        job = pod.job
        assert job is not None
        job.kills += 1
        job.started_at = None
        self.kills += 1
        self.requeue.append((now + 90.0 + self.rng.uniform(0.0, 600.0), job))

    def dispatch(self, now: float) -> None:
        for pod in self.pods:
            if not self.queue:
                return
            if pod.job is None and pod.terminating_since is None and pod.ready(now):
                job = self.queue.popleft()
                job.started_at = now
                job.remaining_s = job.work_s
                pod.job = job


# -- policies ---------------------------------------------------------------------------------------


class Policy:
    name = "policy"
    initial_replicas = 0  # pods already running when the trace starts (an HPA cannot be at zero)

    def act(self, now: float, cluster: Cluster, woke: bool) -> None:
        raise NotImplementedError


class SimBackend:
    """The Backend the real Controller drives, over the simulated cluster."""

    name = "sim"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.now = 0.0

    def current_replicas(self) -> int:
        return len(self.cluster.replicas())

    def scale_to(self, desired: int, victims: Sequence[WorkerRef]) -> None:
        current = self.current_replicas()
        if desired > current:
            self.cluster.add_pods(desired - current, self.now)
            return
        by_name = {f"pod-{p.id}": p for p in self.cluster.replicas()}
        pods = [by_name[v.name] for v in victims]
        assert len(pods) == current - desired, "controller must name exactly the pods to remove"
        self.cluster.terminate(pods, self.now)


class VidfarmPolicy(Policy):
    """The real Controller: wakes on every enqueue, resyncs every 5 s."""

    name = "vidfarm"

    def __init__(self, cluster: Cluster, config: PoolConfig, resync_s: float = 5.0) -> None:
        self.backend = SimBackend(cluster)
        self.cluster = cluster
        self.resync_s = resync_s
        self.last_step = -math.inf
        self.controller = Controller([(config, self.backend)], self._observe, clock=lambda: self.backend.now)

    def _observe(self, config: PoolConfig) -> tuple[Snapshot, list[WorkerRef]]:
        now = self.backend.now
        live = self.cluster.replicas()
        workers = [
            WorkerRef(f"pod-{p.id}", WorkerState.BUSY if p.job else WorkerState.IDLE, pod=f"pod-{p.id}")
            for p in live if p.ready(now)
        ]
        busy = sum(w.state == WorkerState.BUSY for w in workers)
        snapshot = Snapshot(
            now=now,
            queued_jobs=len(self.cluster.queue),
            running_jobs=self.cluster.running_jobs(),
            idle_workers=len(workers) - busy,
            busy_workers=busy,
            current_replicas=len(live),
        )
        return snapshot, workers

    def act(self, now: float, cluster: Cluster, woke: bool) -> None:
        if woke or now - self.last_step >= self.resync_s:
            self.backend.now = now
            self.controller.step()
            self.last_step = now


class HpaLike(Policy):
    """Kubernetes HPA, AverageValue target, default behaviour (see module docstring)."""

    name = "hpa-like"
    initial_replicas = 1
    sync_s = 15.0
    tolerance = 0.1
    stabilization_s = 300.0

    def __init__(self, metric: Callable[[Cluster], float], target: float, min_replicas: int, max_replicas: int):
        self.metric = metric
        self.target = target
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.recommendations: deque[tuple[float, int]] = deque()

    def reset(self) -> None:
        self.recommendations.clear()

    def desired(self, now: float, current: int, value: float) -> int:
        ratio = value / (current * self.target)
        # Tolerance: within 10 % of the target, leave the count alone.
        recommendation = current if abs(1.0 - ratio) <= self.tolerance else math.ceil(ratio * current)
        recommendation = min(self.max_replicas, max(self.min_replicas, recommendation))
        self.recommendations.append((now, recommendation))
        while self.recommendations[0][0] < now - self.stabilization_s:
            self.recommendations.popleft()
        if recommendation > current:
            # Default scale-up policy: at most max(100 %, 4 pods) per period; no up-stabilization.
            desired = min(recommendation, max(2 * current, current + 4))
        else:
            # Scale-down stabilization: never below the highest recommendation of the last 300 s.
            desired = min(current, max(r for _, r in self.recommendations))
        return min(self.max_replicas, max(self.min_replicas, desired))

    def act(self, now: float, cluster: Cluster, woke: bool) -> None:
        if now % self.sync_s != 0:
            return
        current = len(cluster.replicas())
        if current == 0:
            return  # the HPA does nothing at zero replicas
        resize(cluster, now, self.desired(now, current, self.metric(cluster)))


class KedaLike(Policy):
    """KEDA's Redis list scaler in front of an HPA."""

    name = "keda-like"
    polling_s = 30.0
    cooldown_s = 300.0

    def __init__(self, max_replicas: int, list_length: float = 1.0) -> None:
        self.hpa = HpaLike(lambda c: float(len(c.queue)), list_length, 1, max_replicas)
        self.last_active = -math.inf

    def act(self, now: float, cluster: Cluster, woke: bool) -> None:
        current = len(cluster.replicas())
        if now % self.polling_s == 0:
            if cluster.queue:  # LLEN > activationListLength (0)
                self.last_active = now
                if current == 0:
                    resize(cluster, now, 1)  # KEDA's own 0 -> 1
                    return
            elif current > 0 and now - self.last_active >= self.cooldown_s:
                # KEDA sets 0 directly, bypassing the HPA, even if every worker is busy (LLEN == 0).
                resize(cluster, now, 0)
                self.hpa.reset()
                return
        self.hpa.act(now, cluster, woke)


def resize(cluster: Cluster, now: float, desired: int) -> None:
    current = len(cluster.replicas())
    if desired > current:
        cluster.add_pods(desired - current, now)
    elif desired < current:
        cluster.terminate_like_replicaset(current - desired, now)


# -- running ------------------------------------------------------------------------------------------


@dataclass
class Result:
    trace: str
    latency: str
    policy: str
    jobs: int
    p50_wait_s: float
    p95_wait_s: float
    worker_s: float
    work_s: float  # useful work: each job that finished, once
    killed: int
    unfinished: int
    series: dict[str, list[float]]

    @property
    def cost_ratio(self) -> float:
        """Worker-seconds billed per second of useful work."""
        return self.worker_s / self.work_s


# The scale-down delay before issue 20 (fixed) and now (learned from the measured starts, seeded
# with the same 60 s and bounded as PoolConfig's defaults).
FIXED_DELAY_S = 60.0
BEFORE, AFTER = "vidfarm fixed 60 s", "vidfarm"


def make_policy(name: str, cluster: Cluster, max_replicas: int = MAX_REPLICAS) -> Policy:
    if name == AFTER:
        config = PoolConfig("sim", ("cpu",), min_replicas=0, max_replicas=max_replicas,
                            scale_down_after_s=FIXED_DELAY_S)
        return VidfarmPolicy(cluster, config)
    if name == BEFORE:
        config = PoolConfig("sim", ("cpu",), min_replicas=0, max_replicas=max_replicas,
                            scale_down_after_s=FIXED_DELAY_S, scale_down_min_s=FIXED_DELAY_S,
                            scale_down_max_s=FIXED_DELAY_S)
        return VidfarmPolicy(cluster, config)
    if name == "keda-like":
        return KedaLike(max_replicas)
    if name == "hpa-like":
        return HpaLike(lambda c: float(len(c.queue) + c.running_jobs()), 1.0, 1, max_replicas)
    raise ValueError(name)


LATENCIES: dict[str, Callable[[random.Random], float]] = {
    "pod 20-40s": lambda rng: rng.uniform(20.0, 40.0),
    "local 1s": lambda rng: 1.0,
}
TRACES: dict[str, Callable[[random.Random], list[Job]]] = {"bursty": bursty_trace, "steady": steady_trace}
POLICIES = (AFTER, "keda-like", "hpa-like")


def simulate(trace: str, latency: str, policy_name: str, seed: int) -> Result:
    jobs = TRACES[trace](random.Random(seed))  # same jobs for every policy
    cluster = Cluster(random.Random(seed + 1), LATENCIES[latency])
    policy = make_policy(policy_name, cluster)
    series = run_trace(cluster, policy, jobs, TRACE_S + TAIL_S)
    return _result(trace, latency, policy_name, jobs, cluster, series)


def run_trace(cluster: Cluster, policy: Policy, jobs: Sequence[Job], horizon_s: float) -> dict[str, list[float]]:
    """Tick the cluster and the policy until `horizon_s`; jobs arrive at their `arrival` time."""
    cluster.add_pods(policy.initial_replicas, now=-cluster.start_latency(cluster.rng))
    for pod in cluster.pods:
        pod.ready_at = 0.0
    arrivals = deque(sorted(jobs, key=lambda j: j.arrival))
    series: dict[str, list[float]] = {"t": [], "queued": [], "replicas": [], "busy": []}
    for tick in range(int(horizon_s / TICK_S)):
        now = tick * TICK_S
        arrived = []
        while arrivals and arrivals[0].arrival <= now:
            arrived.append(arrivals.popleft())
        cluster.advance(now, arrived)
        policy.act(now, cluster, woke=bool(arrived))
        cluster.dispatch(now)  # a worker that just became free or ready takes work in the same tick
        _record(series, now, cluster)
    return series


def _record(series: dict[str, list[float]], now: float, cluster: Cluster) -> None:
    series["t"].append(now)
    series["queued"].append(len(cluster.queue))
    series["replicas"].append(len(cluster.replicas()))
    series["busy"].append(cluster.running_jobs())


def _result(
    trace: str, latency: str, policy: str, jobs: list[Job], cluster: Cluster, series: dict[str, list[float]]
) -> Result:
    waits = sorted(j.started_at - j.arrival for j in jobs if j.finished_at is not None and j.started_at is not None)
    return Result(
        trace=trace,
        latency=latency,
        policy=policy,
        jobs=len(jobs),
        p50_wait_s=_percentile(waits, 50),
        p95_wait_s=_percentile(waits, 95),
        worker_s=cluster.worker_seconds,
        work_s=useful_work(jobs),
        killed=cluster.kills,
        unfinished=sum(1 for j in jobs if j.finished_at is None),
        series=series,
    )


def useful_work(jobs: Sequence[Job]) -> float:
    return sum(j.work_s for j in jobs if j.finished_at is not None)


def _percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def format_table(results: Sequence[Result]) -> str:
    header = (
        "| trace | worker start | policy | jobs | p50 wait s | p95 wait s | worker-hours | cost / work | "
        "jobs killed | unfinished |"
    )
    rule = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    rows = [
        f"| {r.trace} | {r.latency} | {r.policy} | {r.jobs} | {r.p50_wait_s:.0f} | {r.p95_wait_s:.0f} | "
        f"{r.worker_s / 3600:.1f} | {r.cost_ratio:.2f} | {r.killed} | {r.unfinished} |"
        for r in results
    ]
    return "\n".join([header, rule, *rows])


LONG_LATENCY = "pod 20-40s"
LONG_TAIL_S = 4 * 3600  # long videos on a small pool need hours to drain: bill every row alike
LONG_MAX_WORKERS = (2, 4, 8, 16, 32)
LONG_CHUNKS: dict[str, float] = {"one chunk": ONE_CHUNK_S, "chunks <= 60 s": 60.0}


@dataclass
class LongResult:
    chunking: str
    max_workers: int
    videos: int
    jobs: int
    p50_ready_s: float
    p95_ready_s: float
    peak_replicas: int
    worker_s: float
    work_s: float
    killed: int
    unfinished: int

    @property
    def cost_ratio(self) -> float:
        return self.worker_s / self.work_s


def simulate_long(chunking: str, max_workers: int, seed: int, policy: str = AFTER) -> LongResult:
    """The long-upload trace through the real controller (vidfarm policy only), each video planned
    for the pool's max workers as the API plans it."""
    uploads, jobs = long_trace(random.Random(seed), LONG_CHUNKS[chunking], max_workers)
    cluster = Cluster(random.Random(seed + 1), LATENCIES[LONG_LATENCY])
    cluster.on_finish = finalize_when_done(uploads, cluster)
    series = run_trace(cluster, make_policy(policy, cluster, max_workers), jobs, TRACE_S + LONG_TAIL_S)
    ready = [u.ready_s for u in uploads if u.ready_s is not None]
    return LongResult(
        chunking=chunking,
        max_workers=max_workers,
        videos=len(uploads),
        jobs=len(jobs) + len(uploads),
        p50_ready_s=_percentile(ready, 50),
        p95_ready_s=_percentile(ready, 95),
        peak_replicas=int(max(series["replicas"])),
        worker_s=cluster.worker_seconds,
        work_s=useful_work([*jobs, *(u.finalize for u in uploads)]),
        killed=cluster.kills,
        unfinished=len(uploads) - len(ready),
    )


def format_long_table(results: Sequence[LongResult]) -> str:
    header = (
        "| chunking | max workers | videos | jobs | p50 upload->ready min | p95 upload->ready min | "
        "peak replicas | worker-hours | cost / work | jobs killed | unfinished |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    rows = [
        f"| {r.chunking} | {r.max_workers} | {r.videos} | {r.jobs} | {r.p50_ready_s / 60:.1f} | "
        f"{r.p95_ready_s / 60:.1f} | {r.peak_replicas} | {r.worker_s / 3600:.1f} | {r.cost_ratio:.2f} | "
        f"{r.killed} | {r.unfinished} |"
        for r in results
    ]
    return "\n".join([header, rule, *rows])


def plot(results: Sequence[Result], trace: str, latency: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for r in (r for r in results if r.trace == trace and r.latency == latency):
        fig, ax = plt.subplots(figsize=(11, 3.5))
        hours = [t / 3600 for t in r.series["t"]]
        ax.plot(hours, r.series["queued"], label="queued jobs", color="tab:orange", linewidth=0.9)
        ax.plot(hours, r.series["replicas"], label="replicas", color="tab:blue", linewidth=1.2)
        ax.plot(hours, r.series["busy"], label="running jobs", color="tab:green", linewidth=0.7, alpha=0.8)
        ax.set_xlabel("hours")
        ax.set_title(
            f"{r.policy}: {trace} trace, {latency} start  (p95 wait {r.p95_wait_s:.0f} s, "
            f"{r.worker_s / 3600:.1f} worker-h, {r.killed} killed)"
        )
        ax.legend(loc="upper right")
        fig.tight_layout()
        path = out / f"autoscale_{trace}_{r.policy}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--long-only", action="store_true", help="only the long uploads split into chunks")
    parser.add_argument("--scale-down-only", action="store_true",
                        help="only the vidfarm policy, fixed 60 s scale-down delay beside the learned one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # the controller logs every change at INFO

    if args.long_only:
        return print_long(args.seed)
    if args.scale_down_only:
        return print_scale_down(args.seed)
    results = [
        simulate(trace, latency, policy, args.seed) for trace in TRACES for latency in LATENCIES for policy in POLICIES
    ]
    print(format_table(results))
    print()
    print_long(args.seed)
    if not args.no_plot:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in plot(results, "bursty", "pod 20-40s", args.out):
            print(f"plot: {path}")
    return 0


def print_scale_down(seed: int) -> int:
    """Issue 20: the learned scale-down delay (ski rental) beside the fixed 60 s, on every trace."""
    pairs = [(simulate(t, lat, BEFORE, seed), simulate(t, lat, AFTER, seed)) for t in TRACES for lat in LATENCIES]
    print("scale-down delay: fixed 60 s -> learned from worker starts (median, bounded 10-600 s)")
    print("| trace | worker start | p95 wait s | worker-hours | cost / work | jobs killed |")
    print("|---|---|---:|---:|---:|---:|")
    for a, b in pairs:
        print(f"| {a.trace} | {a.latency} | {a.p95_wait_s:.0f} -> {b.p95_wait_s:.0f} | "
              f"{a.worker_s / 3600:.1f} -> {b.worker_s / 3600:.1f} | {a.cost_ratio:.2f} -> {b.cost_ratio:.2f} | "
              f"{a.killed} -> {b.killed} |")
    long = [(simulate_long(c, m, seed, BEFORE), simulate_long(c, m, seed, AFTER))
            for c in LONG_CHUNKS for m in LONG_MAX_WORKERS]
    print(f"\nlong uploads (worker start {LONG_LATENCY}):")
    print("| chunking | max workers | p95 upload->ready min | worker-hours | cost / work | jobs killed |")
    print("|---|---:|---:|---:|---:|---:|")
    for a, b in long:
        print(f"| {a.chunking} | {a.max_workers} | {a.p95_ready_s / 60:.1f} -> {b.p95_ready_s / 60:.1f} | "
              f"{a.worker_s / 3600:.1f} -> {b.worker_s / 3600:.1f} | {a.cost_ratio:.2f} -> {b.cost_ratio:.2f} | "
              f"{a.killed} -> {b.killed} |")
    return 0


def print_long(seed: int) -> int:
    results = [simulate_long(c, m, seed) for c in LONG_CHUNKS for m in LONG_MAX_WORKERS]
    print(f"long uploads split into chunks (vidfarm policy, worker start {LONG_LATENCY}):")
    print(format_long_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
