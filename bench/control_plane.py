"""Control-plane cost per video: Redis commands and catalog (PostgreSQL) statements per upload, and
what one Redis and one PostgreSQL on this machine carry.

A real farm (`vidfarm up --min-workers 2 --max-workers 2`) runs against a private redis-server
(AOF on, as `up` and the cluster run it) and a throwaway database on the PostgreSQL at --pg, created
for the run and dropped at the end. Its DATABASE_URL points at a small counting proxy (bench/_wire.py)
that sees every statement PostgreSQL executes (pings, BEGIN/COMMIT/ROLLBACK included); a MONITOR
client sorts every Redis command by the process that sent it and what its key is for. Neither needs
a hook in the product.

Windows, each cut by CONFIG RESETSTAT ... INFO commandstats (the authoritative Redis counts):
  idle   nothing uploaded: the background (heartbeats, autoscaler resync, reconciler, webhook polls)
  batch  N clips uploaded at once (raw POST), each watched by a client until ready, then 2 s settle
A batch's per-video cost is (its counts - idle rate x its wall time) / N. VIDFARM_CHUNK_SECONDS=6 (one
6 s segment per chunk), so a 26 s clip is 4 chunks and a 50 s one 8; a 3 s 1080p clip is one chunk that
encodes longer. The SSE
batches are fitted (least squares), each sender to what drives it:
  workers  a + b x chunks + q x (chunks + 1)^2 + c x chunk-encode seconds
  API      u + b x chunks (it enqueues every job) + r x seconds from upload to ready (the watcher)
  up       u + r x seconds from upload to ready (autoscaler wake-ups, reconciler passes)
where the square is RQ's dependency check (each of finalize's chunks + audio, when it finishes, reads
the status of all of them: those HGETs are fitted alone). The other two batches differ from the first
in their watcher only (none; a GET every 0.5 s).
Time cost, measured two ways. Modelled: Redis per command = its usec_per_call in the run + the cost of
a PING under redis-benchmark (network and event loop, not pipelined: an upper bound for the commands
RQ sends in MULTI blocks); PostgreSQL per round trip and per write transaction from pgbench on the
app's own shapes (a ping, then BEGIN; <point read>; ROLLBACK, or BEGIN; <point update>; COMMIT) on the
same tables. Measured in the run: CPU of redis-server (MONITOR attached, so an overestimate) and of the
database's backends. --save keeps a run's raw counts; --load prints its report again.

    python bench/control_plane.py --videos 8 --idle-s 20 --save /tmp/control-plane.pkl
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import httpx
import psycopg
import redis
from _common import (
    CLK_TCK,
    LocalFarm,
    descendants,
    machine,
    make_clip,
    median,
    table,
    temp_dir,
    upload_file,
    wait_until,
)
from _wire import PgCountingProxy, RedisMonitor, role_of
from rq.job import Job

from vidfarm.localredis import LocalRedis
from vidfarm.presence import PREFIX
from vidfarm.states import TERMINAL

CHUNK_S = 6  # VIDFARM_CHUNK_SECONDS for the farm: one segment per chunk, so short clips get several
WORKERS = 2
SETTLE_S = 2.0  # after the last `ready`: the jobs' last bookkeeping lands inside the window
POLL_S = 0.5  # `vidfarm upload --wait` polls GET /v1/videos/ID this often
BENCH_ONLY = {"echo", "info", "config|resetstat", "monitor"}  # our own calls, not the farm's
UTILISATION = 0.5  # headroom: size for half of what one server does flat out
FITTED = 4  # the first FITTED batches (SSE) are fitted; the others differ in their watcher only


@dataclass(frozen=True)
class Batch:
    name: str
    seconds: float
    size: str
    watch: str  # sse | poll | none

    @property
    def clip_name(self) -> str:
        return f"{self.seconds:g}s-{self.size}.mp4"


BATCHES = (
    Batch("1 chunk, SSE", 2, "320x240", "sse"),
    Batch("4 chunks, SSE", 26, "320x240", "sse"),
    Batch("8 chunks, SSE", 50, "320x240", "sse"),
    Batch("1 chunk 1080p, SSE", 3, "1920x1080", "sse"),
    Batch("1 chunk, no watcher", 2, "320x240", "none"),
    Batch("1 chunk, polling 0.5 s", 2, "320x240", "poll"),
)


@dataclass
class Window:
    name: str
    wall_s: float
    redis: Counter[str]                  # command -> calls (the farm's only)
    usec: dict[str, float]               # command -> usec per call
    monitor: Counter[tuple[str, str, str]]  # (role, purpose, command) -> calls
    sql: Counter[tuple[str, str, str]]   # (role, kind, table) -> statements (and round trips)
    cpu: Counter[str]                    # "redis", "pg" -> CPU seconds of redis-server, of the backends
    videos: int = 0
    chunks: float = 0.0                  # per video
    chunk_s: float = 0.0                 # chunk-encode seconds per video (RQ started -> ended)
    busy_s: float = 0.0                  # every job of the video
    ready_s: list[float] = field(default_factory=list)  # upload start -> ready seen, per video
    watch: str = ""

    def per_video(self, idle: Window, counts: Counter) -> dict:
        """(counts - idle rate x wall) / videos, for a counter of this window and the same of idle."""
        rate = {k: v / idle.wall_s for k, v in getattr(idle, counts).items()}
        mine = getattr(self, counts)
        return {k: (mine.get(k, 0) - rate.get(k, 0) * self.wall_s) / self.videos for k in set(mine) | set(rate)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="videos per batch (default 8)")
    parser.add_argument("--idle-s", type=float, default=20, help="idle window, seconds (default 20)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL of the PostgreSQL to use; a throwaway database is created there")
    parser.add_argument("--bench-s", type=float, default=5, help="seconds per redis-benchmark/pgbench run")
    parser.add_argument("--save", type=Path, help="also keep the raw counts in this file (pickle)")
    parser.add_argument("--load", type=Path, help="print the report of a run saved with --save, run nothing")
    return parser.parse_args()


# -- the farm and its servers -----------------------------------------------------------------------


class Rig:
    """Private redis-server, throwaway database behind the counting proxy, the farm, the counters."""

    def __init__(self, work: Path, pg_admin: str) -> None:
        self.work = work
        self.pg_admin = pg_admin
        pg = psycopg.conninfo.conninfo_to_dict(pg_admin)
        self.pg_host, self.pg_port = pg.get("host", "127.0.0.1"), int(pg.get("port", 5432))
        self.db_name = f"vidfarm_bench_{uuid.uuid4().hex[:8]}"
        self.created_db = False
        self.farm: LocalFarm | None = None
        self.leftovers = 0
        self.redis = LocalRedis(work / "redis")
        self.proxy: PgCountingProxy | None = None
        self.monitor: RedisMonitor | None = None

    def open(self) -> Rig:
        self.redis.start()
        self.stats = redis.Redis.from_url(self.redis.url, decode_responses=True)
        self.rq = redis.Redis.from_url(self.redis.url)
        self._admin(f'CREATE DATABASE "{self.db_name}"')
        self.created_db = True
        self.proxy = PgCountingProxy(self.pg_port, self.farm_pids)
        self.monitor = RedisMonitor(self.redis.url, self.redis.port, self.farm_pids)
        return self

    def farm_pids(self) -> list[int]:
        return [self.farm.pid, *descendants(self.farm.pid)] if self.farm and self.farm.proc else []

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self.pg_admin, autocommit=True) as conn:
            conn.execute(sql)

    def db_url(self, port: int | None = None) -> str:
        """The throwaway database, directly (port None) or as the farm sees it (through the proxy)."""
        host = f"{self.pg_host}:{port or self.pg_port}"
        return f"postgresql://postgres@{host}/{self.db_name}?sslmode=disable&gssencmode=disable"

    def db(self) -> psycopg.Connection:
        return psycopg.connect(self.db_url(), autocommit=True)

    def start_farm(self) -> None:
        env = {"REDIS_URL": self.redis.url, "DATABASE_URL": self.db_url(self.proxy.port).replace(
            "postgresql://", "postgresql+psycopg://"), "VIDFARM_CHUNK_SECONDS": str(CHUNK_S)}
        # Assigned before it starts: its first connections are attributed to its processes.
        self.farm = LocalFarm(self.work / "home", min_workers=WORKERS, max_workers=WORKERS, scale_down_after_s=600,
                              env=env)
        self.farm.start()
        wait_until(lambda: len(self.stats.keys(PREFIX + "*")) >= WORKERS, 60, what="workers registered")

    def stop_farm(self) -> None:
        if self.farm is not None:
            self.farm.stop()
            self.leftovers, self.farm = len(self.farm.leftovers), None

    def close(self) -> None:
        """Whatever `open` got to: the farm, the counters, redis-server, the throwaway database."""
        self.stop_farm()
        for part in (self.monitor, self.proxy):
            if part is not None:
                part.close()
        self.redis.stop()
        if self.created_db:
            self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    # -- a measured window ------------------------------------------------------------------------

    def measure(self, name: str, action: Callable[[], None]) -> Window:
        before_monitor = self.monitor.mark(self.stats, f"{name}-start")
        self.stats.config_resetstat()
        before_sql, before_cpu, started = self.proxy.snapshot(), self.cpu(), time.monotonic()
        action()
        wall = time.monotonic() - started
        after_monitor = self.monitor.mark(self.stats, f"{name}-end")
        stats = self.stats.info("commandstats")
        sql, after_cpu = self.proxy.snapshot() - before_sql, self.cpu()
        commands = {k.removeprefix("cmdstat_"): v for k, v in stats.items()}
        cpu = Counter({"redis": after_cpu["redis"] - before_cpu["redis"],
                       "pg": sum(s - before_cpu.get(k, 0.0) for k, s in after_cpu.items() if k != "redis")})
        return Window(name, wall, Counter({k: v["calls"] for k, v in commands.items() if k not in BENCH_ONLY}),
                      {k: v["usec_per_call"] for k, v in commands.items()},
                      Counter({k: v for k, v in (after_monitor - before_monitor).items() if k[0] != "bench"}), sql, cpu)

    def redis_connections(self) -> Counter[str]:
        """Connections open now, by the role of the process holding them (ours left out)."""
        ports = [int(c["addr"].rsplit(":", 1)[1]) for c in self.stats.client_list()]
        return Counter(role for role in map(self.monitor.roles, ports) if role != "bench")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of redis-server ("redis") and of each backend serving the database (by pid)."""
        with self.db() as conn:
            backends = [pid for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.db_name,)).fetchall()]
        return {"redis": cpu_s(self.redis.proc.pid), **{str(pid): cpu_s(pid) for pid in backends}}


def cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- a batch of videos ------------------------------------------------------------------------------


def run_batch(rig: Rig, batch: Batch, clip: Path, count: int) -> Window:
    results: dict[str, float] = {}
    ids: list[str] = []

    def one() -> None:
        with rig.farm.client() as http:
            started = time.perf_counter()
            video_id = upload_file(http, clip)["id"]
            ids.append(video_id)
            if batch.watch != "none":
                WATCHERS[batch.watch](http, video_id)
                results[video_id] = time.perf_counter() - started

    def action() -> None:
        threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if batch.watch == "none":
            wait_until(lambda: all_terminal(rig, ids), 300, poll_s=0.2, what="videos finished")
        if len(ids) != count or (batch.watch != "none" and len(results) != count):
            raise RuntimeError(f"{batch.name}: {len(ids)} uploaded, {len(results)} watched to the end")
        time.sleep(SETTLE_S)

    window = rig.measure(batch.name, action)
    window.videos, window.ready_s, window.watch = count, list(results.values()), batch.watch
    window.chunks, window.chunk_s, window.busy_s = job_seconds(rig, ids)
    return window


def watch_sse(http: httpx.Client, video_id: str) -> None:
    """One Server-Sent Events stream, read until the video is ready (the web console's way)."""
    with http.stream("GET", f"/v1/videos/{video_id}/events", timeout=httpx.Timeout(30, read=300)) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("status") in TERMINAL:
                return
    raise RuntimeError(f"event stream of {video_id} ended before the video did")


