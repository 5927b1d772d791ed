"""API keys: each key is a tenant. Keys are compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from uploader.errors import ApiError


def tenant_of(key: str) -> str:
    """A stable, non-secret tenant id derived from the key (what the catalog stores)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyRing:
    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    def tenant(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})
        presented = token.strip().encode(errors="replace")
        # Compare against every key, without stopping early, so timing says nothing about which matched.
        matched = None
        for key in self._keys:
            if hmac.compare_digest(presented, key):
                matched = key
        if matched is None:
            raise ApiError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
        return tenant_of(matched.decode())
