"""Webhooks for real: a receiver over HTTP that verifies every request with the Standard Webhooks
reference library (`standardwebhooks` from PyPI), real workers, a real `vidfarm deliver` process
killed with SIGKILL, hostile receivers on a raw socket (trickling their answer, answering without
end), and the SSRF guard at registration and at delivery time."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import (
    API_KEY,
    OTHER_KEY,
    ROOT,
    ApiServer,
    make_clip,
    readable_within,
    settings_env,
    upload,
    wait_for,
    wait_until,
)
from uploader.resources import webhook_document
from vidfarm.deliver import Deliverer
from vidfarm.farm import Farm
from vidfarm.settings import Settings

ALL_EVENTS = ["video.ready", "video.failed", "video.deleted"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Receivers on loopback, and retries in tenths of a second instead of minutes and hours."""
    return replace(settings, webhook_allow_private=True, webhook_retry_delays_s=(0.2, 0.2, 0.2, 0.2),
                   webhook_timeout_s=2.0)


@dataclass
class Receiver:
    """A webhook receiver: verifies each request's signature, then answers the next of `answers`
    (200 once they run out). With `hold` set, it waits for the test before answering."""

    url: str = ""
    secret: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[dict] = field(default_factory=list)  # verified requests: id, headers, event
    forged: list[str] = field(default_factory=list)  # requests whose signature did not verify
    hold: threading.Event | None = None
    arrived: threading.Event = field(default_factory=threading.Event)

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        try:
            event = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            self.forged.append(str(exc))
            return 400
        self.received.append({"id": headers["webhook-id"], "headers": headers, "event": event})
        self.arrived.set()
        if self.hold is not None:
            self.hold.wait(30)
        return self.answers.pop(0) if self.answers else 200

    def events(self, event_type: str | None = None) -> list[dict]:
        return [r["event"] for r in self.received if event_type in (None, r["event"]["type"])]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.handle({k.lower(): v for k, v in self.headers.items()}, body)
            with contextlib.suppress(OSError):  # the deliverer may be dead by now
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/vidfarm"
    yield state
    if state.hold is not None:
        state.hold.set()
    server.shutdown()