def watch_poll(http: httpx.Client, video_id: str) -> None:
    """GET the video every 0.5 s until it is done (what `vidfarm upload --wait` does)."""
    while http.get(f"/v1/videos/{video_id}").json()["status"] not in TERMINAL:
        time.sleep(POLL_S)


WATCHERS: dict[str, Callable[[httpx.Client, str], None]] = {"sse": watch_sse, "poll": watch_poll}


def all_terminal(rig: Rig, ids: list[str]) -> bool:
    """Read straight from the database (not through the proxy): the bench's polls are not counted."""
    with rig.db() as conn:
        rows = conn.execute("SELECT status FROM videos WHERE id = ANY(%s)", (ids,)).fetchall()
    return len(rows) == len(ids) and all(status in TERMINAL for (status,) in rows)


def job_seconds(rig: Rig, ids: list[str]) -> tuple[float, float, float]:
    """(chunks, chunk-encode seconds, seconds of every job) per video, from RQ's job records."""
    with rig.db() as conn:
        tasks = conn.execute("SELECT kind, job_id FROM tasks WHERE video_id = ANY(%s)", (ids,)).fetchall()
    jobs = Job.fetch_many([job_id for _, job_id in tasks], connection=rig.rq)
    spans = [(kind, (job.ended_at - job.started_at).total_seconds()) for (kind, _), job in zip(tasks, jobs, strict=True)
             if job is not None and job.started_at and job.ended_at]
    chunks = sum(1 for kind, _ in tasks if kind == "chunk")
    return (chunks / len(ids), sum(s for kind, s in spans if kind == "chunk") / len(ids),
            sum(s for _, s in spans) / len(ids))


