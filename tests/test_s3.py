"""The S3 backend's own behaviour, against moto's S3 in server mode over real HTTP: the store going
away during an upload and during a transcode, throttling (503 SlowDown) absorbed by bounded
retries, start-up refusal with one line, /readyz, the proxy mode, and the sweep of multipart uploads
a dead API left behind."""

from __future__ import annotations

import http.client
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from tests.conftest import (
    ROOT,
    ApiServer,
    MotoS3,
    assert_no_scratch_left,
    make_noise_clip,
    settings_env,
    upload,
    wait_for,
    wait_until,
)
from tests.test_chunk_faults import long_clip, tasks  # noqa: F401 - the 36 s clip fixture
from tests.test_faults import HEARTBEAT_TTL_S
from tests.test_tus import create, patch
from vidfarm.farm import Farm
from vidfarm.localredis import free_port
from vidfarm.reconciler import Reconciler
from vidfarm.storage import StorageLocation, rendition_key, source_key

pytestmark = pytest.mark.parametrize("backend", ["s3"], indirect=True)
MIB = 1024 * 1024


@pytest.fixture
def checksums(request) -> bool:
    """VIDFARM_S3_CHECKSUMS, off unless a test asks: `@pytest.mark.parametrize("checksums", [True], indirect=True)`."""
    return getattr(request, "param", False)


@pytest.fixture
def settings(settings, checksums):
    return replace(settings, chunk_seconds=6.0, ladder=("360p",), worker_heartbeat_ttl_s=HEARTBEAT_TTL_S,
                   s3_checksums=checksums)


def bucket_of(settings) -> str:
    return settings.storage.bucket


def multipart_uploads(moto_s3: MotoS3, settings) -> list[dict]:
    return moto_s3.client().list_multipart_uploads(Bucket=bucket_of(settings)).get("Uploads", [])


def objects(moto_s3: MotoS3, settings) -> list[str]:
    listed = moto_s3.client().list_objects_v2(Bucket=bucket_of(settings))
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.fixture
def restart_moto(moto_s3: MotoS3) -> Iterator[MotoS3]:
    """A test may stop the server; it is running again afterwards, its buckets kept."""
    yield moto_s3
    if not moto_s3.running:
        moto_s3.start()


# -- faults -----------------------------------------------------------------------------------------


def slow_body(total: int, stop_at: int, on_stop) -> Iterator[bytes]:
    """A raw upload body that calls `on_stop` once `stop_at` bytes are out, then keeps sending."""
    sent, chunk = 0, b"\0" * (1024 * 1024)
    while sent < total:
        if sent == stop_at:
            on_stop()
        yield chunk
        sent += len(chunk)


