"""Where a webhook may be sent: public addresses only, checked after DNS, connected to as checked.

A webhook URL is chosen by a tenant, and the farm POSTs to it from inside the cluster: without these
checks it would reach the cloud metadata service, the database or the admin port of anything on the
private network (server-side request forgery). The host is resolved and every address checked when
the webhook is registered and again before each attempt; the connection then goes to the very
address that was checked (with the URL's host kept for `Host`, SNI and the certificate), so a DNS
answer that changes in between (rebinding) cannot point the request elsewhere. Redirects are never
followed: a 3xx is a failed attempt, not a new destination. An IPv6 address that carries an IPv4 one
(mapped, IPv4-compatible, NAT64, 6to4, Teredo) is judged by that one too, so 127.0.0.1 or the metadata
address cannot pass in IPv6 spelling. Errors name the kind of address, never the address itself: a
tenant must not learn what internal host names resolve to.

One attempt is bounded in time and bytes, whatever the receiver does: resolving, connecting, the TLS
handshake, sending and reading the response all share one deadline (a receiver that sends its status
line a byte a second cannot stretch it, as a per-read timeout would let it), and reading stops after
a cap on the response's bytes.
"""

from __future__ import annotations

import http.client
import ipaddress
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2000
# Cloud metadata and host-agent endpoints. Most are link-local or private anyway; Azure's wire server
# is a public address, so it is named. Refused even where private addresses are allowed.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16",
))
# IPv6 ranges whose addresses carry an IPv4 address in their last 32 bits: IPv4-compatible (deprecated;
# `::` and `::1` are IPv6's own) and NAT64's well-known prefix, through which an IPv6-only cluster
# reaches IPv4 hosts (64:ff9b::a9fe:a9fe is the metadata service). IPv4-mapped, 6to4 and Teredo
# addresses Python's ipaddress takes apart itself.
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Local-use NAT64 (RFC 8215): a site's own translators, which may embed the IPv4 address at any of
# several offsets; nothing public lives behind them, so the whole range is refused.
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


class AddressRefused(ValueError):
    """The URL is not one the farm will send to; the message says why, for the API's 422."""


class ResponseTooLarge(OSError):
    """The receiver sent more than the cap before its response ended: a failed attempt."""


@dataclass(frozen=True)
class Target:
    """A URL taken apart, with the addresses its host resolved to (all of them allowed)."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def parse(url: str) -> SplitResult:
    """The URL's parts if it is an absolute http(s) URL a webhook can use; AddressRefused otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:  # a broken [IPv6] literal, a port that is no number or out of range
        raise AddressRefused(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("url must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise AddressRefused("url must not carry credentials; verify the signature instead")
    return parts


def _address(raw: str) -> IPAddress:
    return ipaddress.ip_address(raw.split("%", 1)[0])  # without an IPv6 zone index


def carried_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries, which packets to it end up at; () for none."""
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    if address.ipv4_mapped:
        return (address.ipv4_mapped,)
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return (ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF),)
    if address.sixtofour:
        return (address.sixtofour,)
    if address.teredo:
        return address.teredo  # the relay server and the client behind it
    return ()


def is_metadata(address: IPAddress) -> bool:
    return address in METADATA or any(carried in METADATA for carried in carried_ipv4(address))


def why_refused(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one. An IPv6 address carrying an
    IPv4 one is judged by that one first (::ffff:127.0.0.1 is loopback, not merely "private")."""
    for carried in carried_ipv4(address):
        if kind := why_refused(carried):
            return kind
    for kind, hit in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                      ("unspecified", address.is_unspecified), ("multicast", address.is_multicast),
                      ("private", address.is_private or address in LOCAL_NAT64)):
        if hit:
            return kind
    if address in IPV4_COMPATIBLE:  # even with a public IPv4 address in it: deprecated, never routed
        return "reserved"
    return None if address.is_global else "reserved"


def _lookup(host: str, port: int, timeout_s: float) -> list[tuple[Any, ...]]:
    """getaddrinfo, given up after `timeout_s`: the tenant's name servers may never answer, and the
    resolver's own timeouts (resolv.conf) are longer than an attempt. The lookup goes on in its
    daemon thread until the resolver gives up; the caller does not wait for it."""
    answers: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()

    def look_up() -> None:
        try:
            answers.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError, ValueError):  # no such name, or no name at all (a NUL in it)
            answers.put(None)

    threading.Thread(target=look_up, name="webhook-resolve", daemon=True).start()
    try:
        infos = answers.get(timeout=max(timeout_s, 0.0))
    except queue.Empty:
        raise AddressRefused(f"url host {host!r} did not resolve within {timeout_s:g} s") from None
    if infos is None:
        raise AddressRefused(f"url host {host!r} does not resolve")
    return infos