# -- time cost on this machine ----------------------------------------------------------------------


def redis_overhead_us(rig: Rig, seconds: float) -> tuple[float, dict[str, float]]:
    """Per-command cost beyond execution (reading, parsing, replying: what PING is made of), from
    redis-benchmark at 50 clients, and requests/s of a few commands the farm sends most."""
    payload = json.dumps({"type": "progress", "id": uuid.uuid4().hex, "progress": 42.5})
    rig.stats.set("bench:video", "x" * 1500)
    commands = {"PING": ["PING"], "EXISTS": ["EXISTS", "bench:cancel"], "GET": ["GET", "bench:video"],
                "DEL": ["DEL", "bench:gone"], "PUBLISH": ["PUBLISH", "bench:events", payload]}
    rates, ping_usec = {}, 0.0
    for name, args in commands.items():
        rig.stats.config_resetstat()
        rates[name] = _redis_benchmark(rig.redis.port, args, seconds)
        if name == "PING":
            ping_usec = rig.stats.info("commandstats")["cmdstat_ping"]["usec_per_call"]
    return 1e6 / rates["PING"] - ping_usec, rates


def _redis_benchmark(port: int, args: list[str], seconds: float) -> float:
    """requests/s of one command, 50 clients, no pipelining; about `seconds` long."""
    probe = _run_redis_benchmark(port, args, 20000)
    requests = max(20000, int(probe * seconds))
    return _run_redis_benchmark(port, args, requests)


def _run_redis_benchmark(port: int, args: list[str], requests: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests), "-q", "--csv", *args],
                         capture_output=True, text=True, check=True).stdout
    # The command is quoted without escaping its own quotes: count the fields from the right.
    return float(out.strip().splitlines()[-1].rsplit(",", 7)[1].strip('"'))


# The app's shapes: the pool's pre-ping (a round trip of its own), then a transaction of one statement.
PGBENCH_READ = """\\set n random(1, {rows})
SELECT 1;
BEGIN;
SELECT * FROM videos WHERE id = lpad(:n::text, 32, '0');
ROLLBACK;
"""
PGBENCH_WRITE = """\\set n random(1, {rows})
SELECT 1;
BEGIN;
UPDATE tasks SET done_frames = done_frames + 1, updated_at = now()
  WHERE video_id = lpad(:n::text, 32, '0') AND name = 'chunk-00000' AND status = 'running';
COMMIT;
"""
PG_ROWS = 20000


