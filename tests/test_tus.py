"""Resumable uploads (tus 1.0.0 at /v1/uploads): the real `tuspy` client through a connection that
drops, an API restarted in between, the protocol's error answers, expiry and the CLI resuming."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from tests.conftest import (
    API_KEY,
    BACKENDS,
    OTHER_KEY,
    ROOT,
    ApiServer,
    free_port,
    make_noise_clip,
    settings_env,
    wait_for,
    wait_serving,
    wait_until,
)
from vidfarm.farm import Farm
from vidfarm.reconciler import Reconciler
from vidfarm.states import VideoStatus
from vidfarm.storage import source_key

# Every test on both backends: the partial bytes live in the storage dir, or in the bucket.
pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def settings(settings):
    # uvicorn does not always report a peer that vanished mid-body; the idle timeout ends such a
    # request, and what it received is kept. Short here, so a dropped connection shows in seconds.
    return replace(settings, upload_idle_timeout_s=5.0)

TUS = {"Tus-Resumable": "1.0.0"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}


class DroppingProxy:
    """A TCP relay to an API that cuts the connection carrying the `drop_after`-th upstream byte, once:
    a real dropped connection, mid-request, for client and server alike."""

    def __init__(self, target_port: int, drop_after: int) -> None:
        self.target_port, self.drop_after = target_port, drop_after
        self.sent, self.dropped = 0, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if counted and not self.dropped.is_set() and self.sent + len(data) >= self.drop_after:
                    self.dropped.set()
                    for sock in (src, dst):
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                self.sent += len(data) if counted else 0
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def create(http: httpx.Client, length: int, **metadata: str) -> httpx.Response:
    encoded = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())
    headers = {**TUS, "Upload-Length": str(length)} | ({"Upload-Metadata": encoded} if metadata else {})
    return http.post("/v1/uploads", headers=headers)


def patch(http: httpx.Client, location: str, offset: int, body: bytes, **headers: str) -> httpx.Response:
    return http.patch(location, content=body, headers={**TUS, **OFFSET_TYPE, "Upload-Offset": str(offset), **headers})


def sha1(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


def video(http: httpx.Client, video_id: str) -> dict:
    return http.get(f"/v1/videos/{video_id}").json()


def stored_source(farm: Farm, video_id: str) -> bytes:
    return b"".join(farm.storage.read(source_key(video_id), None).chunks)


def nothing_stored(farm: Farm, video_id: str) -> bool:
    return farm.storage.resumable_offset(video_id) is None and farm.storage.keys(video_id) == []


def test_options_advertise_the_protocol(http, settings):
    response = http.options("/v1/uploads")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "expiration", "checksum"}
    assert response.headers["Tus-Max-Size"] == str(settings.max_upload_bytes)
    assert "sha1" in response.headers["Tus-Checksum-Algorithm"].split(",")


def test_tuspy_resumes_after_a_drop_and_an_api_restart(api, worker, clips, settings):
    source = clips["landscape720"]
    data = source.read_bytes()
    proxy = DroppingProxy(api.port, drop_after=len(data) // 2)
    chunk = len(data) // 6 + 1
    first = TusClient(proxy.url + "/v1/uploads", headers=AUTH).uploader(
        file_path=str(source), chunk_size=chunk, metadata={"filename": "movie.mp4", "renditions": "720p"})
    with pytest.raises((TusCommunicationError, TusUploadFailed)):
        first.upload()
    assert proxy.dropped.is_set()
    video_id = first.url.rsplit("/", 1)[1]
    with api.client() as http:  # the bytes of the cut request that arrived are kept, and shown
        part = wait_until(lambda: (v := video(http, video_id))["upload"]["received_bytes"] > first.offset and v,
                          30, "the cut PATCH's bytes to be recorded")
    assert part["status"] == VideoStatus.UPLOADING and part["upload"]["length_bytes"] == len(data)
    assert part["source"]["filename"] == "movie.mp4"
    api.stop()  # the API goes away; a new one (another replica) takes the rest
    proxy.close()
    again = ApiServer(Farm(settings)).start()
    try:
        resumed = TusClient(again.url + "/v1/uploads", headers=AUTH).uploader(
            file_path=str(source), url=f"{again.url}/v1/uploads/{video_id}", chunk_size=chunk, upload_checksum=True)
        assert resumed.offset == part["upload"]["received_bytes"]  # HEAD: the server's offset
        resumed.upload()
        with again.client() as http:
            done = wait_for(http, video_id, timeout_s=180)
    finally:
        again.stop()
    assert done["status"] == VideoStatus.READY, done["error"]
    assert [r["name"] for r in done["renditions"]] == ["720p"]
    assert stored_source(Farm(settings), video_id) == data


def test_a_killed_api_keeps_what_it_made_durable_and_another_takes_over(settings, tmp_path):
    """kill -9 of the API in the middle of one long PATCH: what it had made durable stays (on S3 the
    whole parts committed as they landed), its lease runs out, another API takes the rest, and the
    stored source is the file, byte for byte, with nothing of the upload's own state left beside it."""
    # About 25 MB: three 8 MiB parts and a tail on S3.
    data, mib = make_noise_clip(tmp_path / "noise.mp4", 2).read_bytes(), 1024 * 1024
    settings = replace(settings, tus_lease_s=3.0)
    farm = Farm(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dying = subprocess.Popen([sys.executable, "-m", "vidfarm", "api", "--port", str(port)], env=settings_env(settings),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_serving(f"http://127.0.0.1:{port}/healthz", dying, timeout_s=30)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60) as http:
        video_id = create(http, len(data), filename="noise.mp4").headers["Vidfarm-Video-Id"]

        def body_then_kill() -> Iterator[bytes]:
            for at in range(0, 20 * mib, mib):
                yield data[at:at + mib]
            wait_until(lambda: (farm.storage.resumable_offset(video_id) or 0) >= 16 * mib, 30,
                       "two parts' worth to be durable")
            os.killpg(dying.pid, signal.SIGKILL)
            dying.wait()
            yield data[20 * mib:]

        with pytest.raises(httpx.TransportError):
            patch(http, f"/v1/uploads/{video_id}", 0, body_then_kill())
    kept = farm.storage.resumable_offset(video_id)
    assert kept is not None and 16 * mib <= kept <= 20 * mib
    again = ApiServer(farm).start()
    try:
        with again.client() as http:
            location = f"/v1/uploads/{video_id}"
            assert http.head(location, headers=TUS).headers["Upload-Offset"] == str(kept)
            busy = patch(http, location, kept, data[kept:])  # the dead API's lease has not run out yet
            assert (busy.status_code, busy.json()["error"]["code"]) == (423, "upload_locked")
            time.sleep(settings.tus_lease_s)
            # A checksummed chunk past a part boundary that fails its check leaves nothing behind.
            bad = patch(http, location, kept, data[kept:], **{"Upload-Checksum": sha1(b"something else")})
            assert bad.status_code == 460
            assert http.head(location, headers=TUS).headers["Upload-Offset"] == str(kept)
            rest = patch(http, location, kept, data[kept:], **{"Upload-Checksum": sha1(data[kept:])})
            assert rest.status_code == 204, rest.text
            assert video(http, video_id)["status"] == VideoStatus.QUEUED
    finally:
        again.stop()
    assert stored_source(farm, video_id) == data
    assert [k.rsplit("/", 1)[1] for k in farm.storage.keys(video_id)] == ["source"]


def test_creation_names_the_video_and_it_lists_as_uploading(http):
    response = create(http, 1000, filename="a.mp4", queue="cpu")
    assert response.status_code == 201, response.text
    video_id = response.headers["Vidfarm-Video-Id"]
    assert response.headers["Location"].endswith(f"/v1/uploads/{video_id}")
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert parsedate_to_datetime(response.headers["Upload-Expires"]).timestamp() > time.time() + 3600
    listed = http.get("/v1/videos", params={"status": "uploading"}).json()["items"]
    assert [(v["id"], v["upload"]["received_bytes"], v["source"]["size_bytes"]) for v in listed] == [
        (video_id, 0, 1000)]
    head = http.head(response.headers["Location"], headers=TUS)
    assert (head.status_code, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (200, "0", "1000")
    assert head.headers["Cache-Control"] == "no-store"


def test_creation_is_checked_like_an_upload(http, settings):
    too_big = create(http, settings.max_upload_bytes + 1)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
    assert create(http, 10, renditions="4320p").json()["error"]["code"] == "unknown_rendition"
    assert create(http, 10, queue="nowhere").json()["error"]["code"] == "unknown_queue"
    bad_meta = http.post("/v1/uploads", headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "filename %%%"})
    assert (bad_meta.status_code, bad_meta.json()["error"]["code"]) == (400, "bad_metadata")
    no_length = http.post("/v1/uploads", headers=TUS)
    assert (no_length.status_code, no_length.json()["error"]["code"]) == (400, "bad_upload_length")
    old = http.post("/v1/uploads", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "10"})
    assert old.status_code == 412 and old.headers["Tus-Version"] == "1.0.0"
    assert http.get("/v1/videos").json()["items"] == []  # nothing refused left a video behind


