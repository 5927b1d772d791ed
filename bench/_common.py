"""Helpers shared by the benchmarks: clips, timing, /proc scanning, a private farm, tables.

Everything here runs real binaries (ffmpeg, redis-server, `vidfarm up`) in temporary directories;
nothing touches the developer's own `.vidfarm`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import httpx
import redis

from transcoder.command import (
    X264,
    Encoder,
    audio_args,
    chunk_args,
    concat_list,
    poster_args,
    segment_args,
    stitch_args,
)
from transcoder.job import first_frame, segment_seconds
from transcoder.ladder import OutputPlan, plan_outputs, poster_size, rungs_named
from vidfarm.chunks import ChunkSpan, chunk_window, output_fps, plan_chunks
from vidfarm.jobs import chunk_name
from vidfarm.localredis import free_port
from vidfarm.presence import PREFIX
from vidfarm.probe import SourceInfo, probe
from vidfarm.rungs import stream_only
from vidfarm.settings import Settings
from vidfarm.states import TERMINAL

ROOT = Path(__file__).resolve().parents[1]
VIDFARM = [sys.executable, "-m", "vidfarm"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A chunk length no video reaches: chunk_plan then gives one chunk, as the farm planned before issue 13
# (the farm itself always cuts a short first chunk now; infinity would not survive the rounding).
ONE_CHUNK_S = 1e9


def chunk_plan(duration_s: float, fps: Fraction, chunk_s: float, workers: int = 1) -> list[ChunkSpan]:
    """The farm's chunk plan for a pool of `workers`; the whole video as one chunk for ONE_CHUNK_S."""
    if chunk_s >= ONE_CHUNK_S:
        return [ChunkSpan(0, 0, None)]
    return plan_chunks(duration_s, fps, chunk_s, workers)


# -- clips --------------------------------------------------------------------------------------


def make_clip(path: Path, seconds: float, *, size: str = "1920x1080", rate: int = 30, audio: bool = True,
              encode: Sequence[str] = ("-preset", "ultrafast")) -> Path:
    """testsrc2 (+ a sine tone) encoded with x264 (ultrafast unless `encode` says otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", *encode, "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


# -- the worker's ffmpeg commands, run directly -------------------------------------------------


WHOLE_VIDEO = ChunkSpan(0, 0, None)  # the video as one chunk: frame 0 to the end


def chunk_command(source: Path, info: SourceInfo, outputs: Sequence[tuple[OutputPlan, Path]], span: ChunkSpan,
                  encoder: Encoder = X264) -> list[str]:
    """The ffmpeg a chunk job runs for `span` (video only, every output from one decode), built
    exactly as transcoder.job.ChunkAttempt builds it. For WHOLE_VIDEO the window is
    `ChunkWindow(seek_s=0.0, grid_start_frame=<first frame>, skip_frames=0)`."""
    fps = outputs[0][0].fps
    window = chunk_window(span, fps, first_frame({"start_s": info.start_s}, fps), info.file_start_s)
    return ["ffmpeg", *chunk_args(source, outputs, window=window, frames=span.frames, encoder=encoder,
                                  deinterlace=info.interlaced, hdr_transfer=info.hdr_transfer)]


def audio_command(source: Path, info: SourceInfo, plans: Sequence[OutputPlan], target: Path) -> list[str]:
    """The audio job's ffmpeg: the whole track once, lined up with the first frame (AudioAttempt)."""
    fps = plans[0].fps
    start_s = float(Fraction(first_frame({"start_s": info.start_s}, fps)) / fps)
    return ["ffmpeg", *audio_args(source, target, start_s=start_s)]


@dataclass(frozen=True)
class GraphCommands:
    """Every ffmpeg of one video's job graph, in the order the worker runs them; finalize's are split
    into stitching (one MP4 per rung) and packaging (CMAF segments) so they can be timed apart."""

    chunks: list[list[str]]
    audio: list[list[str]]
    stitch: list[list[str]]
    package: list[list[str]]
    poster: list[list[str]]
    renditions: dict[str, Path]  # rung -> stitched MP4

    @property
    def all(self) -> list[list[str]]:
        return [*self.chunks, *self.audio, *self.stitch, *self.package, *self.poster]