class Hostile:
    """A receiver on a raw socket that reads each request whole, then answers with `answer`'s chunks,
    `every_s` apart, until the deliverer hangs up: what a receiver can do to the farm. It counts the
    connections open at once (all, and per `webhook-id`) as the deliverer's threads they hold."""

    def __init__(self, answer: Callable[[], Iterator[bytes]], every_s: float) -> None:
        self.answer, self.every_s = answer, every_s
        self.arrivals: list[tuple[str, float]] = []  # (webhook-id, time.monotonic()) per request
        self.open: dict[str, int] = {}
        self.most_open, self.most_open_per_id = 0, 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.conns: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hooks"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            msg_id = self._read_request(conn)
            with self.lock:
                self.arrivals.append((msg_id, time.monotonic()))
                self.open[msg_id] = self.open.get(msg_id, 0) + 1
                self.most_open = max(self.most_open, sum(self.open.values()))
                self.most_open_per_id = max(self.most_open_per_id, self.open[msg_id])
            try:
                for chunk in self.answer():
                    # The deliverer sends nothing after its request: anything readable is its hang-up,
                    # and the connection stops counting as held at once.
                    if readable_within(conn, self.every_s) or self.stop.is_set():
                        return
                    conn.sendall(chunk)
            finally:
                with self.lock:
                    self.open[msg_id] -= 1

    @staticmethod
    def _read_request(conn: socket.socket) -> str:
        """The request's `webhook-id`, once all of it (headers and body) is in."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += Hostile._recv(conn)
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:])
        while len(body) < int(headers["content-length"]):
            body += Hostile._recv(conn)
        return headers["webhook-id"]

    @staticmethod
    def _recv(conn: socket.socket) -> bytes:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("the deliverer hung up mid-request")
        return chunk

    def ids(self) -> list[str]:
        return [msg_id for msg_id, _ in self.arrivals]

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def trickling() -> Iterator[bytes]:
    """A 200 status line a byte at a time, then a header that never ends."""
    yield from (bytes([b]) for b in b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while True:
        yield b"a"


def continuing_forever() -> Iterator[bytes]:
    """Interim `100 Continue` responses as fast as they go: http.client reads past each one, for ever."""
    while True:
        yield b"HTTP/1.1 100 Continue\r\n\r\n" * 100


@pytest.fixture
def hostile() -> Iterator[Callable[..., Hostile]]:
    started: list[Hostile] = []

    def start(answer: Callable[[], Iterator[bytes]] = trickling, every_s: float = 0.3) -> Hostile:
        started.append(Hostile(answer, every_s))
        return started[-1]

    yield start
    for server in started:
        server.close()


def register_url(http, url: str, events: list[str] = ALL_EVENTS) -> dict:
    created = http.post("/v1/webhooks", json={"url": url, "events": events})
    assert created.status_code == 201, created.text
    return created.json()


def register(http, receiver: Receiver, events: list[str] = ALL_EVENTS) -> dict:
    created = http.post("/v1/webhooks", json={"url": receiver.url, "events": events})
    assert created.status_code == 201, created.text
    receiver.secret = created.json()["secret"]
    return created.json()


def queued_then_deleted(http, clips) -> str:
    """A `video.deleted` event with no worker needed: upload, then delete while it is queued."""
    video_id = upload(http, clips["small"]).json()["id"]
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204
    return video_id


def deliveries(http, webhook_id: str) -> list[dict]:
    answer = http.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def finished(http, webhook_id: str) -> list[dict] | None:
    """The deliveries once none is pending any more."""
    items = deliveries(http, webhook_id)
    return items if items and all(d["status"] != "pending" for d in items) else None


@pytest.fixture
def poison_clip(tmp_path) -> Path:
    """Probes as a fine H.264 clip; its picture data is noise, so the transcode fails (`media_error`)."""
    data = make_clip(tmp_path / "fine.mp4", "testsrc2=size=320x240:rate=15:duration=2", False,
                     ["-movflags", "+faststart"]).read_bytes()
    start = data.index(b"mdat") - 4
    size = int.from_bytes(data[start:start + 4], "big")
    poison = tmp_path / "poison.mp4"
    poison.write_bytes(data[: start + 8] + random.Random(11).randbytes(size - 8) + data[start + size:])
    return poison


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[ApiServer]:
    settings.home.mkdir(parents=True, exist_ok=True)
    server = ApiServer(Farm(settings)).start()
    try:
        yield server
    finally:
        server.stop()


# -- events --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ready_failed_and_deleted_each_deliver_their_event_once(http, worker, clips, poison_clip, receiver):
    webhook = register(http, receiver)
    ready_id = upload(http, clips["small"]).json()["id"]
    failed_id = upload(http, poison_clip).json()["id"]
    ready = wait_for(http, ready_id, timeout_s=120)
    assert ready["status"] == "ready"
    assert wait_for(http, failed_id, timeout_s=120)["status"] == "failed"
    assert http.delete(f"/v1/videos/{ready_id}").status_code == 204
    assert http.delete(f"/v1/videos/{ready_id}").status_code == 204  # deleting twice is one event

    done = wait_until(lambda: finished(http, webhook["id"]), 30, "every delivery to finish")
    assert sorted(d["event"] for d in done) == sorted(ALL_EVENTS)
    assert all(d["status"] == "delivered" and len(d["attempts"]) == 1 for d in done)
    assert receiver.forged == []
    by_type = {e["type"]: e["data"] for e in receiver.events()}
    assert len(receiver.received) == 3 and set(by_type) == set(ALL_EVENTS)
    # Each carries the video's public document as the API showed it at that moment.
    assert by_type["video.ready"]["id"] == ready_id and by_type["video.ready"]["status"] == "ready"
    assert [r["name"] for r in by_type["video.ready"]["renditions"]] == [r["name"] for r in ready["renditions"]]
    assert by_type["video.failed"]["id"] == failed_id
    assert by_type["video.failed"]["error"]["code"] == "media_error"
    assert by_type["video.deleted"]["id"] == ready_id and by_type["video.deleted"]["status"] == "canceled"
    assert len({r["id"] for r in receiver.received}) == 3  # a webhook-id per event


def test_only_the_events_asked_for_are_sent(http, clips, receiver):
    ready_only = register(http, receiver, events=["video.ready"])
    deleted_only = register(http, receiver, events=["video.deleted"])  # the receiver checks this one's secret
    video_id = queued_then_deleted(http, clips)

    # Deliveries are written with the status change, in its transaction: both lists are final now.
    asked = deliveries(http, deleted_only["id"])
    assert [(d["event"], d["video_id"]) for d in asked] == [("video.deleted", video_id)]
    assert deliveries(http, ready_only["id"]) == []
    wait_until(lambda: finished(http, deleted_only["id"]), 30, "the delivery")
    assert [e["type"] for e in receiver.events()] == ["video.deleted"] and receiver.forged == []


# -- retries, giving up, a killed deliverer ------------------------------------------------------


def test_receiver_failing_for_a_while_gets_retries_then_one_success(http, clips, receiver):
    webhook = register(http, receiver)
    receiver.answers = [500, 503, 500]
    video_id = queued_then_deleted(http, clips)

    [delivery] = wait_until(lambda: finished(http, webhook["id"]), 30, "the delivery to succeed")
    assert delivery["status"] == "delivered" and delivery["video_id"] == video_id
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 500, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 503", "HTTP 500", None]
    # Every retry is the same message (one webhook-id), signed anew; the receiver saw four.
    assert [r["id"] for r in receiver.received] == [delivery["id"]] * 4
    assert receiver.forged == []


def test_gives_up_after_the_last_retry_with_the_history_kept(http, clips, receiver):
    webhook = register(http, receiver)
    receiver.answers = [500] * 10
    queued_then_deleted(http, clips)

    [delivery] = wait_until(lambda: finished(http, webhook["id"]), 30, "the delivery to give up")
    assert delivery["status"] == "failed" and delivery["next_attempt_at"] is None
    assert [a["status_code"] for a in delivery["attempts"]] == [500] * 5  # the first try and 4 retries
    assert all(a["at"] and a["duration_ms"] >= 0 for a in delivery["attempts"])
    assert len(receiver.received) == 5


def test_a_deliverer_killed_mid_delivery_delivers_after_restart(settings, clips, receiver):
    settings = replace(settings, webhook_deliver_in_api=False)  # only `vidfarm deliver` delivers here
    receiver.hold = threading.Event()

    def deliverer() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "vidfarm", "deliver", "--threads", "2"],
                                env=settings_env(settings), cwd=ROOT, start_new_session=True)

    with serving(settings) as api, api.client() as http:
        webhook = register(http, receiver)
        first = deliverer()
        try:
            queued_then_deleted(http, clips)
            assert receiver.arrived.wait(60), "the deliverer never sent the event"
            os.kill(first.pid, signal.SIGKILL)  # mid-request: the receiver has not answered yet
            first.wait(10)
        finally:
            receiver.hold.set()
            if first.poll() is None:
                first.kill()
        [pending] = deliveries(http, webhook["id"])
        assert pending["status"] == "pending" and pending["attempts"] == []  # the killed attempt left no trace

        second = deliverer()
        try:
            [delivery] = wait_until(lambda: finished(http, webhook["id"]), 60, "the restarted deliverer")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    assert delivery["status"] == "delivered" and len(delivery["attempts"]) == 1
    # At least once: the receiver saw the message twice, under one webhook-id it can drop a repeat by.
    assert [r["id"] for r in receiver.received] == [delivery["id"]] * 2


# -- hostile receivers ---------------------------------------------------------------------------


def test_a_trickling_receiver_is_cut_off_at_the_deadline_and_each_attempt_recorded_once(settings, clips, hostile):
    """Its status line a byte every 0.3 s: a per-read timeout never fires, the attempt's deadline does."""
    settings = replace(settings, webhook_timeout_s=1.5, webhook_retry_delays_s=(0.5, 0.5))
    trickler = hostile(trickling, every_s=0.3)
    with serving(settings) as api, api.client() as http:
        webhook = register_url(http, trickler.url)
        queued_then_deleted(http, clips)
        [delivery] = wait_until(lambda: finished(http, webhook["id"]), 40, "the delivery to give up")
    assert delivery["status"] == "failed"
    attempts = delivery["attempts"]
    assert len(attempts) == 3  # the first try and two retries, each recorded
    for attempt in attempts:
        assert attempt["status_code"] is None and "timed out" in attempt["error"], attempt
        assert attempt["duration_ms"] < 1500 + 1000, attempt  # the deadline, and some slack for a busy machine
    # The receiver saw exactly the recorded attempts, one at a time, each after its retry delay.
    assert trickler.ids() == [delivery["id"]] * 3
    assert trickler.most_open_per_id == 1
    arrived = [at for _, at in trickler.arrivals]
    assert all(later - earlier >= 1.5 + 0.5 * 0.9 - 0.1 for earlier, later in itertools.pairwise(arrived))


