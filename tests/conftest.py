"""Shared fixtures: real Redis, real ffmpeg clips, real databases, the API over real HTTP."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis
import uvicorn

from vidfarm.farm import Farm
from vidfarm.localredis import LocalRedis, free_port
from vidfarm.reconciler import Reconciler
from vidfarm.settings import Settings
from vidfarm.states import TERMINAL, VideoStatus
from vidfarm.storage import StorageLocation

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-" + uuid.uuid4().hex[:8]
OTHER_KEY = "other-key-" + uuid.uuid4().hex[:8]
PG_URL = os.environ.get("VIDFARM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# Clips the tests transcode: (lavfi video, audio?, extra encode args). Short and small keeps CI fast.
CLIPS = {
    "landscape1080": ("testsrc2=size=1920x1080:rate=30:duration=2", True, []),
    "landscape720": ("testsrc2=size=1280x720:rate=25:duration=2", True, []),
    "portrait": ("testsrc2=size=1080x1920:rate=30:duration=2", True, []),
    "noaudio": ("testsrc2=size=1280x720:rate=30:duration=2", False, []),
    "tenbit": ("testsrc2=size=1280x720:rate=30:duration=2", True, ["-pix_fmt", "yuv420p10le", "-profile:v", "high10"]),
    "odd": ("testsrc2=size=853x481:rate=24:duration=2", True, []),
    "small": ("testsrc2=size=320x240:rate=15:duration=1", True, []),
}


T = TypeVar("T")


class FakeClock:
    """A monotonic clock that moves only when a test says so: `clock.now += 10`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def readable_within(sock: socket.socket, timeout_s: float) -> bool:
    """`sock` has something to read (or was closed) within `timeout_s`. poll, not select: a whole
    suite's run holds more than select's 1,024 descriptors, and select refuses a socket above them."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """The server at `url` is up and says so with a 200."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_serving(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until `url` answers 200; fails at once if `proc`, the process that should serve it, exits."""

    def serving() -> bool:
        assert proc.poll() is None, f"exited with status {proc.returncode} before {url} answered"
        return answers(url)

    wait_until(serving, timeout_s, f"{url} to answer")