def test_store_gone_during_an_upload_answers_503_and_keeps_nothing(http, farm, settings, restart_moto):
    # Past two 8 MiB parts, so parts are in flight when the store goes away.
    body = slow_body(64 * 1024 * 1024, 24 * 1024 * 1024, restart_moto.stop)
    answer = http.post("/v1/videos", content=body, headers={"Content-Type": "video/mp4"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "storage_unavailable"
    assert "Retry-After" in answer.headers
    restart_moto.start()
    assert http.get("/v1/videos").json()["items"] == []  # nothing was accepted
    # The abort could not reach the store; the row, still `receiving`, lets the reconciler do it.
    assert [v["status"] for v in http.get("/v1/videos", params={"status": "receiving"}).json()["items"]] == [
        "receiving"]
    wait_until(lambda: Reconciler(farm).sweep_receiving(time.time() + 1) >= 0
               and not multipart_uploads(restart_moto, settings), 10, "the multipart upload aborted")
    assert objects(restart_moto, settings) == ["media/.vidfarm-catalog"]  # the marker only
    assert http.get("/v1/videos", params={"status": "receiving"}).json()["items"] == []


def test_store_gone_during_a_resumable_upload_keeps_what_landed(http, farm, settings, restart_moto, tmp_path):
    """A tus PATCH when the store goes away: 503; the parts that landed before stay committed, and
    the client resumes from HEAD's offset once the store is back."""
    data, part = make_noise_clip(tmp_path / "noise.mp4", 2).read_bytes(), farm.storage.part_size
    tus = {"Tus-Resumable": "1.0.0"}
    created = http.post("/v1/uploads", headers={**tus, "Upload-Length": str(len(data))})
    location, video_id = created.headers["Location"], created.headers["Vidfarm-Video-Id"]

    def body() -> Iterator[bytes]:
        for at in range(0, len(data), 1024 * 1024):
            if at == 3 * part:
                restart_moto.stop()
            yield data[at:at + 1024 * 1024]

    patch = {**tus, "Content-Type": "application/offset+octet-stream"}
    cut = http.patch(location, content=body(), headers={**patch, "Upload-Offset": "0"})
    assert (cut.status_code, cut.json()["error"]["code"]) == (503, "storage_unavailable")
    restart_moto.start()
    kept = int(http.head(location, headers=tus).headers["Upload-Offset"])
    assert kept % part == 0 and kept <= 3 * part  # whole parts only: the tail was in memory
    rest = http.patch(location, content=data[kept:], headers={**patch, "Upload-Offset": str(kept)})
    assert rest.status_code == 204, rest.text
    assert http.get(f"/v1/videos/{video_id}").json()["status"] == "queued"
    assert b"".join(farm.storage.read(source_key(video_id), None).chunks) == data


@pytest.mark.slow
def test_store_gone_during_a_transcode_is_retried_not_failed(long_clip, http, farm, settings,  # noqa: F811
                                                            start_worker, reconciler, restart_moto):
    start_worker()
    video_id = upload(http, long_clip).json()["id"]
    wait_until(lambda: any(t.status == "running" for t in tasks(farm, video_id).values()), 30, "a task running")
    restart_moto.stop()
    time.sleep(6)  # long enough for a chunk to finish and fail to upload, through botocore's retries
    restart_moto.start()
    ready = wait_for(http, video_id, timeout_s=180)
    assert ready["status"] == "ready", ready["error"]
    assert max(t.attempts for t in tasks(farm, video_id).values()) >= 2  # a transient failure, run again
    assert http.get(ready["renditions"][0]["url"]).status_code == 200
    assert_no_scratch_left(settings)


SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class SlowDownProxy:
    """Stands before the store and answers the first `refuse` requests 503 SlowDown, as S3 does
    when throttling; everything after goes through to it."""

    def __init__(self, upstream_port: int, refuse: int) -> None:
        self.refuse, self.refused = refuse, 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    refuse = proxy.refused < proxy.refuse
                    proxy.refused += refuse
                if refuse:
                    self.answer(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                reply = upstream.getresponse()
                self.answer(reply.status, dict(reply.getheaders()), reply.read())

            def answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_any

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(("refuse", "status"), [(2, 201), (50, 503)])
def test_slowdown_is_retried_with_backoff_then_503(refuse, status, settings, moto_s3, monkeypatch, clips):
    proxy = SlowDownProxy(moto_s3.port, refuse)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # AWS_MAX_ATTEMPTS=3 (conftest): 2 retries
    settings.home.mkdir(parents=True, exist_ok=True)
    proxy.refuse = 0  # the start-up check goes through
    server = ApiServer(Farm(settings)).start()
    proxy.refuse = refuse
    try:
        with server.client() as client:
            answer = upload(client, clips["small"])
        assert answer.status_code == status, answer.text
        if status == 503:
            assert answer.json()["error"]["code"] == "storage_unavailable"
            # Bounded: 3 attempts at starting the upload, 3 at the clean-up's listing, then the answer.
            assert proxy.refused == 6
        else:
            assert proxy.refused == refuse
    finally:
        server.stop()
        proxy.close()


# -- start-up, readiness, serving -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "api", "up"])
def test_a_missing_bucket_stops_the_process_with_one_line(command, settings):
    wrong = replace(settings, storage=StorageLocation.parse("s3://no-such-bucket-here/media"))
    settings.home.mkdir(parents=True, exist_ok=True)
    port = [] if command == "worker" else ["--port", str(free_port())]
    done = subprocess.run([sys.executable, "-m", "vidfarm", command, *port], env=settings_env(wrong), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no-such-bucket-here" in errors[0] and "Traceback" not in done.stderr, done.stderr


def test_readyz_reports_the_store(http, restart_moto):
    assert http.get("/readyz").json()["checks"]["storage"] == "ok"
    restart_moto.stop()
    down = http.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["storage"].startswith("error:")
    restart_moto.start()
    assert http.get("/readyz").status_code == 200


def test_proxy_mode_serves_ranges_through_the_api(settings, clips, start_worker):
    proxied = replace(settings, storage_proxy=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    server = ApiServer(Farm(proxied)).start()
    start_worker()
    try:
        with server.client() as client:
            video = wait_for(client, upload(client, clips["small"]).json()["id"])
            assert video["status"] == "ready", video["error"]
            url = video["renditions"][0]["url"]
            whole = httpx.get(url, headers=client.headers, timeout=30)
            assert whole.status_code == 200 and whole.headers["content-length"] == str(len(whole.content))
            part = httpx.get(url, headers={**client.headers, "Range": "bytes=100-199"}, timeout=30)
            assert part.status_code == 206 and part.content == whole.content[100:200]
            assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
            past = httpx.get(url, headers={**client.headers, "Range": f"bytes={len(whole.content)}-"}, timeout=30)
            assert past.status_code == 416
    finally:
        server.stop()


def test_the_sweep_aborts_only_multipart_uploads_its_catalog_says_were_abandoned(farm, settings, moto_s3):
    from vidfarm.lifecycle import receive

    client, bucket = moto_s3.client(), bucket_of(settings)
    recorded, unknown = receive(farm, "t"), "a" * 32
    for video_id in (recorded, unknown):
        key = f"media/{source_key(video_id)}"
        started = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=started, PartNumber=1, Body=b"x" * 1024)
    reconciler = Reconciler(farm)
    assert reconciler.sweep_receiving(time.time() - 3600) == 0  # still live
    assert reconciler.sweep_receiving(time.time() + 1) == 1
    # The one no row names is not ours to judge: kept, and reported.
    assert [u["Key"] for u in multipart_uploads(moto_s3, settings)] == [f"media/{source_key(unknown)}"]
    assert farm.catalog.get(recorded, cached=False) is None


def test_a_slow_upload_is_not_swept_while_its_api_receives_it(api, http, farm, settings, moto_s3, clips):
    # On a slow link one 8 MiB part can take longer to fill than the sweep waits; the API announces
    # the upload in Redis while it receives it, and the sweep leaves an announced one alone.
    head = clips["small"].read_bytes()
    resume = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield head[:1000]
        resume.wait(30)
        yield head[1000:]

    answers: list[httpx.Response] = []
    sending = threading.Thread(target=lambda: answers.append(http.post(
        "/v1/videos", params={"filename": "slow.mp4"}, content=slow_body(),
        headers={"Content-Type": "video/mp4", "Content-Length": str(len(head))})))
    sending.start()
    try:
        wait_until(lambda: multipart_uploads(moto_s3, settings), 10, "the upload to start")
        # Every part of it is older than this cutoff: only the announcement spares it.
        assert Reconciler(farm).sweep_receiving(time.time() + 1) == 0
        assert len(multipart_uploads(moto_s3, settings)) == 1
    finally:
        resume.set()
        sending.join()
    assert answers[0].status_code == 201, answers[0].text


@pytest.mark.parametrize("checksums", [True], indirect=True)
def test_with_checksums_uploads_and_outputs_carry_a_crc32_the_store_checked(api, http, worker, settings, moto_s3,
                                                                             clips):
    client, bucket = moto_s3.client(), bucket_of(settings)

    def stored(key: str) -> tuple[str | None, bytes]:
        head = client.head_object(Bucket=bucket, Key=f"media/{key}", ChecksumMode="ENABLED")
        return head.get("ChecksumCRC32"), client.get_object(Bucket=bucket, Key=f"media/{key}")["Body"].read()

    body = clips["small"].read_bytes() + bytes(20 * MIB)  # three parts; the padding is ignored by ffprobe
    posted = http.post("/v1/videos", params={"filename": "a.mp4"}, content=body, headers={"Content-Type": "video/mp4"})
    assert posted.status_code == 201, posted.text
    location = create(http, len(body)).headers["Location"]
    middle = 10 * MIB + 123  # the first request ends inside a part: a tail object, then parts from it
    assert patch(http, location, 0, body[:middle]).status_code == 204
    assert patch(http, location, middle, body[middle:]).status_code == 204
    for video_id in (posted.json()["id"], location.rstrip("/").rsplit("/", 1)[1]):
        checksum, data = stored(source_key(video_id))
        assert checksum and data == body
    video = wait_for(http, upload(http, clips["small"]).json()["id"])
    assert video["status"] == "ready", video["error"]
    checksum, data = stored(rendition_key(video["id"], video["renditions"][0]["name"]))
    assert checksum and data[4:8] == b"ftyp"
