"""Counting what the farm sends to Redis and PostgreSQL, from outside its processes.

Nothing here touches product code: PostgreSQL statements are counted by a small proxy on the wire
(the farm's DATABASE_URL points at it), Redis commands by a MONITOR client. Both attribute each
connection to the process that opened it (api, worker, up) by the socket's owner in /proc, so idle
traffic can be split per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import redis
from _common import cmdline

# -- which process owns a loopback connection -------------------------------------------------------


def _socket_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the client end of a TCP connection 127.0.0.1:client_port -> :server_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
                if local == client_port and remote == server_port:
                    return fields[9]
    return None


def socket_owner(client_port: int, server_port: int, candidates: Iterable[int]) -> int | None:
    inode = _socket_inode(client_port, server_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def role_of(pid: int | None) -> str:
    """What a farm process is, from its command line."""
    if pid is None:
        return "unknown"
    if pid == os.getpid():
        return "bench"
    words = " ".join(cmdline(pid)).split()
    for role in ("api", "worker", "up"):
        if "vidfarm" in words and role in words:
            return role
    return "other"


class Roles:
    """client port -> role, resolved once per connection (pooled connections live long)."""

    def __init__(self, server_port: int, candidates: Callable[[], Iterable[int]]) -> None:
        self.server_port = server_port
        self.candidates = candidates
        self._known: dict[int, str] = {}

    def __call__(self, client_port: int) -> str:
        if client_port in self._known:
            return self._known[client_port]
        role = role_of(socket_owner(client_port, self.server_port, [os.getpid(), *self.candidates()]))
        if role != "unknown":  # not yet known (a farm still starting) is asked again next time
            self._known[client_port] = role
        return role


# -- PostgreSQL: a counting proxy ---------------------------------------------------------------------

SSL_OR_GSS_REQUEST = (80877103, 80877104)
TABLE_RE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+\"?(\w+)\"?", re.IGNORECASE)


def classify_sql(sql: str) -> tuple[str, str]:
    """(kind, table) of one statement: ping, begin, commit, rollback, select, select for update,
    insert, update, delete, other."""
    text = " ".join(sql.split())
    head = text.split(" ", 1)[0].upper() if text else ""
    if text.rstrip(";").strip().upper() in ("", "SELECT 1"):  # SQLAlchemy's pre-ping on psycopg is ";"
        return "ping", ""
    if head in ("BEGIN", "COMMIT", "ROLLBACK"):
        return head.lower(), ""
    match = TABLE_RE.search(text)
    table = match.group(1) if match else ""
    if head == "SELECT" and "FOR UPDATE" in text.upper():
        return "select for update", table
    if head in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        return head.lower(), table
    return "other", table


class _FrontendParser:
    """Reads the client's side of one PostgreSQL connection and counts each statement it has the
    server execute (a simple Query, or an Execute of a bound statement) and each round trip (Query
    or Sync). Statements psycopg prepares are remembered by name."""

    def __init__(self, count: Callable[[str | None, bool], None]) -> None:
        self.count = count
        self.buffer = b""
        self.started = False
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    return
                self.buffer = self.buffer[length:]
                self.started = code not in SSL_OR_GSS_REQUEST
                continue
            if len(self.buffer) < 5:
                return
            kind, length = self.buffer[:1], struct.unpack("!i", self.buffer[1:5])[0]
            if len(self.buffer) < 1 + length:
                return
            body, self.buffer = self.buffer[5:1 + length], self.buffer[1 + length:]
            self._message(kind, body)

    def _message(self, kind: bytes, body: bytes) -> None:
        if kind == b"Q":
            self.count(_cstrings(body, 1)[0], True)
        elif kind == b"P":
            name, query = _cstrings(body, 2)
            self.statements[name] = query
        elif kind == b"B":
            portal, statement = _cstrings(body, 2)
            self.portals[portal] = self.statements.get(statement, "")
        elif kind == b"E":
            self.count(self.portals.get(_cstrings(body, 1)[0], "?"), False)
        elif kind == b"S":
            self.count(None, True)


def _cstrings(body: bytes, n: int) -> list[str]:
    return [part.decode(errors="replace") for part in body.split(b"\0", n)[:n]]


class PgCountingProxy:
    """127.0.0.1:<port> -> the real server; counts (role, kind, table) of every statement, and round
    trips per role. Its own asyncio loop runs in a daemon thread."""

    def __init__(self, upstream_port: int, candidates: Callable[[], Iterable[int]]) -> None:
        self.upstream_port = upstream_port
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.open: set[int] = set()  # client ports of the connections open now
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._candidates = candidates
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), name="pg-proxy", daemon=True).start()
        ready.wait(10)
        self.roles = Roles(self.port, candidates)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def snapshot(self) -> Counter[tuple[str, str, str]]:
        with self.lock:
            return Counter(self.counts)

    def connections(self) -> Counter[str]:
        """Connections open now, by the role of the process holding them."""
        with self.lock:
            ports = list(self.open)
        return Counter(self.roles(port) for port in ports)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_port = writer.get_extra_info("peername")[1]
        parser = _FrontendParser(lambda sql, round_trip: self._count(self.roles(client_port), sql, round_trip))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        with self.lock:
            self.open.add(client_port)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, parser.feed), self._pipe(up_reader, writer, None))
        finally:
            with self.lock:
                self.open.discard(client_port)

    def _count(self, role: str, sql: str | None, round_trip: bool) -> None:
        """A statement executed (`sql`, None for a Sync), and whether the client then waits for the
        server (a round trip)."""
        with self.lock:
            if round_trip:
                self.counts[(role, "round trip", "")] += 1
            if sql is not None:
                self.counts[(role, *classify_sql(sql))] += 1

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    tap: Callable[[bytes], None] | None) -> None:
        try:
            while data := await reader.read(65536):
                if tap is not None:
                    tap(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


# -- Redis: MONITOR, split at markers ---------------------------------------------------------------

MARK = "vidfarm-bench-mark-"


def redis_purpose(command: str, key: str) -> str:
    """What a farm command is for, from its key (keys are namespaced by what uses them)."""
    prefixes = (("vidfarm:events:", "events (pub/sub)"), ("vidfarm:enqueued", "enqueue wake-up"),
                ("vidfarm:video:", "catalog cache"), ("vidfarm:cancel:", "cancel-flag checks"),
                ("vidfarm:worker:", "worker presence"), ("vidfarm:autoscaler:", "autoscaler status"),
                ("rq:", "RQ queue, jobs, registries"))
    for prefix, purpose in prefixes:
        if key.startswith(prefix):
            return purpose
    if command in ("CLIENT", "HELLO", "PING", "SELECT", "AUTH"):
        return "connection set-up / health"
    return f"other ({command})"


class RedisMonitor:
    """A MONITOR client tallying (role, purpose, command) in a thread. `mark(conn)` sends an ECHO
    marker on `conn` and waits until the monitor has seen it, so a tally is cut exactly between the
    same commands as the INFO/RESETSTAT sent right after it on that connection."""

    def __init__(self, url: str, port: int, candidates: Callable[[], Iterable[int]]) -> None:
        self.client = redis.Redis.from_url(url)
        self.roles = Roles(port, candidates)
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.marks: dict[str, Counter[tuple[str, str, str]]] = {}
        self._cond = threading.Condition()
        self._multi: dict[str, int] = {}  # client -> tally slot of a MULTI waiting for its first command
        self._last: dict[str, str] = {}   # client -> purpose of its last command (EXEC takes it)
        self._monitor = self.client.monitor()
        self._monitor.__enter__()
        threading.Thread(target=self._run, name="redis-monitor", daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(redis.ConnectionError, OSError, AttributeError):
            while True:
                self._one(self._monitor.next_command())

    def _one(self, entry: dict) -> None:
        words = entry["command"].split(" ")
        command, key = words[0].upper(), words[1] if len(words) > 1 else ""
        if command == "ECHO" and key.startswith(MARK):
            with self._cond:
                self.marks[key] = Counter(self.counts)
                self._cond.notify_all()
            return
        client = f"{entry['client_address']}:{entry['client_port']}"
        role = self.roles(int(entry["client_port"])) if entry["client_type"] == "tcp" else entry["client_type"]
        if command == "MULTI":
            self._multi[client] = 1
            return
        purpose = self._last.get(client, "other (EXEC)") if command == "EXEC" else redis_purpose(command, key)
        with self._cond:
            if self._multi.pop(client, 0):
                self.counts[(role, purpose, "MULTI")] += 1
            self.counts[(role, purpose, command)] += 1
        self._last[client] = purpose

    def mark(self, conn: redis.Redis, name: str, timeout_s: float = 30) -> Counter[tuple[str, str, str]]:
        key = MARK + re.sub(r"\W+", "-", name)
        conn.echo(key)
        with self._cond:
            if not self._cond.wait_for(lambda: key in self.marks, timeout_s):
                raise TimeoutError(f"MONITOR did not show marker {name}")
            return self.marks[key]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._monitor.connection.disconnect()