def test_a_tenants_slow_receiver_leaves_the_other_tenants_deliveries_on_time(settings, clips, receiver, hostile):
    """Four deliveries to a trickling receiver, as many as the API's deliverer threads, and a deadline
    long enough to hold them: the tenant gets its two, and another tenant's event goes out at once."""
    settings = replace(settings, webhook_timeout_s=60.0)
    trickler = hostile(trickling, every_s=0.3)
    with serving(settings) as api, api.client(key=API_KEY) as slow, api.client(key=OTHER_KEY) as other:
        for _ in range(4):
            register_url(slow, trickler.url)
        queued_then_deleted(slow, clips)
        wait_until(lambda: trickler.most_open >= 2, 30, "the slow tenant's deliveries to start")
        webhook = register(other, receiver)
        queued_then_deleted(other, clips)
        wait_until(lambda: receiver.received, 10, "the other tenant's event")  # a poll or two, not a minute
        [delivery] = wait_until(lambda: finished(other, webhook["id"]), 15, "the other tenant's delivery")
        assert trickler.most_open == 2  # the tenant's share (VIDFARM_WEBHOOK_TENANT_IN_FLIGHT), no more
        trickler.close()  # its receiver hangs up: the held attempts end now, not in a minute
    assert delivery["status"] == "delivered" and len(delivery["attempts"]) == 1
    assert trickler.most_open_per_id == 1


