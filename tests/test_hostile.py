"""Hostile clients cannot exhaust or stall the API (issue 18): bodies bounded before they are read,
slow clients cut off, metric labels bounded, odd bytes answered with 4xx, open uploads capped.

Most run against `vidfarm api` in its own process (what a cluster runs: uvicorn over h11), so the
test sees that process's memory, and uvicorn's real parser decides what reaches the app.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, OTHER_KEY, ROOT, readable_within, settings_env, wait_serving
from vidfarm.localredis import free_port
from vidfarm.settings import Settings
from vidfarm.storage import parse_range

MIB = 1024 * 1024
HOSTILE_BYTES = 100 * MIB


@dataclass
class ApiProcess:
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def memory_kib(self, field: str) -> int:
        """VmRSS (now) or VmHWM (the peak so far) of the API process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")


@contextlib.contextmanager
def api_process(settings: Settings) -> Iterator[ApiProcess]:
    settings.home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vidfarm", "api", "--port", str(port)],
                            env=settings_env(settings), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_serving(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=30)
        yield ApiProcess(port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def api_proc(settings) -> Iterator[ApiProcess]:
    with api_process(settings) as server:
        yield server


# -- raw HTTP: what a hostile client sends, byte by byte ---------------------------------------------


def request_head(method: str, path: str, headers: dict[str, str | bytes]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x"]
    lines += [name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
              for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):  # a reset after the answer: it was read already
        while chunk := sock.recv(65536):
            data += chunk
    return data


def parse_answer(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ") and body, answer[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)


def flood(port: int, path: str, key: str | None, chunked: bool, size: int = HOSTILE_BYTES) -> tuple[int, dict]:
    """POST `size` bytes of JSON-looking body, as fast as the API takes them, then read the answer."""
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)})
    block = b"[" + b"1," * (MIB // 2 - 1) + b"1"  # 1 MiB
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        with contextlib.suppress(OSError):  # the API may answer and close before taking it all
            sock.sendall(request_head("POST", path, headers))
            for _ in range(size // len(block)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        return parse_answer(read_answer(sock))


def trickle(port: int, start: bytes, piece: bytes, every_s: float, give_up_s: float) -> bytes:
    """Send `start`, then `piece` every `every_s` until the API answers (or `give_up_s` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up_s + 30) as sock:
        sock.sendall(start)
        deadline = time.monotonic() + give_up_s
        while time.monotonic() < deadline:
            readable = readable_within(sock, every_s)
            if readable:
                return read_answer(sock)
            with contextlib.suppress(OSError):
                sock.sendall(piece)
        raise AssertionError(f"the API still took the trickle after {give_up_s} s")


# -- 1. bodies: the key before any byte, a bound on every body that is not an upload ------------------


def test_hostile_json_floods_are_refused_before_the_api_reads_them(api_proc):
    """Four concurrent 100 MiB bodies without a key get 401, four with a key get 413, with and without
    Content-Length: and the API's peak memory stays where it was (it read none of them whole)."""
    with api_proc.client() as http:  # warm: the routes, the catalog, the threads that serve them
        assert http.get("/v1/webhooks").status_code == 200
    before = api_proc.memory_kib("VmHWM")
    answers: dict[tuple[str | None, bool, int], tuple[int, dict]] = {}

    def attack(key: str | None, chunked: bool, n: int) -> None:
        answers[key, chunked, n] = flood(api_proc.port, "/v1/webhooks", key, chunked)

    for key in (None, API_KEY):
        attackers = [threading.Thread(target=attack, args=(key, n % 2 == 1, n)) for n in range(4)]
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(timeout=300)
    grown_mib = (api_proc.memory_kib("VmHWM") - before) / 1024
    assert len(answers) == 8
    for (key, chunked, _), (status, error) in answers.items():
        expected = (401, "unauthorized") if key is None else (413, "body_too_large")
        assert (status, error["error"]["code"]) == expected, (key, chunked, error)
    assert grown_mib < 64, f"the API's peak RSS grew {grown_mib:.0f} MiB under 8 hostile bodies"


def test_small_bodies_still_reach_their_route_and_large_ones_get_413(settings):
    settings = replace(settings, max_body_bytes=2000)
    with api_process(settings) as server, server.client() as http:
        padded = {"url": "ftp://x/" + "a" * 1500, "events": ["video.ready"]}  # under the limit: the route decides
        assert http.post("/v1/webhooks", json=padded).json()["error"]["code"] == "invalid_url"
        big = json.dumps({"url": "http://x/" + "a" * 3000, "events": ["video.ready"]}).encode()
        sized = http.post("/v1/webhooks", content=big, headers={"Content-Type": "application/json"})
        streamed = http.post("/v1/webhooks", content=iter([big[:1000], big[1000:]]),
                             headers={"Content-Type": "application/json"})
        for response in (sized, streamed):
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "body_too_large"
            assert "2000 bytes" in response.json()["error"]["message"]
        # The limit is not an upload's: a raw upload far above it goes on to its own checks.
        upload = http.post("/v1/videos", content=b"\0" * 10_000, headers={"Content-Type": "video/mp4"})
        assert upload.json()["error"]["code"] != "body_too_large", upload.text


# -- 4. metric labels ----------------------------------------------------------------------------------


def metric_lines(http: httpx.Client) -> int:
    return len(http.get("/metrics").text.splitlines())


def test_made_up_methods_and_paths_add_no_metric_series(api_proc):
    with api_proc.client(key=None) as http:
        http.request("BREW", "/v1/videos")  # the one series an unknown method may add
        http.get("/no/such/route/0")
        before = metric_lines(http)
        for n in range(300):
            http.request(f"X{n}", "/v1/videos" if n % 2 else f"/no/such/route/{n}")
            http.get(f"/no/such/route/{n}")
        added = metric_lines(http) - before
    assert added <= 2 * 16, f"300 made-up methods and paths added {added} /metrics lines"


# -- 5. odd bytes --------------------------------------------------------------------------------------


def raw_json_answer(port: int, method: str, path: str, headers: dict[str, str | bytes]) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_head(method, path, {**headers, "Connection": "close", "Content-Length": "0"}))
        return parse_answer(read_answer(sock))


def new_upload(server: ApiProcess) -> str:
    """The path of a new resumable upload of 10 bytes."""
    with server.client() as http:
        created = http.post("/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    return httpx.URL(created.headers["location"]).path


@pytest.mark.parametrize("digit", [b"\xb2", "²".encode(), "٣".encode(), b"1e3", b"-1", b"1" * 21])
def test_tus_numbers_are_ascii_digits_or_400(api_proc, digit):
    tus = {"Authorization": f"Bearer {API_KEY}", "Tus-Resumable": "1.0.0"}
    status, error = raw_json_answer(api_proc.port, "POST", "/v1/uploads", {**tus, "Upload-Length": digit})
    assert (status, error["error"]["code"]) == (400, "bad_upload_length")
    path = new_upload(api_proc)
    offset = {**tus, "Upload-Offset": digit, "Content-Type": "application/offset+octet-stream"}
    status, error = raw_json_answer(api_proc.port, "PATCH", path, offset)
    assert (status, error["error"]["code"]) == (400, "bad_upload_offset")


def test_non_ascii_in_tokens_and_tus_headers_is_4xx_json(api_proc):
    tus = {"Authorization": f"Bearer {API_KEY}", "Tus-Resumable": "1.0.0"}
    created = {**tus, "Upload-Length": "10", "Upload-Metadata": b"filename \xc3\xa9\xb2"}
    status, error = raw_json_answer(api_proc.port, "POST", "/v1/uploads", created)
    assert (status, error["error"]["code"]) == (400, "bad_metadata")
    path = new_upload(api_proc)
    checksummed = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                   "Upload-Checksum": b"sha1 \xc3\xa9"}
    status, error = raw_json_answer(api_proc.port, "PATCH", path, checksummed)
    assert (status, error["error"]["code"]) == (400, "bad_checksum")
    payload = base64.urlsafe_b64encode(b"a.b.1").decode().rstrip("=")
    with api_proc.client(key=None) as http:
        for mac in ("%C3%A9", "%FF", "\u0663", "x" * 43 + "%C3%A9"):
            response = http.get(f"/v1/play/{payload}.{mac}/x")
            assert response.status_code == 403, (mac, response.text)
            assert response.json()["error"]["code"] == "invalid_token"


def test_ranges_take_ascii_digits_only():
    """A Range in another script's digits is no range (the whole file is served, as HTTP allows)."""
    assert parse_range("bytes=3-", 10) == (3, 9)
    assert parse_range("bytes=-4", 10) == (6, 9)
    for odd in ("bytes=\u0663-", "bytes=-\u0663", "bytes=\xb2-", "bytes=3-\n", "bytes=" + "1" * 21 + "-"):
        assert parse_range(odd, 10) is None, odd


# -- 8. slow clients, piled-up uploads -------------------------------------------------------------------


def test_trickling_bodies_are_cut_off_by_the_rate_floor(settings, clips):
    """2 bytes every 0.2 s never go silent for the idle timeout, but fall under a floor of 1000
    bytes/s over 1 s windows: cut off with 408, an upload and a JSON body alike."""
    settings = replace(settings, body_min_rate_bytes_s=1000, body_rate_window_s=1.0, upload_idle_timeout_s=60.0)
    key = {"Authorization": f"Bearer {API_KEY}"}
    with api_process(settings) as server:
        for path, content_type in [("/v1/videos", "video/mp4"), ("/v1/webhooks", "application/json")]:
            start = request_head("POST", path, {**key, "Content-Type": content_type, "Content-Length": "60000"})
            status, error = parse_answer(trickle(server.port, start, b"xx", every_s=0.2, give_up_s=20))
            assert (status, error["error"]["code"]) == (408, "body_too_slow"), (path, error)
        # A resumable upload cut off keeps what arrived: the client resumes from there.
        upload = new_upload(server)
        start = request_head("PATCH", upload, {**key, "Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                                                "Content-Type": "application/offset+octet-stream",
                                                "Content-Length": "10"})
        status, error = parse_answer(trickle(server.port, start, b"x", every_s=0.3, give_up_s=20))
        assert (status, error["error"]["code"]) == (408, "body_too_slow")
        with server.client() as http:
            kept = http.head(upload, headers={"Tus-Resumable": "1.0.0"})
        assert 0 < int(kept.headers["Upload-Offset"]) < 10
        # A client at a normal pace is not bothered by the floor.
        with server.client() as http, clips["small"].open("rb") as clip:
            response = http.post("/v1/videos", files={"file": ("small.mp4", clip, "video/mp4")})
            assert response.status_code == 201, response.text


def test_request_headers_have_a_deadline(settings):
    settings = replace(settings, header_timeout_s=1.0)
    with api_process(settings) as server:
        # Slowloris: a header line every 0.3 s, never the blank line that ends them.
        answer = trickle(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n", every_s=0.3,
                         give_up_s=20)
        status, error = parse_answer(answer)
        assert (status, error["error"]["code"]) == (408, "header_timeout")
        # Connected, then nothing at all.
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            assert parse_answer(read_answer(sock))[0] == 408
        # Kept alive after one request, then the next one's headers stall.
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while not first.endswith(b"}"):  # the whole first answer (its body is a JSON object)
                first += sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request's headers never end
            assert parse_answer(read_answer(sock))[0] == 408
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_open_resumable_uploads_are_capped_per_tenant(settings):
    """A tenant that opens uploads without finishing them gets 429 at the cap; other tenants do not
    notice, and terminating one makes room."""
    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "1000"}
    with (api_process(replace(settings, max_open_uploads=3)) as server, server.client() as http,
          server.client(OTHER_KEY) as other):
        made = [http.post("/v1/uploads", headers=tus) for _ in range(3)]
        assert [r.status_code for r in made] == [201] * 3
        refused = http.post("/v1/uploads", headers=tus)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "too_many_uploads" and "at most 3 " in error["message"]
        assert other.post("/v1/uploads", headers=tus).status_code == 201
        assert http.delete(made[0].headers["location"], headers={"Tus-Resumable": "1.0.0"}).status_code == 204
        assert http.post("/v1/uploads", headers=tus).status_code == 201
