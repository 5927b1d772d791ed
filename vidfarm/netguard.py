"""Where a webhook may be sent: public addresses only, checked after DNS, connected to as checked.

A webhook URL is chosen by a tenant, and the farm POSTs to it from inside the cluster: without these
checks it would reach the cloud metadata service, the database or the admin port of anything on the
private network (server-side request forgery). The host is resolved and every address checked when
the webhook is registered and again before each attempt; the connection then goes to the very
address that was checked (with the URL's host kept for `Host`, SNI and the certificate), so a DNS
answer that changes in between (rebinding) cannot point the request elsewhere. Redirects are never
followed: a 3xx is a failed attempt, not a new destination.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2000
# Cloud metadata and host-agent endpoints. Most are link-local or private anyway; Azure's wire server
# is a public address, so it is named. Refused even where private addresses are allowed.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16",
))


class AddressRefused(ValueError):
    """The URL is not one the farm will send to; the message says why, for the API's 422."""


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
    address = ipaddress.ip_address(raw.split("%", 1)[0])  # without an IPv6 zone index
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def why_refused(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    for kind, hit in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                      ("unspecified", address.is_unspecified), ("multicast", address.is_multicast),
                      ("private", address.is_private)):
        if hit:
            return kind
    return None if address.is_global else "reserved"


def resolve(url: str, allow_private: bool) -> Target:
    """Every address `url`'s host resolves to, each checked; AddressRefused naming the first that is
    not allowed (one private answer among public ones is enough to refuse: a rebinding attempt)."""
    parts = parse(url)
    port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # no such name, or no name at all (a NUL in it)
        raise AddressRefused(f"url host {parts.hostname!r} does not resolve") from None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    for raw in addresses:
        address = _address(raw)
        if address in METADATA:
            raise AddressRefused(f"url host {parts.hostname!r} resolves to {raw}, a cloud metadata address")
        if (kind := why_refused(address)) and not allow_private:
            raise AddressRefused(f"url host {parts.hostname!r} resolves to {raw}, a {kind} address; webhooks go "
                                 "to public addresses only (VIDFARM_WEBHOOK_ALLOW_PRIVATE=1 lifts this)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path, addresses)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to one checked address, whatever the host name resolves to by now."""

    def __init__(self, target: Target, address: str, timeout_s: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout_s)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    def connect(self) -> None:
        super().connect()
        # The certificate is checked against the URL's host name, not the address.
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def post(target: Target, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST `body` to the first of `target`'s addresses that accepts a connection; the status code.
    `timeout_s` bounds the connect and each read. OSError (http.client's errors included) on failure."""
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    error: OSError | None = None
    for address in target.addresses:
        conn = kind(target, address, timeout_s)
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