def pg_rates(rig: Rig, work: Path, seconds: float) -> dict[str, float]:
    """Transactions/s of the app's read and write shapes under pgbench (8 clients, 2 threads), on
    PG_ROWS synthetic videos copied from a real one (ids that pgbench can draw: zero-padded numbers)."""
    fill_synthetic(rig)
    rates = {}
    for name, script in (("read", PGBENCH_READ), ("write", PGBENCH_WRITE)):
        path = work / f"pgbench-{name}.sql"
        path.write_text(script.format(rows=PG_ROWS))
        cmd = ["pgbench", "-n", "-M", "extended", "-c", "8", "-j", "2", "-T", str(max(1, round(seconds))),
               "-f", str(path), "-h", rig.pg_host, "-p", str(rig.pg_port), "-U", "postgres", rig.db_name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rates[name] = float(next(line for line in out.splitlines() if line.startswith("tps")).split()[2])
    return rates


def fill_synthetic(rig: Rig) -> None:
    with rig.db() as conn:
        for table_name, key in (("videos", "id"), ("tasks", "video_id")):
            cols = [c for (c,) in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
                (table_name,)).fetchall() if c not in (key, "name", "status")]
            fixed = {"videos": ["status"], "tasks": ["name", "status"]}[table_name]
            values = {"videos": ["'processing'"], "tasks": ["'chunk-00000'", "'running'"]}[table_name]
            source = "videos" if table_name == "videos" else "tasks WHERE kind = 'chunk'"
            conn.execute(
                f"INSERT INTO {table_name} ({key}, {', '.join(fixed + cols)}) "
                f"SELECT lpad(g::text, 32, '0'), {', '.join(values + cols)} "
                f"FROM (SELECT * FROM {source} LIMIT 1) AS one, generate_series(1, {PG_ROWS}) AS g")
        conn.execute("ANALYZE")


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.load:
        pickle.loads(args.load.read_bytes()).print()
        return
    with temp_dir("bench-control-plane-") as work:
        clips = {b.clip_name: make_clip(work / "clips" / b.clip_name, b.seconds, size=b.size) for b in BATCHES}
        rig = Rig(work, args.pg)
        try:
            rig.open().start_farm()
            warm_up(rig, clips)
            idle = rig.measure("idle", lambda: time.sleep(args.idle_s))
            print(f"idle: {sum(idle.redis.values())} Redis commands in {idle.wall_s:.1f} s", flush=True)
            windows = []
            for batch in BATCHES:
                windows.append(run_batch(rig, batch, clips[batch.clip_name], args.videos))
                print(f"{batch.name}: {windows[-1].wall_s:.1f} s", flush=True)
            roles = Counter(role_of(pid) for pid in rig.farm_pids())
            connections = {"Redis": rig.redis_connections(), "PostgreSQL": rig.proxy.connections()}
            rig.stop_farm()
            overhead_us, redis_rates = redis_overhead_us(rig, args.bench_s)
            pg = pg_rates(rig, work, args.bench_s)
        finally:
            rig.close()
    report = Report(args, idle, windows, roles, overhead_us, redis_rates, pg, rig.leftovers, connections)
    if args.save:
        args.save.write_bytes(pickle.dumps(report))
    report.print()


def warm_up(rig: Rig, clips: dict[str, Path]) -> None:
    """One video of each kind first: connection pools, prepared statements and RQ's worker records
    reach their steady state before anything is counted."""
    with rig.farm.client() as http:
        for clip in clips.values():
            watch_sse(http, upload_file(http, clip)["id"])
    time.sleep(SETTLE_S)


# -- report -----------------------------------------------------------------------------------------


WRITES = ("insert", "update", "delete")
READS = ("select", "select for update")


def sql_groups(per: dict[tuple[str, str, str], float]) -> dict[str, float]:
    kinds: dict[str, float] = defaultdict(float)
    for (_, kind, _), n in per.items():
        kinds[kind] += n
    return {"writes": sum(kinds[k] for k in WRITES), "reads": sum(kinds[k] for k in READS),
            "transactions": kinds["commit"] + kinds["rollback"], "commits": kinds["commit"],
            "rollbacks": kinds["rollback"], "pings": kinds["ping"], "round trips": kinds["round trip"],
            "statements": sum(n for k, n in kinds.items() if k != "round trip")}


