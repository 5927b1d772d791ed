"""Webhook attempts against a trickling receiver (issue 18, finding 2): how long one attempt holds a
deliverer thread, how many are sent and recorded, and how late another tenant's event arrives.

In one process: a catalog on SQLite in a temporary directory, the real `Deliverer` with its threads,
and two receivers on raw sockets. Tenant "slow" has `--slow-hooks` webhooks pointing at a receiver
that reads each request, then sends `HTTP/1.1 200 OK`, `Content-Length: 0` and the blank line one
byte every `--every-s` seconds (38 bytes: 38 s at 1 byte/s). Tenant "fast" has one webhook on a
receiver that answers 200 at once. Both tenants' videos become ready at t=0 (the slow tenant's first,
so its deliveries are due first); the run watches for `--window-s` seconds, then reads the delivery
histories. It uses only what the deliverer had before the fix too, so the same script measures both
(run it at the commit before, then after).

    python bench/webhook_trickle.py --timeout-s 3 --every-s 1 --window-s 60
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from _common import machine, table, temp_dir

from uploader.resources import webhook_document
from vidfarm.catalog import Catalog
from vidfarm.deliver import Deliverer
from vidfarm.outbox import EVENT_TYPES
from vidfarm.settings import Settings
from vidfarm.storage import new_video_id
from vidfarm.webhooks import Webhooks

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout-s", type=float, default=3.0, help="VIDFARM_WEBHOOK_TIMEOUT_S (default 3)")
    parser.add_argument("--every-s", type=float, default=1.0, help="seconds between the slow receiver's bytes")
    parser.add_argument("--window-s", type=float, default=60.0, help="how long to watch (default 60)")
    parser.add_argument("--slow-hooks", type=int, default=4, help="the slow tenant's webhooks (default 4)")
    parser.add_argument("--threads", type=int, default=4, help="deliverer threads (default 4, the API's)")
    return parser.parse_args()


class Receiver:
    """Reads each request whole, then sends ANSWER one byte every `every_s` (all at once for 0). Keeps
    when each request came, how long its connection stayed open, and how many were open at once."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, float]] = []
        self.held_s: list[float] = []  # per connection, until the deliverer hung up or got all of it
        self.open: dict[str, int] = {}
        self.most_open = self.most_open_per_id = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.open_since: dict[object, float] = {}  # connections still open, and since when
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            msg_id = read_request(conn)
            began, key = time.monotonic(), object()
            with self.lock:
                self.open_since[key] = began
                self.arrivals.append((msg_id, began))
                self.open[msg_id] = self.open.get(msg_id, 0) + 1
                self.most_open = max(self.most_open, sum(self.open.values()))
                self.most_open_per_id = max(self.most_open_per_id, self.open[msg_id])
            try:
                for piece in pieces(self.every_s):
                    if hung_up(conn, self.every_s):
                        return
                    conn.sendall(piece)
                conn.recv(1)  # until the deliverer closes
            finally:
                with self.lock:
                    self.open[msg_id] -= 1
                    del self.open_since[key]
                    self.held_s.append(time.monotonic() - began)

    def still_open_s(self, now: float) -> list[float]:
        """How long the connections still open at `now` have been: attempts the window cut short."""
        with self.lock:
            return [now - since for since in self.open_since.values()]


def pieces(every_s: float) -> Iterator[bytes]:
    if every_s <= 0:
        yield ANSWER
        return
    yield from (bytes([byte]) for byte in ANSWER)


def hung_up(conn: socket.socket, wait_s: float) -> bool:
    """Waits `wait_s`, or less if the deliverer closes the connection meanwhile (it sends nothing
    after its request, so anything readable is the end): a closed attempt stops counting at once."""
    return bool(select.select([conn], [], [], wait_s)[0])


def read_request(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += receive(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:])
    while len(body) < int(headers["content-length"]):
        body += receive(conn)
    return headers["webhook-id"]


def receive(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise OSError("closed mid-request")
    return chunk


def ready_video(catalog: Catalog, tenant: str) -> None:
    video = catalog.create(id=new_video_id(), tenant=tenant, status="queued", progress=0.0, attempts=0,
                           filename="a.mp4", size_bytes=10, duration_s=2.0, width=320, height=240, fps=15.0,
                           video_codec="h264", audio_codec="aac", queue="cpu", job_id="j1", requested=None,
                           has_poster=0)
    assert catalog.update(video["id"], status="ready", progress=100.0)


def main() -> None:
    args = parse_args()
    slow, fast = Receiver(args.every_s), Receiver(0.0)
    with temp_dir("vidfarm-bench-trickle-") as home:
        settings = replace(Settings.from_env(), home=home, database_url=f"sqlite:///{home / 'catalog.db'}",
                           webhook_allow_private=True, webhook_timeout_s=args.timeout_s,
                           webhook_retry_delays_s=(5.0, 5.0, 5.0, 5.0, 5.0, 5.0))
        catalog = Catalog(settings.database_url)
        catalog.migrate()
        webhooks = Webhooks(catalog.engine)
        for _ in range(args.slow_hooks):
            webhooks.create("slow", slow.url, EVENT_TYPES)
        fast_hook = webhooks.create("fast", fast.url, EVENT_TYPES)
        stop = threading.Event()
        threads = Deliverer(settings, webhooks, webhook_document(settings)).run(stop, args.threads)
        started = time.monotonic()
        ready_video(catalog, "slow")
        ready_video(catalog, "fast")
        stop.wait(args.window_s)
        ended = time.monotonic()
        held = slow.held_s + slow.still_open_s(ended)
        stop.set()  # then give attempts under way a deadline's time to end and be recorded
        for thread in threads:
            thread.join(timeout=max(0.0, ended + args.timeout_s + 2 - time.monotonic()))
        running = sum(thread.is_alive() for thread in threads)
        recorded = sum(len(d["attempts"]) for hook in webhooks.list("slow") for d in webhooks.deliveries(hook["id"]))
        [fast_delivery] = webhooks.deliveries(fast_hook["id"])
    fast_late = f"{fast.arrivals[0][1] - started:.1f}" if fast.arrivals else f"> {args.window_s:g} (never)"
    print(f"{machine()}; timeout {args.timeout_s:g} s, a byte every {args.every_s:g} s, {args.slow_hooks} slow "
          f"webhooks, {args.threads} threads, {ended - started:.0f} s window\n")
    print(table(["measure", "value"], [
        ("attempts the slow receiver got", len(slow.arrivals)),
        ("attempts recorded in the slow tenant's histories", recorded),
        (f"attempts still running {args.timeout_s + 2:g} s after the window", running),
        ("longest attempt, s (still open at the end counts as far as it got)", max(held, default=0.0)),
        ("slow tenant's attempts open at once, most", slow.most_open),
        ("sends of one delivery open at once, most", slow.most_open_per_id),
        ("other tenant's event arrived after, s", fast_late),
        ("other tenant's delivery", f"{fast_delivery['status']}, {len(fast_delivery['attempts'])} attempt(s)"),
    ]))


if __name__ == "__main__":
    main()