def test_a_receiver_answering_without_end_is_cut_off_at_the_response_cap(settings, clips, hostile):
    settings = replace(settings, webhook_timeout_s=30.0, webhook_retry_delays_s=(0.2,))
    endless = hostile(continuing_forever, every_s=0.0)
    with serving(settings) as api, api.client() as http:
        webhook = register_url(http, endless.url)
        queued_then_deleted(http, clips)
        [delivery] = wait_until(lambda: finished(http, webhook["id"]), 30, "the delivery to give up")
    assert delivery["status"] == "failed" and len(delivery["attempts"]) == 2
    for attempt in delivery["attempts"]:
        assert "past 65536 bytes" in attempt["error"] and "VIDFARM_WEBHOOK_RESPONSE_MAX_BYTES" in attempt["error"]
    assert endless.ids() == [delivery["id"]] * 2


# -- SSRF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://0.0.0.0/hook", "unspecified"),
    # IPv6 spellings of IPv4 addresses: IPv4-compatible, 6to4, NAT64 (well-known and local-use), Teredo.
    ("http://[::127.0.0.1]/hook", "loopback"),
    ("http://[2002:7f00:1::]/hook", "loopback"),
    ("http://[64:ff9b::7f00:1]/hook", "loopback"),
    ("http://[64:ff9b::a00:1]/hook", "private"),
    ("http://[64:ff9b:1::a00:1]/hook", "private"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook", "loopback"),
    ("http://[::1.1.1.1]/hook", "reserved"),  # deprecated: nothing routes it, whatever it carries
])
def test_private_addresses_are_refused_without_the_allow_flag(settings, url, kind):
    with serving(replace(settings, webhook_allow_private=False)) as api, api.client() as http:
        refused = http.post("/v1/webhooks", json={"url": url, "events": ["video.ready"]})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_url" and kind in error["message"], error
        assert http.get("/v1/webhooks").json()["items"] == []
        # A public address is fine (nothing is sent to it in this test).
        assert http.post("/v1/webhooks", json={"url": "https://1.1.1.1/hook", "events": ["video.ready"]}
                         ).status_code == 201


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of it: what an IPv6-only cluster connects to
    "http://[2002:a9fe:a9fe::]/",
])
def test_metadata_addresses_stay_refused_with_the_allow_flag(http, url):
    refused = http.post("/v1/webhooks", json={"url": url, "events": ["video.ready"]})
    assert refused.status_code == 422 and "metadata" in refused.json()["error"]["message"]


