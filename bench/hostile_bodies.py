"""Hostile JSON bodies (issue 18, finding 1): the API's peak RSS under four concurrent 100 MiB bodies.

`vidfarm api` runs as its own process against a private redis-server and a temp dir; its VmRSS is
sampled from /proc every 20 ms. Four clients at once each POST `--size-mib` of JSON-looking bytes to
`/v1/webhooks` over raw sockets, as fast as the API takes them: without a key and with one, each with
a Content-Length and chunked. Per scenario: the answers, the slowest answer's time, how much of its
body a client got to send before the answer, and the peak RSS over the idle baseline.

`--baseline REV` runs the same against a `git archive` of another revision (e.g. the one before the
fix), side by side, so both numbers come from the same machine and moment.

    python bench/hostile_bodies.py --baseline 0911e98
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, machine, table, temp_dir
from api_cpu import unpack
from upload_stream import API_KEY, RssSampler, baseline_rss, start_api

from vidfarm.localredis import LocalRedis

MIB = 1024 * 1024
CLIENTS = 4
SCENARIOS = [("no key", None, False), ("no key", None, True), ("key", API_KEY, False), ("key", API_KEY, True)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=100, help="each body's size in MiB (default 100)")
    parser.add_argument("--baseline", default=None, help="git revision to compare against, e.g. 0911e98")
    return parser.parse_args()


@dataclass
class Answer:
    status: int
    code: str
    seconds: float  # request start to the whole answer
    sent: int  # body bytes the client handed to the socket before the API answered or hung up


def flood(port: int, key: str | None, chunked: bool, size: int) -> Answer:
    head = ["POST /v1/webhooks HTTP/1.1", "Host: bench", "Content-Type: application/json"]
    head += [f"Authorization: Bearer {key}"] if key else []
    head += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {size}"]
    block = b"[" + b"1," * (MIB // 2 - 1) + b"1"
    sent = 0
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        with contextlib.suppress(OSError):  # the API may answer and close before taking it all
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            for _ in range(size // MIB):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    seconds = time.perf_counter() - started
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "?"
    return Answer(int(status_line.split(b" ")[1]) if status_line else 0, code, seconds, sent)


def scenario(port: int, pid: int, key: str | None, chunked: bool, size: int) -> tuple[list[Answer], int]:
    """Four concurrent floods: their answers, and the API's peak RSS growth in bytes."""
    idle = baseline_rss(pid, seconds=0.5)
    sampler = RssSampler(pid, every_s=0.02)
    sampler.start()
    answers: list[Answer] = []
    clients = [threading.Thread(target=lambda: answers.append(flood(port, key, chunked, size)))
               for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    time.sleep(0.3)
    return answers, max(sampler.stop()) - idle


def measure(name: str, code: Path, work: Path, redis_url: str, size: int) -> list[list[object]]:
    rows: list[list[object]] = []
    api, url = start_api(work, redis_url, cwd=code)
    port = int(url.rsplit(":", 1)[1])
    try:
        for label, key, chunked in SCENARIOS:
            answers, growth = scenario(port, api.pid, key, chunked, size)
            statuses = ", ".join(sorted({f"{a.status} {a.code}" for a in answers}))
            rows.append([name, label, "chunked" if chunked else "Content-Length", statuses,
                         max(a.seconds for a in answers), max(a.sent for a in answers) / MIB, growth / MIB])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    finally:
        api.terminate()
        api.wait(timeout=30)
    return rows


def main() -> None:
    args = parse_args()
    size = args.size_mib * MIB
    rows: list[list[object]] = []
    with temp_dir("bench-hostile-") as work:
        redis_server = LocalRedis(work / "redis", persistent=False).start()
        try:
            if args.baseline:
                baseline = work / "baseline"
                unpack(args.baseline, baseline)
                rows += measure(f"baseline {args.baseline}", baseline, work / "b", redis_server.url, size)
            rows += measure("this checkout", ROOT, work / "c", redis_server.url, size)
        finally:
            redis_server.stop()
    print()
    print(f"{CLIENTS} concurrent {args.size_mib} MiB JSON bodies to POST /v1/webhooks per row (raw sockets, "
          f"loopback); API = `vidfarm api` process, RSS from /proc every 20 ms; {machine()}")
    print()
    print(table(["API", "caller", "body", "answers", "slowest answer s", "MiB sent before it",
                 "peak RSS growth MiB"], rows))
    worst = max(float(r[-1]) for r in rows if r[0] == "this checkout")
    print(f"\ntarget peak RSS growth < 64 MiB: {'met' if worst < 64 else 'MISSED'} (worst {worst:.1f} MiB)")


if __name__ == "__main__":
    main()