def least_squares(rows: list[list[float]], values: list[float]) -> list[float]:
    """Coefficients minimising the squared error (the normal equations, by Gaussian elimination)."""
    n = len(rows[0])
    m = [[sum(r[i] * r[j] for r in rows) for j in range(n)] + [sum(r[i] * v for r, v in zip(rows, values, strict=True))]
         for i in range(n)]
    for i in range(n):
        pivot = max(range(i, n), key=lambda r: abs(m[r][i]))
        m[i], m[pivot] = m[pivot], m[i]
        for r in range(n):
            if r != i:
                f = m[r][i] / m[i][i]
                m[r] = [a - f * b for a, b in zip(m[r], m[i], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def top(counts: Counter[str], per: float, n: int = 3) -> str:
    return ", ".join(f"{what} {count / per:.2f}" for what, count in counts.most_common(n))


def per_s(ms_per_video: float) -> float | str:
    """Uploads per second that keep a server at UTILISATION, given its milliseconds per upload."""
    return UTILISATION * 1000 / ms_per_video if ms_per_video > 0 else "-"


@dataclass
class Shape:
    """A video as the model sees it."""

    chunks: float
    encode_s: float  # chunk-encode seconds
    active_s: float = 0.0  # accepted -> ready: how long the reconciler looks at it

    def terms(self) -> list[float]:
        return [1.0, self.chunks, self.encode_s]


# Long uploads at the defaults (60 s chunks; x264 at about 1 worker-second per second of 1080p+720p,
# the assumption bench/autoscale_sim.py makes), each accepted -> ready in about two chunk lengths.
EXAMPLES = (("10 min upload: 10 chunks, 600 encode-s", Shape(10, 600.0, 120.0)),
            ("1 h upload: 60 chunks, 3600 encode-s", Shape(60, 3600.0, 120.0)))
RQ_PURPOSE = "RQ queue, jobs, registries"
# Senders, fitted apart: each is driven by something else (see Report.model).
WORKER, API, UP = ("worker",), ("api",), ("up",)


@dataclass
class Report:
    args: argparse.Namespace
    idle: Window
    windows: list[Window]
    roles: Counter[str]
    overhead_us: float
    redis_rates: dict[str, float]
    pg: dict[str, float]
    leftovers: int
    connections: dict[str, Counter[str]] = field(default_factory=dict)  # server -> role -> open connections

    def print(self) -> None:
        print(f"\n{machine()}; farm: vidfarm up, {WORKERS} workers (x264), VIDFARM_CHUNK_SECONDS={CHUNK_S}, "
              f"{self.args.videos} videos per batch, idle window {self.idle.wall_s:.0f} s; "
              f"processes left behind: {self.leftovers}\n")
        self.per_batch()
        self.by_key("Redis commands per video by command (INFO commandstats)", "redis", lambda k: [k],
                    ["command"], extra=("usec/call", self.usec))
        self.by_key("Redis commands per video by sender and purpose (MONITOR)", "monitor", lambda k: [k[0], k[1]],
                    ["process", "purpose"])
        self.by_key("PostgreSQL statements per video by sender (counting proxy)", "sql",
                    lambda k: [k[0], f"{k[1]} {k[2]}".strip()], ["process", "statement"],
                    skip=lambda k: k[1] == "round trip")
        self.background()
        seen = sum(sum(w.monitor.values()) for w in [self.idle, *self.windows])
        counted = sum(sum(w.redis.values()) for w in [self.idle, *self.windows])
        print(f"(check: MONITOR saw {seen} farm commands in all windows, INFO commandstats counted {counted})")
        self.capacity(*self.model())

    # -- per video ----------------------------------------------------------------------------

    def per(self, w: Window, counts: str) -> dict:
        return w.per_video(self.idle, counts)

    def quantities(self, w: Window, roles: tuple[str, ...] | None = None) -> dict[str, float]:
        """Per video, from what `roles` sent (every process when None)."""
        mine = (lambda k: True) if roles is None else (lambda k: k[0] in roles)
        redis_calls = {k: n for k, n in self.per(w, "monitor").items() if mine(k)}
        checks = {k: n for k, n in redis_calls.items() if k[1] == RQ_PURPOSE and k[2] == "HGET"}
        sql = sql_groups({k: n for k, n in self.per(w, "sql").items() if mine(k)})
        return {"Redis commands": sum(redis_calls.values()), "Redis ms": self.redis_ms(redis_calls),
                "RQ HGET": sum(checks.values()), "RQ HGET ms": self.redis_ms(checks),
                "SQL writes": sql["writes"], "SQL reads": sql["reads"], "PG transactions": sql["transactions"],
                "pings": sql["pings"], "PG round trips": sql["round trips"], "PG ms": 1000 * self.pg_s(sql)}

    def work(self, w: Window) -> dict[str, float]:
        """What the workers do per video, RQ's dependency checks left out (fitted apart)."""
        q = self.quantities(w, WORKER)
        q["Redis commands"] -= q.pop("RQ HGET")
        q["Redis ms"] -= q.pop("RQ HGET ms")
        return q

    def per_batch(self) -> None:
        rows = []
        for w in self.windows:
            cpu = self.per(w, "cpu")
            q = self.quantities(w)
            q.pop("RQ HGET ms")
            rows.append([w.name, w.chunks, w.chunk_s, mean(w.ready_s) if w.ready_s else "-", *q.values(),
                         1000 * cpu.get("redis", 0.0), 1000 * cpu.get("pg", 0.0)])
        print("Per video (background subtracted; ms = modelled server time, CPU = measured in the run):")
        headers = [{"RQ HGET": "of which RQ HGET"}.get(k, k) for k in self.quantities(self.windows[0])
                   if k != "RQ HGET ms"]
        print(table(["batch", "chunks", "chunk-encode s", "upload->ready s", *headers, "redis-server CPU ms",
                     "PG backends CPU ms"], rows))

    def by_key(self, title: str, counts: str, label: Callable, headers: list[str],
               skip: Callable = lambda _: False, extra: tuple[str, Callable] | None = None) -> None:
        grouped = []
        for w in self.windows:
            g: dict[tuple, float] = defaultdict(float)
            for k, n in self.per(w, counts).items():
                if not skip(k):
                    g[tuple(label(k))] += n
            grouped.append(g)
        keys = sorted({k for g in grouped for k in g}, key=lambda k: -grouped[2].get(k, 0))
        rows = [[*k, *(g.get(k, 0.0) for g in grouped), *([extra[1](k[0])] if extra else [])] for k in keys
                if max(abs(g.get(k, 0)) for g in grouped) >= 0.5]
        print(f"\n{title}, background subtracted:")
        print(table([*headers, *(w.name for w in self.windows), *([extra[0]] if extra else [])], rows))

    def background(self) -> None:
        redis_by: dict[str, Counter[str]] = defaultdict(Counter)
        for (role, purpose, _), n in self.idle.monitor.items():
            redis_by[role][purpose] += n
        sql_by: dict[str, Counter[str]] = defaultdict(Counter)
        for (role, kind, tbl), n in self.idle.sql.items():
            if kind != "round trip":
                sql_by[role][f"{kind} {tbl}".strip()] += n
        rows = []
        for role in sorted(set(redis_by) | set(sql_by)):
            per_s = self.idle.wall_s * max(1, self.roles.get(role, 1))
            rows.append([role, self.roles.get(role, 0), sum(redis_by[role].values()) / per_s,
                         sum(sql_by[role].values()) / per_s, top(redis_by[role], per_s), top(sql_by[role], per_s)])
        print(f"\nBackground with nothing uploaded, per process per second ({self.idle.wall_s:.0f} s idle):")
        print(table(["process", "processes", "Redis commands/s", "SQL statements/s", "Redis: most", "SQL: most"],
                    rows))
        for server, by_role in getattr(self, "connections", {}).items():  # (runs saved before it was kept)
            print(f"{server} connections open after the batches, per process: " + ", ".join(
                f"{role} {n / max(1, self.roles.get(role, 1)):g}" for role, n in sorted(by_role.items())))
        print(f"(whole farm: {sum(self.idle.redis.values()) / self.idle.wall_s:.2f} Redis commands/s by INFO "
              f"commandstats; redis-server CPU {1000 * self.idle.cpu['redis'] / self.idle.wall_s:.1f} ms/s, "
              f"PostgreSQL backends {1000 * self.idle.cpu['pg'] / self.idle.wall_s:.1f} ms/s)")

    # -- model --------------------------------------------------------------------------------

    def usec(self, command: str) -> float:
        if command == "exec":
            return self.usec("multi")  # EXEC's time includes the commands it ran, each counted on its own
        calls = [w.usec[command] for w in self.windows if command in w.usec]
        return median(calls) if calls else 0.0

    def redis_ms(self, calls: dict[tuple[str, str, str], float]) -> float:
        return sum(n * (self.usec(k[2].lower()) + self.overhead_us) for k, n in calls.items()) / 1000

    @property
    def pg_costs(self) -> tuple[float, float]:
        """(seconds per round trip, extra seconds per write transaction: the row change and the WAL flush
        at COMMIT), from pgbench's two shapes of 4 round trips each."""
        round_trip = 1 / (4 * self.pg["read"])
        return round_trip, 1 / self.pg["write"] - 4 * round_trip

    def pg_s(self, sql: dict[str, float]) -> float:
        round_trip, commit = self.pg_costs
        return sql["round trips"] * round_trip + sql["commits"] * commit

    def model(self) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
        """Each sender fitted to what drives it: the workers to the video's chunks and encode seconds, the
        API (the upload, then the SSE stream) and `up` (autoscaler, reconciler) to how long it is active."""
        fitted = self.windows[:FITTED]
        workers = {name: least_squares([Shape(w.chunks, w.chunk_s).terms() for w in fitted],
                                       [self.work(w)[name] for w in fitted])
                   for name in self.work(fitted[0])}
        # RQ's dependency check, alone: HGET of every dependency's status each time one of them finishes.
        checks = {name: least_squares([[1.0, (w.chunks + 1) ** 2] for w in fitted],
                                      [self.quantities(w, WORKER)[name] for w in fitted])
                  for name in ("RQ HGET", "RQ HGET ms")}
        for name, check in zip(("Redis commands", "Redis ms"), checks.values(), strict=True):
            workers[name] = [workers[name][0] + check[0], workers[name][1], check[1], workers[name][2]]
        for coef in workers.values():
            if len(coef) == 3:
                coef.insert(2, 0.0)
        # The API enqueues every job (per chunk) and serves the watcher while the video is active.
        api = {name: least_squares([[1.0, w.chunks, mean(w.ready_s)] for w in fitted],
                                   [self.quantities(w, API)[name] for w in fitted]) for name in workers}
        up = {name: least_squares([[1.0, mean(w.ready_s)] for w in fitted],
                                  [self.quantities(w, UP)[name] for w in fitted]) for name in workers}
        print(f"\nFit over the {FITTED} SSE batches (least squares), per video = workers: a + b x chunks + "
              "q x (chunks + 1)^2 + c x chunk-encode seconds (q: RQ's dependency check, its HGETs fitted alone); "
              "API: u + b x chunks + r x seconds from upload to ready; up: u + r x seconds from upload to ready")
        print(table(["quantity", "workers a", "b (per chunk)", "q", "c (per encode s)", "API u", "API b", "API r",
                     "up u", "up r"], [[name, *coef, *api[name], *up[name]] for name, coef in workers.items()]))
        self.watchers()
        rates = ", ".join(f"{k} {v:,.0f}/s" for k, v in self.redis_rates.items())
        print(f"\nredis-benchmark (50 clients, no pipelining): {rates}; per-command cost beyond execution "
              f"{self.overhead_us:.1f} us")
        round_trip, commit = self.pg_costs
        print(f"pgbench (8 clients, 2 threads, on the same cores): read transaction {self.pg['read']:,.0f}/s, "
              f"write transaction {self.pg['write']:,.0f}/s: {1e6 * round_trip:.0f} us per round trip, "
              f"{1e6 * commit:.0f} us more per write transaction")
        return workers, api, up

    def watchers(self) -> None:
        """What a client following its video adds: the SSE stream per video, polling per second. The API
        alone serves them, so only its counts are compared (the workers' heartbeats would add noise)."""
        by = {w.watch: self.quantities(w, API) | {"watch_s": mean(w.ready_s) if w.ready_s else 0.0}
              for w in [self.windows[0], *self.windows[FITTED:]]}  # the same small clip, watched differently
        keys = ("Redis commands", "SQL reads", "PG transactions")
        none = by.get("none")
        if none is None:
            return
        if "sse" in by:
            print("an SSE stream per video adds: " + ", ".join(f"{k} {by['sse'][k] - none[k]:+.1f}" for k in keys))
        if "poll" in by and by["poll"]["watch_s"] > 0:
            poll = by["poll"]
            print(f"polling every {POLL_S:g} s adds, per second watched: " + ", ".join(
                f"{k} {(poll[k] - none[k]) / poll['watch_s']:+.2f}" for k in keys))

    def capacity(self, workers: dict[str, list[float]], api: dict[str, list[float]],
                 up: dict[str, list[float]]) -> None:
        cases = [(f"{self.windows[0].name} (measured)", self.quantities(self.windows[0]))]
        for label, shape in EXAMPLES:
            terms = [1.0, shape.chunks, (shape.chunks + 1) ** 2, shape.encode_s]
            cases.append((label, {k: sum(c * t for c, t in zip(coef, terms, strict=True))
                                  + api[k][0] + api[k][1] * shape.chunks + api[k][2] * shape.active_s
                                  + up[k][0] + up[k][1] * shape.active_s for k, coef in workers.items()}))
        rows = [[label, q["Redis commands"], q["Redis ms"], per_s(q["Redis ms"]), q["SQL writes"],
                 q["PG transactions"], q["PG ms"], per_s(q["PG ms"])] for label, q in cases]
        print(f"\nCapacity at {UTILISATION:.0%} of one Redis (one core) and one PostgreSQL on this machine (SSE "
              f"watcher included; encode-s = chunk-encode seconds; examples active {EXAMPLES[0][1].active_s:g} s):")
        print(table(["video", "Redis commands", "Redis ms", "uploads/s per Redis", "SQL writes", "PG transactions",
                     "PG ms", "uploads/s per PostgreSQL"], rows))
        print(f"each chunk while it encodes: {workers['Redis commands'][3]:.1f} Redis commands/s, "
              f"{workers['PG transactions'][3]:.2f} PG transactions/s; at {UTILISATION:.0%}, one Redis keeps up "
              f"with {per_s(workers['Redis ms'][3]):,.0f} chunks encoding at once, one PostgreSQL with "
              f"{per_s(workers['PG ms'][3]):,.0f}")


if __name__ == "__main__":
    main()