def test_a_refusal_does_not_name_the_address_a_host_resolves_to(settings):
    """Naming it would let a tenant map the cluster's internal host names through the API."""
    with serving(replace(settings, webhook_allow_private=False)) as api, api.client() as http:
        refused = http.post("/v1/webhooks", json={"url": "http://localhost:9/hook", "events": ["video.ready"]})
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert "loopback" in message and "127.0.0.1" not in message and "::1" not in message, message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::127.0.0.1]", "[2002:7f00:1::]", "[64:ff9b::7f00:1]"])
def test_the_address_is_checked_again_at_delivery_time(settings, clips, receiver, host):
    """Registered while allowed (as a name that resolved elsewhere then would be): a deliverer that
    does not allow private addresses refuses to send, and the history says why."""
    settings = replace(settings, webhook_deliver_in_api=False)
    receiver.url = receiver.url.replace("127.0.0.1", host)
    with serving(settings) as api, api.client() as http:
        webhook = register(http, receiver)
        queued_then_deleted(http, clips)
        guarded_settings = replace(settings, webhook_allow_private=False)
        guarded = Deliverer(guarded_settings, Farm(settings).webhooks, webhook_document(guarded_settings))
        assert guarded.step("guarded")
        [delivery] = deliveries(http, webhook["id"])
    [attempt] = delivery["attempts"]
    assert delivery["status"] == "pending" and attempt["status_code"] is None
    assert "loopback" in attempt["error"] and "VIDFARM_WEBHOOK_ALLOW_PRIVATE" in attempt["error"]
    if host == "localhost":
        assert "127.0.0.1" not in attempt["error"] and "::1" not in attempt["error"]
    assert receiver.received == []


@pytest.mark.parametrize("body", [
    {"url": "ftp://example.com/hook", "events": ["video.ready"]},
    {"url": "http://user:pw@1.1.1.1/hook", "events": ["video.ready"]},
    {"url": "http:///nohost", "events": ["video.ready"]},
    {"url": "http://1.1.1.1:99999/", "events": ["video.ready"]},
    {"url": "http://1.1.1.1/", "events": ["video.bogus"]},
    {"url": "http://1.1.1.1/", "events": []},
    {"url": "http://nonexistent.invalid/", "events": ["video.ready"]},
    {"events": ["video.ready"]},
])
def test_bad_registrations_are_4xx_naming_the_problem(http, body):
    refused = http.post("/v1/webhooks", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"]


# -- tenants -------------------------------------------------------------------------------------


def test_list_get_delete_and_another_tenant_sees_nothing(api, http, receiver):
    webhook = register(http, receiver, events=["video.ready", "video.failed"])
    assert webhook["secret"].startswith("whsec_") and webhook["id"].startswith("wh_")
    listed = http.get("/v1/webhooks").json()["items"]
    assert listed == [{k: webhook[k] for k in ("id", "url", "events", "created_at")}]  # no secret
    assert "secret" not in http.get(f"/v1/webhooks/{webhook['id']}").json()
    with api.client(key=OTHER_KEY) as other:
        assert other.get("/v1/webhooks").json()["items"] == []
        for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/deliveries")]:
            answer = other.request(method, f"/v1/webhooks/{webhook['id']}{path}")
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", (method, path)
    assert http.delete(f"/v1/webhooks/{webhook['id']}").status_code == 204
    assert http.get(f"/v1/webhooks/{webhook['id']}").status_code == 404
    assert http.get("/v1/webhooks").json()["items"] == []


def test_payload_shape_and_headers(http, clips, receiver):
    register(http, receiver)
    video_id = queued_then_deleted(http, clips)
    wait_until(lambda: receiver.received, 30, "the event")
    [request] = receiver.received
    event = request["event"]
    assert event["type"] == "video.deleted" and event["data"]["id"] == video_id
    assert set(event) == {"type", "timestamp", "data"}
    assert request["headers"]["webhook-signature"].startswith("v1,")
    assert request["headers"]["content-type"] == "application/json"
    assert json.dumps(event["data"])  # the public document, JSON all the way down