def graph_commands(source: Path, info: SourceInfo, plans: Sequence[OutputPlan], folder: Path, *,
                   chunk_s: float, encoder: Encoder = X264, spans: Sequence[ChunkSpan] | None = None) -> GraphCommands:
    """The commands of transcoder.job for one video with `chunk_s` chunks (or the given `spans`),
    writing under `folder` (created, with the concat lists the stitch reads)."""
    spans = spans or chunk_plan(info.duration_s, output_fps(info.fps), chunk_s)
    parts = [folder / chunk_name(span.index) for span in spans]
    chunks = []
    for span, part in zip(spans, parts, strict=True):
        part.mkdir(parents=True, exist_ok=True)
        chunks.append(chunk_command(source, info, [(p, part / f"{p.name}.mp4") for p in plans], span, encoder))
    audio = folder / "audio.m4a" if info.has_audio else None
    stitch, package, renditions = [], [], {}
    for plan in plans:
        listing = folder / f"{plan.name}.txt"
        listing.write_text(concat_list([part / f"{plan.name}.mp4" for part in parts]))
        renditions[plan.name] = folder / f"{plan.name}.mp4"
        sound = audio if plan.download else None  # a stream-only rung is stitched for its segments only
        stitch.append(["ffmpeg", *stitch_args(listing, sound, renditions[plan.name])])
        package.append(_segment_command(renditions[plan.name], "v:0", folder / "stream" / plan.name, plans[0]))
    if audio is not None:
        package.append(_segment_command(audio, "a:0", folder / "stream" / "audio", plans[0]))
    width, height = poster_size(info)
    poster = ["ffmpeg", *poster_args(source, folder / "poster.jpg", at_s=min(info.duration_s * 0.1, 5.0),
                                     width=width, height=height)]
    return GraphCommands(chunks, [audio_command(source, info, plans, audio)] if audio else [], stitch, package,
                         [poster], renditions)


def _segment_command(media: Path, stream: str, folder: Path, plan: OutputPlan) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return ["ffmpeg", *segment_args(media, stream, folder, segment_seconds(plan))]


def source_info(path: Path) -> SourceInfo:
    """ffprobe as the API does, without its upload limits."""
    return probe(path, max_duration_s=1e9, max_pixels=1 << 40)


def ladder_plans(info: SourceInfo, rungs: Sequence[str] | None = None,
                 stream_rungs: Sequence[str] | None = None) -> list[OutputPlan]:
    """The outputs a worker plans for this source: the farm's ladder and stream-only rungs, unless
    `rungs` (downloads) names them; then `stream_rungs` (none unless given) are the stream-only ones."""
    settings = Settings.from_env()
    if rungs:
        downloads, streamed = list(rungs), list(stream_rungs or ())
    else:
        downloads, streamed = list(settings.ladder), list(stream_only(settings.ladder, settings.stream_rungs))
    return plan_outputs(info, rungs_named(downloads), rungs_named(streamed))


# -- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    wall_s: float
    cpu_s: float

    def __add__(self, other: Measure) -> Measure:
        return Measure(self.wall_s + other.wall_s, self.cpu_s + other.cpu_s)