def make_clip(path: Path, lavfi: str, audio: bool, extra: list[str], codec: str = "libx264") -> Path:
    duration = lavfi.rsplit("duration=", 1)[1]
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", lavfi]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=330:duration={duration}", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", codec, "-preset", "ultrafast", *extra, str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_noise_clip(path: Path, seconds: float) -> Path:
    """A real video that does not compress (lossless noise, about 12 MB a second): big enough to span
    several 8 MiB multipart parts in a short test."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"color=gray:s=640x360:d={seconds},noise=alls=100:allf=t", "-c:v", "libx264",
                    "-preset", "ultrafast", "-qp", "0", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {name: make_clip(folder / f"{name}.mp4", *spec) for name, spec in CLIPS.items()}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"), persistent=False).start()
    yield server
    server.stop()


class MotoS3:
    """moto's S3 in server mode on a free port: the one stand-in, spoken to by the real boto3 over
    HTTP. Its data lives in this process, so a stop and a start on the same port keep the bucket."""

    def __init__(self) -> None:
        # Answer CORS as S3 does, from the bucket's rules (moto otherwise allows every origin).
        os.environ.setdefault("MOTO_DISABLE_GLOBAL_CORS", "1")
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self.running = False

    def start(self) -> MotoS3:
        self.server.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def env(self) -> dict[str, str]:
        # boto3's standard chain: nothing of vidfarm's own. Few attempts keep fault tests short.
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "3"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


BACKENDS = ["file", "s3"]


@pytest.fixture
def backend(request) -> str:
    """`file` unless a test asks for both: `@pytest.mark.parametrize("backend", BACKENDS, indirect=True)`."""
    return getattr(request, "param", "file")


@pytest.fixture
def settings(tmp_path, redis_server, backend, request, monkeypatch) -> Iterator[Settings]:
    # One Redis server for the whole session: each test starts with it empty.
    redis.Redis.from_url(redis_server.url).flushall()
    home = tmp_path / "home"
    base = replace(
        Settings.from_env(),
        home=home,
        redis_url=redis_server.url,
        database_url=f"sqlite:///{home / 'catalog.db'}",
        storage=StorageLocation.directory(tmp_path / "storage"),
        scratch_dir=tmp_path / "scratch",
        api_keys=(API_KEY, OTHER_KEY),
        api_keys_file=None,
        # No stream-only rungs unless a test asks (vidfarm.rungs.DEFAULT_STREAM_RUNGS): they add a
        # quarter to every 1080p encode and four fifths to every 720p one; most tests are about other things.
        stream_rungs=(),
    )
    if backend == "file":
        yield base
        return
    moto: MotoS3 = request.getfixturevalue("moto_s3")
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)  # this process and, through settings_env, the workers
    bucket = f"vidfarm-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=bucket)
    moto.client().put_bucket_cors(Bucket=bucket, CORSConfiguration=PLAYER_CORS)
    yield replace(base, storage=StorageLocation.parse(f"s3://{bucket}/media"))
    assert local_files(base.storage.path) == [], "the local storage directory is used with S3"


# The bucket CORS rule deploy/README.md tells operators to set: browser players follow segment
# redirects to presigned URLs, and the bucket must answer them as the API does.
PLAYER_CORS = {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["Range"],
                              "ExposeHeaders": ["Content-Length", "Content-Range", "Accept-Ranges"],
                              "MaxAgeSeconds": 86400}]}


def assert_no_scratch_left(settings: Settings) -> None:
    """Every job removed its local scratch (on S3 they write there, then upload)."""
    assert local_files(settings.scratch) == [], "a job left files on scratch"


def local_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def farm(settings) -> Farm:
    settings.home.mkdir(parents=True, exist_ok=True)
    return Farm(settings)


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.to_env(os.environ)


class ApiServer:
    """The real app under uvicorn in a thread, spoken to over HTTP."""

    def __init__(self, farm: Farm) -> None:
        from uploader.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(farm), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ApiServer:
        self.thread.start()
        wait_until(lambda: answers(self.url + "/healthz"), 15, "the API to start", every_s=0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Downloads from an object store are redirects to presigned URLs: follow them as clients do.
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, follow_redirects=True)


@pytest.fixture
def api(farm) -> Iterator[ApiServer]:
    server = ApiServer(farm).start()
    yield server
    server.stop()


@pytest.fixture
def http(api) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


class WorkerProcess:
    """A real `vidfarm worker` process."""

    def __init__(self, settings: Settings, name: str | None = None, queues: tuple[str, ...] = ("cpu",)) -> None:
        self.name = name or f"test-worker-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "vidfarm", "worker", "--encoder", "x264", "--name", self.name]
        for queue in queues:
            cmd += ["--queue", queue]
        self.proc = subprocess.Popen(cmd, env=settings_env(settings), cwd=ROOT, start_new_session=True)

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_worker(settings) -> Iterator:
    started: list[WorkerProcess] = []

    def _start(**kwargs) -> WorkerProcess:
        worker = WorkerProcess(settings, **kwargs)
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    return start_worker()


def upload(client: httpx.Client, path: Path, **params) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post("/v1/videos", files={"file": (path.name, handle, "video/mp4")}, data=params)


def wait_for(client: httpx.Client, video_id: str, timeout_s: float = 120,
             statuses: Iterable[VideoStatus] = TERMINAL) -> dict:
    """The video once its status is one of `statuses` (by default: once it has ended)."""
    wanted = set(statuses)

    def arrived() -> dict | None:
        video = client.get(f"/v1/videos/{video_id}").json()
        return video if video["status"] in wanted else None

    return wait_until(arrived, timeout_s, f"video {video_id} to be {'/'.join(sorted(wanted))}", every_s=0.2)


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def ffprobe(path: Path, *args: str) -> dict:
    import json

    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", *args, str(path)],
                         capture_output=True, check=True)
    return json.loads(out.stdout)


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


class FarmUp:
    """`vidfarm up` as a subprocess against the test's Redis and catalog, with an HTTP client."""

    def __init__(self, settings: Settings, *flags: str) -> None:
        self.port = free_port()
        # Its own process group, like a shell job: a test can send the group a terminal's Ctrl-C.
        self.proc = subprocess.Popen([sys.executable, "-m", "vidfarm", "up", "--port", str(self.port), *flags],
                                     env=settings_env(settings), cwd=ROOT, start_new_session=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        try:
            wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/readyz"), 30, "vidfarm up to be ready")
        except AssertionError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 60) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout_s)


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # a zombie has stopped running; only its parent's wait is missing


@contextlib.contextmanager
def reconciling(farm: Farm, every_s: float = 0.5) -> Iterator[list[Exception]]:
    """The reconciler loop `vidfarm up` runs, in a thread; yields the errors its passes raised."""
    stop, errors = threading.Event(), []

    def loop() -> None:
        reconciler = Reconciler(farm)
        while not stop.wait(every_s):
            try:
                reconciler.step()
            except Exception as exc:  # noqa: BLE001 - Redis or the database may be away on purpose
                errors.append(exc)

    thread = threading.Thread(target=loop, name="reconciler", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def reconciler(farm) -> Iterator[list[Exception]]:
    with reconciling(farm) as errors:
        yield errors


# Debian's chromium (installed by `make setup` / .ci/run); CHROMIUM=/path/to/chrome to use another build.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Tests in a real browser are skipped only where the browser or node is absent.
NEEDS_BROWSER = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: `make setup` (apt nodejs npm)"),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no {CHROMIUM}: `make setup` (apt chromium)"),
]