def test_wrong_offset_409_and_bad_checksum_460(http, clips):
    data = clips["small"].read_bytes()
    location = create(http, len(data), filename="small.mp4").headers["Location"]
    half = len(data) // 2
    assert patch(http, location, 0, data[:half], **{"Upload-Checksum": sha1(data[:half])}).status_code == 204
    wrong = patch(http, location, 0, data[half:])
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (409, "offset_mismatch")
    assert wrong.headers["Upload-Offset"] == str(half)
    corrupt = patch(http, location, half, data[half:], **{"Upload-Checksum": sha1(b"something else")})
    assert (corrupt.status_code, corrupt.json()["error"]["code"]) == (460, "checksum_mismatch")
    assert http.head(location, headers=TUS).headers["Upload-Offset"] == str(half)  # the chunk was discarded
    unknown = patch(http, location, half, data[half:], **{"Upload-Checksum": "crc32 AAAA"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "unsupported_checksum")
    last = patch(http, location, half, data[half:], **{"Upload-Checksum": sha1(data[half:])})
    assert last.status_code == 204 and last.headers["Upload-Offset"] == str(len(data))
    video_id = location.rsplit("/", 1)[1]
    assert video(http, video_id)["status"] == VideoStatus.QUEUED  # the regular path from here
    assert http.head(location, headers=TUS).headers["Upload-Offset"] == str(len(data))


def test_creation_with_upload_and_not_a_video(http):
    body = b"not a video, only text " * 100
    response = http.post("/v1/uploads", content=body, headers={
        **TUS, **OFFSET_TYPE, "Upload-Length": str(len(body)), "Upload-Metadata": ""})
    assert response.status_code == 422, response.text
    video_id = response.headers["Vidfarm-Video-Id"]
    failed = video(http, video_id)
    assert failed["status"] == VideoStatus.FAILED and failed["error"]["code"] == response.json()["error"]["code"]


def test_body_past_the_length_is_refused_whole(http):
    location = create(http, 10).headers["Location"]
    response = patch(http, location, 0, b"x" * 11)
    assert response.status_code == 413
    assert http.head(location, headers=TUS).headers["Upload-Offset"] == "0"


def test_termination_and_another_tenant(api, http, farm):
    location = create(http, 100, filename="a.mp4").headers["Location"]
    video_id = location.rsplit("/", 1)[1]
    assert patch(http, location, 0, b"x" * 40).status_code == 204
    with api.client(OTHER_KEY) as other:
        assert other.head(location, headers=TUS).status_code == 404
        assert patch(other, location, 40, b"y" * 10).status_code == 404
        assert other.delete(location, headers=TUS).status_code == 404
        assert other.get("/v1/videos").json()["items"] == []
    assert http.head(location, headers=TUS).headers["Upload-Offset"] == "40"
    assert http.delete(location, headers=TUS).status_code == 204
    assert http.head(location, headers=TUS).status_code == 404
    assert patch(http, location, 40, b"y" * 10).status_code == 404
    assert video(http, video_id)["status"] == VideoStatus.CANCELED
    assert nothing_stored(farm, video_id)


def test_concurrent_patches_do_not_interleave(http, api):
    location = create(http, 4 * 65536).headers["Location"]
    started, release = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"a" * 65536
        started.set()
        release.wait(10)
        yield b"a" * 65536

    first: list[httpx.Response] = []
    with api.client() as other:
        thread = threading.Thread(target=lambda: first.append(patch(other, location, 0, slow())))
        thread.start()
        started.wait(10)
        time.sleep(0.3)  # let the server take the lock and write the first part
        busy = patch(http, location, 0, b"b" * 65536)
        release.set()
        thread.join(10)
    assert (busy.status_code, busy.json()["error"]["code"]) == (423, "upload_locked")
    assert first[0].status_code == 204 and first[0].headers["Upload-Offset"] == str(2 * 65536)


def test_a_request_stalled_past_its_lease_is_taken_over_and_stores_nothing_more(farm, clips):
    """A client that stops sending mid-PATCH for longer than the lease: another request takes the
    upload over and finishes it; when the stalled one wakes up it gets 423 and writes nothing."""
    data = clips["small"].read_bytes()
    server = ApiServer(Farm(replace(farm.settings, tus_lease_s=1.0))).start()
    stalled, wake = threading.Event(), threading.Event()

    def stalling() -> Iterator[bytes]:
        yield data[:65536]
        stalled.set()
        wake.wait(20)
        yield b"garbage!" * 8192  # must never land anywhere

    first: list[httpx.Response] = []
    try:
        with server.client() as http, server.client() as other:
            location = create(http, len(data), filename="small.mp4").headers["Location"]
            thread = threading.Thread(target=lambda: first.append(patch(other, location, 0, stalling())))
            thread.start()
            stalled.wait(10)
            time.sleep(1.5)  # past the stalled request's lease
            at = int(http.head(location, headers=TUS).headers["Upload-Offset"])
            assert patch(http, location, at, data[at:]).status_code == 204
            wake.set()
            thread.join(20)
            assert (first[0].status_code, first[0].json()["error"]["code"]) == (423, "upload_locked")
            video_id = location.rsplit("/", 1)[1]
            assert video(http, video_id)["status"] == VideoStatus.QUEUED
    finally:
        server.stop()
    assert stored_source(farm, video_id) == data


def test_regular_idle_sweep_leaves_resumable_uploads_alone(http, farm):
    video_id = create(http, 100).headers["Vidfarm-Video-Id"]
    assert patch(http, f"/v1/uploads/{video_id}", 0, b"x" * 40).status_code == 204
    # As the reconciler sweeps regular uploads their API abandoned, with a cutoff past everything.
    Reconciler(farm).sweep_receiving(time.time() + 60)
    assert farm.storage.resumable_offset(video_id) == 40
    assert video(http, video_id)["status"] == VideoStatus.UPLOADING


def test_unfinished_uploads_expire_and_are_swept(farm):
    short = Farm(replace(farm.settings, tus_expiry_s=1.0))
    server = ApiServer(short).start()
    try:
        with server.client() as http:
            location = create(http, 100).headers["Location"]
            video_id = location.rsplit("/", 1)[1]
            assert patch(http, location, 0, b"x" * 10).status_code == 204
            time.sleep(1.2)
            assert http.head(location, headers=TUS).status_code == 410
            assert patch(http, location, 10, b"x" * 10).status_code == 410
            assert video(http, video_id)["status"] == VideoStatus.UPLOADING  # until the sweep
            Reconciler(short).step()
            gone = video(http, video_id)
            assert gone["status"] == VideoStatus.FAILED and gone["error"]["code"] == "upload_expired"
            assert nothing_stored(short, video_id)
            assert http.head(location, headers=TUS).status_code == 410
    finally:
        server.stop()


def test_cli_upload_resumes_after_a_dropped_connection(api, clips, settings):
    source: Path = clips["landscape720"]
    data = source.read_bytes()
    proxy = DroppingProxy(api.port, drop_after=len(data) // 2)
    done = subprocess.run(
        [sys.executable, "-m", "vidfarm", "upload", str(source), "--url", proxy.url, "--api-key", API_KEY,
         "--resumable-above", "0", "--chunk-size", str(len(data) // 3 + 1)],
        env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=120)
    proxy.close()
    assert done.returncode == 0, done.stderr
    assert proxy.dropped.is_set()
    video_id = done.stdout.split()[0]
    with api.client() as http:
        assert video(http, video_id)["status"] == VideoStatus.QUEUED
    assert stored_source(Farm(settings), video_id) == data