def run_measured(cmd: Sequence[str]) -> Measure:
    """Run a command to completion; wall time and the child's own user+sys CPU (from wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd))
    return Measure(wall, usage.ru_utime + usage.ru_stime)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100), exact for small samples."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# -- /proc --------------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    parents = {pid: parent_of(pid) for pid in all_pids()}
    found: list[int] = []
    frontier = [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == current]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def now() -> float:
    """CLOCK_BOOTTIME: the clock /proc/PID/stat start times count in."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def start_time(pid: int) -> float | None:
    """When the process was forked, in `now()` seconds (resolution 1/CLK_TCK, 10 ms)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19]) / CLK_TCK


@dataclass(frozen=True)
class Seen:
    pid: int
    label: str
    seen_at: float       # now() when the watcher first saw it match
    started_at: float    # its fork time from /proc, 10 ms resolution


class ProcWatcher(threading.Thread):
    """Polls /proc for new processes that `match` (pid, argv) -> label, recording when each appeared.

    A new pid is re-read for a second, so a fork that has not exec'd yet is classified once it has.
    Processes that exist when the watcher starts are ignored."""

    def __init__(self, match: Callable[[int, list[str]], str | None], every_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.match, self.every_s = match, every_s
        self.found: list[Seen] = []
        self._first: dict[int, float] = {}
        self._done: set[int] = set(all_pids())
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        t = now()
        for pid in all_pids():
            if pid in self._done:
                continue
            if t - self._first.setdefault(pid, t) > 1.0:
                self._done.add(pid)
                continue
            label = self.match(pid, cmdline(pid))
            started = start_time(pid)
            if label is not None and started is not None:
                self.found.append(Seen(pid, label, t, started))
                self._done.add(pid)

    def first(self, contains: str) -> Seen | None:
        return next((s for s in list(self.found) if contains in s.label), None)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds of a `vidfarm up` tree split by role; a role's `+children` is what its reaped
    children (ffmpeg, ffprobe) used."""
    roles: dict[str, float] = {}
    for pid in [root, *descendants(root)]:
        args = cmdline(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own, reaped = (int(fields[11]) + int(fields[12])) / CLK_TCK, (int(fields[13]) + int(fields[14])) / CLK_TCK
        role = _role(pid, root, args)
        roles[role] = roles.get(role, 0.0) + own
        roles[role + " +children"] = roles.get(role + " +children", 0.0) + reaped
    return roles


def _role(pid: int, root: int, args: Sequence[str]) -> str:
    words = " ".join(args).split()
    if pid == root:
        return "up (autoscaler, reconciler)"
    if words and words[0].endswith("redis-server"):
        return "redis"
    if "api" in words and "vidfarm" in words:
        return "api"
    if is_worker(words):
        return "workers"
    return "running children (ffmpeg/ffprobe)"


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user+sys) of a process tree: every live process's own time plus what its reaped
    children used (cutime/cstime), so finished ffmpeg runs of a live worker are counted once."""
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def is_worker(args: Sequence[str]) -> bool:
    return "vidfarm" in args and "worker" in args


# -- HTTP ---------------------------------------------------------------------------------------


def upload_file(http: httpx.Client, path: Path) -> dict:
    """Raw-body upload (what `vidfarm upload` sends); raises on anything but 201."""
    response = http.post("/v1/videos", params={"filename": path.name}, content=path.read_bytes(),
                         headers={"Content-Type": "application/octet-stream"})
    if response.status_code != 201:
        raise RuntimeError(f"upload of {path.name}: {response.status_code} {response.text[:300]}")
    return response.json()


def wait_terminal(http: httpx.Client, ids: Iterable[str], poll_s: float = 0.1,
                  timeout_s: float = 900) -> dict[str, tuple[str, float]]:
    """Poll until every video is ready/failed/canceled: {id: (status, perf_counter when seen)}.

    One list request per poll (newest first, so a batch of up to 200 just uploaded is all there):
    polling each video would itself load a 2-core box and inflate what the farm seems to cost."""
    pending = set(ids)
    if len(pending) > 200:
        raise ValueError("at most 200 videos at a time")
    seen: dict[str, tuple[str, float]] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} video(s) not finished after {timeout_s} s")
        items = http.get("/v1/videos", params={"limit": 200}).json()["items"]
        at = time.perf_counter()
        for video in items:
            if video["id"] in pending and video["status"] in TERMINAL:
                seen[video["id"]] = (video["status"], at)
                pending.discard(video["id"])
        if pending:
            time.sleep(poll_s)
    return seen


# -- a private farm -----------------------------------------------------------------------------


def farm_env(home: Path) -> dict[str, str]:
    """The caller's environment without any vidfarm settings, so `vidfarm up` starts its own Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFARM_")
           and k not in ("REDIS_URL", "DATABASE_URL")}
    env["VIDFARM_HOME"] = str(home)
    return env