def resolve(url: str, allow_private: bool, timeout_s: float) -> Target:
    """Every address `url`'s host resolves to within `timeout_s`, each checked; AddressRefused naming
    the kind of the first that is not allowed (one private answer among public ones is enough to
    refuse: a rebinding attempt)."""
    parts = parse(url)
    port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    addresses = tuple(dict.fromkeys(info[4][0] for info in _lookup(host, port, timeout_s)))
    for raw in addresses:
        address = _address(raw)
        if is_metadata(address):
            raise AddressRefused(f"url host {host!r} resolves to a cloud metadata address")
        if (kind := why_refused(address)) and not allow_private:
            raise AddressRefused(f"url host {host!r} resolves to a {kind} address; webhooks go to public "
                                 "addresses only (VIDFARM_WEBHOOK_ALLOW_PRIVATE=1 lifts this)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, addresses)


class _Bounded:
    """What a socket of one attempt does on top of a socket's work: each send and receive waits only
    as long as the attempt's deadline leaves (`time.monotonic()`), and receiving stops once the
    response has cost more than `max_received` bytes."""

    deadline: float
    max_received: int
    received: int = 0

    def bound(self, deadline: float, max_received: int) -> None:
        self.deadline, self.max_received = deadline, max_received

    def wait_left(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's deadline passed")
        self.settimeout(left)  # type: ignore[attr-defined]

    def _count(self, got: int) -> None:
        self.received += got
        if self.received > self.max_received:
            raise ResponseTooLarge(f"the response went on past {self.max_received} bytes")

    def recv(self, *args: Any) -> bytes:
        self.wait_left()
        data = super().recv(*args)  # type: ignore[misc]
        self._count(len(data))
        return data

    def recv_into(self, *args: Any) -> int:
        self.wait_left()
        got = super().recv_into(*args)  # type: ignore[misc]
        self._count(got)
        return got

    def send(self, *args: Any) -> int:
        self.wait_left()
        return super().send(*args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> None:
        self.wait_left()  # sendall's timeout bounds the whole call, not each piece
        super().sendall(*args)  # type: ignore[misc]


class _BoundedSocket(_Bounded, socket.socket):
    pass


class _BoundedSSLSocket(_Bounded, ssl.SSLSocket):
    pass


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to one checked address, whatever the host name resolves to by now, with every step
    bounded by the attempt's deadline and cap."""

    def __init__(self, target: Target, address: str, deadline: float, max_received: int) -> None:
        super().__init__(target.host, target.port)
        self.address, self.deadline, self.max_received = address, deadline, max_received

    def connect(self) -> None:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            self.address, self.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0]
        sock = _BoundedSocket(family, kind, proto)
        sock.bound(self.deadline, self.max_received)
        try:
            sock.wait_left()
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _PinnedHTTPS(_PinnedHTTP):
    def connect(self) -> None:
        super().connect()
        self.sock.wait_left()  # the handshake gets what is left, as one timeout over all of it
        context = ssl.create_default_context()
        context.sslsocket_class = _BoundedSSLSocket
        # The certificate is checked against the URL's host name, not the address.
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.sock.bound(self.deadline, self.max_received)


def post(target: Target, body: bytes, headers: dict[str, str], deadline: float, max_received: int) -> int:
    """POST `body` to the first of `target`'s addresses that accepts a connection; the status code.
    Everything ends by `deadline` (`time.monotonic()`; TimeoutError after) and reads at most
    `max_received` bytes of response (ResponseTooLarge). OSError (http.client's errors included) on
    failure."""
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    error: OSError | None = None
    for address in target.addresses:
        conn = kind(target, address, deadline, max_received)
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            return conn.getresponse().status  # the body is not read: nothing in it matters to us
        except ConnectionRefusedError as exc:
            error = exc  # the next address may be up
        except http.client.HTTPException as exc:
            raise OSError(f"bad HTTP response: {type(exc).__name__}") from exc
        finally:
            conn.close()
    raise error or OSError("no address to connect to")
