"""Time from a fault between Redis, a worker and the catalog to the video being ready again (issue 17).

Each run is a fresh farm: a private redis-server, the API under uvicorn in this process, the
reconciler in a thread every --resync-s (as `vidfarm up` runs it, 5 s), real `vidfarm worker`
processes (x264), a 4 s 640x360 clip (one chunk and finalize). The faults:

  frozen idle worker   a worker blocked in its dequeue is SIGSTOPped, a video is uploaded. Before issue
                       20 Redis handed the chunk's job to the frozen connection; now its blocking pop
                       takes only a wake-up and the job stays queued. A second worker starts then.
  popped job           the chunk's job is removed from its queue's list (LREM): what a worker killed
                       right after its pop leaves. A worker starts then.
  frozen transaction   (PostgreSQL) the worker freezes itself inside its first progress transaction,
                       row locks held (VIDFARM_TEST_FREEZE_IN_PROGRESS_TX). A second worker starts then.

The clock starts at the fault and stops when `GET /v1/videos/ID` says ready. Each fault runs twice:
with vidfarm's defaults, and as RQ alone recovers it (with the reconciler of before this change):
VIDFARM_LOST_JOB_GRACE_S=inf (a queued task is re-queued only once RQ says its job is gone or dead)
and no database bounds (lock, statement and idle-in-transaction timeouts 0). A run that is not ready
after --give-up-s is reported as not recovered.

    .venv/bin/python bench/liveness.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psycopg
import uvicorn
from rq import Queue
from rq.job import Job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, VIDFARM, machine, make_clip, table, temp_dir  # noqa: E402
from transcoder.worker import FREEZE_IN_PROGRESS_ENV  # noqa: E402
from vidfarm import presence  # noqa: E402
from vidfarm.farm import Farm  # noqa: E402
from vidfarm.localredis import LocalRedis, free_port  # noqa: E402
from vidfarm.queues import pool_queues  # noqa: E402
from vidfarm.reconciler import Reconciler  # noqa: E402
from vidfarm.settings import Settings  # noqa: E402
from vidfarm.states import TaskKind, WorkerState  # noqa: E402
from vidfarm.storage import StorageLocation  # noqa: E402

KEY = "bench-" + uuid.uuid4().hex[:8]
RQ_ALONE = {"lost_job_grace_s": float("inf"), "db_lock_timeout_s": 0.0, "db_statement_timeout_s": 0.0,
            "db_worker_idle_in_transaction_s": 0.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL to create throwaway databases on (the frozen transaction)")
    parser.add_argument("--resync-s", type=float, default=5.0, help="reconciler pass interval")
    parser.add_argument("--give-up-s", type=float, default=240.0, help="a fault not recovered by then is reported so")
    parser.add_argument("--only", choices=["frozen-idle", "popped", "frozen-tx"], action="append")
    parser.add_argument("--skip-rq-alone", action="store_true")
    return parser.parse_args()


# -- a farm -------------------------------------------------------------------------------------


class Run:
    """One fresh farm: API in a thread, reconciler in a thread, workers as processes."""

    def __init__(self, work: Path, redis_url: str, database_url: str, resync_s: float, **overrides) -> None:
        home = work / "home"
        home.mkdir(parents=True)
        self.settings = replace(Settings.from_env(), home=home, redis_url=redis_url, database_url=database_url,
                                storage=StorageLocation.directory(work / "storage"), scratch_dir=work / "scratch",
                                api_keys=(KEY,), api_keys_file=None, **overrides)
        self.farm = Farm(self.settings)
        self.farm.open()
        from uploader.app import create_app

        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.farm), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=60)
        wait(lambda: self._answers(), 30)
        self.stop = threading.Event()
        threading.Thread(target=self._reconcile, args=(resync_s,), daemon=True).start()
        self.workers: list[subprocess.Popen] = []

    def _answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get("/healthz").status_code == 200
        return False

    def _reconcile(self, every_s: float) -> None:
        reconciler = Reconciler(self.farm)
        while not self.stop.wait(every_s):
            with contextlib.suppress(Exception):  # a pass stuck on a lock just blocks this thread
                reconciler.step()

    def worker(self, **env: str) -> subprocess.Popen:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        proc = subprocess.Popen([*VIDFARM, "worker", "--encoder", "x264", "--name", name, "--queue", "cpu"],
                                env=self.settings.to_env(os.environ) | env, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.name = name  # type: ignore[attr-defined]
        self.workers.append(proc)
        return proc

    def upload(self, clip: Path) -> str:
        answer = self.http.post("/v1/videos", params={"filename": clip.name}, content=clip.read_bytes(),
                                headers={"Content-Type": "application/octet-stream"})
        answer.raise_for_status()
        return answer.json()["id"]

    def status(self, video_id: str) -> str:
        return self.http.get(f"/v1/videos/{video_id}").json()["status"]

    def chunk_job(self, video_id: str) -> str:
        return next(t.job_id for t in self.farm.catalog.tasks(video_id) if t.kind == TaskKind.CHUNK)

    def queued(self) -> list[str]:
        names = pool_queues(self.farm.rq_redis, "cpu")
        return [job_id for name in names for job_id in Queue(name, connection=self.farm.rq_redis).job_ids]

    def idle(self, name: str) -> bool:
        return any(w.name == name and w.state == WorkerState.IDLE for w in presence.all_workers(self.farm.redis))

    def blocked_just_now(self) -> bool:
        return any(c["cmd"] in ("blmove", "blpop") and "b" in c["flags"] and int(c["idle"]) == 0
                   for c in self.farm.rq_redis.client_list())

    def ready_after(self, video_id: str, since: float, give_up_s: float) -> float | None:
        deadline = since + give_up_s
        while time.monotonic() < deadline:
            if self.status(video_id) == "ready":
                return time.monotonic() - since
            time.sleep(0.2)
        return None

    def close(self) -> None:
        self.stop.set()
        for proc in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.server.should_exit = True
        self.http.close()
        self.farm.catalog.engine.dispose()


def wait(predicate: Callable[[], object], timeout_s: float, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(poll_s)


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


# -- the faults ---------------------------------------------------------------------------------


def frozen_idle_worker(run: Run, clip: Path, give_up_s: float) -> float | None:
    frozen = run.worker()
    wait(lambda: run.idle(frozen.name), 60)
    wait(run.blocked_just_now, 30)
    os.kill(frozen.pid, signal.SIGSTOP)
    since = time.monotonic()
    video_id = run.upload(clip)
    run.chunk_job(video_id)
    time.sleep(1)  # the frozen worker's pending pop has taken what Redis hands it (a wake-up)
    run.worker()
    return run.ready_after(video_id, since, give_up_s)


def popped_job(run: Run, clip: Path, give_up_s: float) -> float | None:
    video_id = run.upload(clip)
    job_id = run.chunk_job(video_id)
    wait(lambda: job_id in run.queued(), 30)
    origin = Job.fetch(job_id, connection=run.farm.rq_redis).origin  # the tenant's queue (vidfarm.queues)
    run.farm.rq_redis.lrem(Queue(origin, connection=run.farm.rq_redis).key, 0, job_id)
    since = time.monotonic()
    run.worker()
    return run.ready_after(video_id, since, give_up_s)


def frozen_transaction(run: Run, clip: Path, give_up_s: float) -> float | None:
    frozen = run.worker(**{FREEZE_IN_PROGRESS_ENV: "1"})
    video_id = run.upload(clip)
    wait(lambda: stopped(frozen.pid), 60)
    since = time.monotonic()
    run.worker()
    return run.ready_after(video_id, since, give_up_s)


@contextlib.contextmanager
def pg_database(url: str) -> Iterator[str]:
    admin = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    name = f"vidfarm_liveness_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


FAULTS = {
    "frozen-idle": ("frozen idle worker", frozen_idle_worker, False),
    "popped": ("popped job", popped_job, False),
    "frozen-tx": ("frozen transaction", frozen_transaction, True),
}


def measure(args: argparse.Namespace, key: str, clip: Path, work: Path, overrides: dict) -> float | None:
    _, fault, on_postgres = FAULTS[key]
    folder = work / f"{key}-{uuid.uuid4().hex[:6]}"
    redis_server = LocalRedis(folder / "redis", persistent=False).start()
    with contextlib.ExitStack() as stack:
        stack.callback(redis_server.stop)
        database = (stack.enter_context(pg_database(args.pg)) if on_postgres
                    else f"sqlite:///{folder / 'home' / 'catalog.db'}")
        run = Run(folder, redis_server.url, database, args.resync_s, **overrides)
        stack.callback(run.close)
        return fault(run, clip, args.give_up_s)


def main() -> None:
    args = parse_args()
    keys = args.only or list(FAULTS)
    rows = []
    with temp_dir("vidfarm-liveness-") as work:
        clip = make_clip(work / "clip.mp4", 4, size="640x360", rate=25, audio=False)
        for key in keys:
            ours = measure(args, key, clip, work, {})
            alone = None if args.skip_rq_alone else measure(args, key, clip, work, RQ_ALONE)
            rows.append((FAULTS[key][0], shown(ours, args.give_up_s), "-" if args.skip_rq_alone
                         else shown(alone, args.give_up_s)))
            print(f"{rows[-1]}", file=sys.stderr, flush=True)
    print(f"Machine: {machine()}; reconciler every {args.resync_s:g} s; defaults otherwise "
          f"(VIDFARM_LOST_JOB_GRACE_S 15, heartbeat TTL 10 s, worker idle-in-transaction 15 s, lock timeout 5 s)")
    print(table(["fault", "to ready, vidfarm (s)", "to ready, RQ alone (s)"], rows))


def shown(seconds: float | None, give_up_s: float) -> str:
    return f"not ready after {give_up_s:g}" if seconds is None else f"{seconds:.1f}"


if __name__ == "__main__":
    main()