class LocalFarm:
    """`vidfarm up` as a subprocess with its own VIDFARM_HOME; stopped with SIGTERM, leaving no process."""

    def __init__(self, home: Path, *, min_workers: int, max_workers: int, scale_down_after_s: float,
                 log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = env or {}  # VIDFARM_ settings for this farm (the caller's own are never passed on)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [*VIDFARM, "up", "--port", str(self.port), "--min-workers", str(min_workers),
                     "--max-workers", str(max_workers), "--scale-down-after", str(scale_down_after_s),
                     "--encoder", "x264"]
        self.log_path = log_path or home.parent / f"{home.name}-up.log"
        self.proc: subprocess.Popen | None = None
        self.leftovers: list[int] = []

    def start(self, timeout_s: float = 60) -> LocalFarm:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, env=farm_env(self.home) | self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vidfarm up exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"vidfarm up not ready after {timeout_s} s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def api_key(self) -> str:
        return (self.home / "api-key").read_text().strip()

    def client(self, timeout_s: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"},
                            timeout=timeout_s)

    def redis_url(self) -> str:
        for pid in descendants(self.pid):
            # redis-server rewrites its title to "redis-server 127.0.0.1:PORT"
            words = " ".join(cmdline(pid)).split()
            if words and words[0].endswith("redis-server"):
                port = words[words.index("--port") + 1] if "--port" in words else words[1].rsplit(":", 1)[1]
                return f"redis://127.0.0.1:{port}/0"
        raise RuntimeError("the farm's redis-server was not found")

    def worker_pids(self) -> list[int]:
        return [pid for pid in descendants(self.pid) if is_worker(cmdline(pid))]

    def wait_workers(self, count: int, timeout_s: float = 60) -> None:
        """Until `count` workers have registered (presence hashes in Redis): ready to take jobs."""
        conn = redis.Redis.from_url(self.redis_url())
        wait_until(lambda: len(conn.keys(PREFIX + "*")) >= count, timeout_s, what=f"{count} workers registered")

    def stop(self, timeout_s: float = 120) -> None:
        """SIGTERM, wait, then check every process the farm had is gone (kill and record any that is not)."""
        if self.proc is None:
            return
        family = descendants(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)
        self.leftovers = [pid for pid in family if alive(pid)]
        for pid in self.leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> LocalFarm:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        if self.leftovers:
            print(f"WARNING: {len(self.leftovers)} process(es) outlived `vidfarm up`: {self.leftovers}",
                  file=sys.stderr)


def wait_until(predicate, timeout_s: float, poll_s: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_s)


# -- output -------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), no GPU, shared VM"


@contextlib.contextmanager
def temp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        if not keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def empty_files(folder: Path) -> None:
    """Deletes every file below `folder`, keeping the folders (a running API still uses them)."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink()


class MotoS3:
    """moto's S3 in server mode as its own process (the one S3-compatible server these machines have),
    with one bucket; `env` is what a vidfarm process or boto3 needs to use it."""

    def __init__(self, bucket: str = "bench") -> None:
        self.port = free_port()
        self.bucket = bucket
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_REGION": "us-east-1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, 30, what="moto's S3 server")
        self.client().create_bucket(Bucket=bucket)

    def _answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url, timeout=1).status_code < 500
        return False

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="bench",
                            aws_secret_access_key="bench")

    def empty(self) -> None:
        """Every object and unfinished upload gone (moto keeps them in memory and temp files)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
