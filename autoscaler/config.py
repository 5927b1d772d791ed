"""Load `pools.yaml` for `vidfarm autoscaler --config FILE`.

Format (see deploy/pools.example.yaml):

    namespace: vidfarm          # default namespace for every pool (default: $POD_NAMESPACE, else "vidfarm")
    resync_s: 5                 # optional: periodic pass even without enqueue notifications
    lease_name: vidfarm-autoscaler   # optional: Lease used for leader election
    pools:
      - name: cpu
        queues: [cpu]
        deployment: worker-cpu
        min_replicas: 0         # or `min: 0`
        max_replicas: 8         # or `max: 8`
        ...any other PoolConfig field...

Every mistake raises ValueError naming the pool and the field, so a typo fails at start-up instead of
silently using a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoscaler.policy import PoolConfig

DEFAULT_NAMESPACE = "vidfarm"
DEFAULT_LEASE_NAME = "vidfarm-autoscaler"
TOP_LEVEL_KEYS = {"namespace", "resync_s", "lease_name", "pools"}
POOL_ONLY_KEYS = {"deployment", "namespace"}
# Short spellings people write by hand (`min: 0`, `max: 10`), accepted for the PoolConfig field names.
ALIASES = {"min": "min_replicas", "max": "max_replicas"}
INT_FIELDS = {"min_replicas", "max_replicas", "max_scale_up_step"}
NULLABLE_FIELDS = {"target_backlog_seconds", "max_scale_up_step"}


@dataclass(frozen=True)
class PoolDeployment:
    """One pool and the Deployment that runs its workers."""

    pool: PoolConfig
    deployment: str
    namespace: str


@dataclass(frozen=True)
class AutoscalerConfig:
    pools: tuple[PoolDeployment, ...]
    namespace: str = DEFAULT_NAMESPACE
    resync_s: float = 5.0
    lease_name: str = DEFAULT_LEASE_NAME


def load_config(path: str | Path) -> AutoscalerConfig:
    """Read and validate a pools file."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(document, source=str(path))


def parse_config(document: Any, *, source: str = "config") -> AutoscalerConfig:
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected a mapping with a 'pools' list at the top level")
    _reject_unknown(document, TOP_LEVEL_KEYS, f"{source}: top level")
    # In a pod, its own namespace (downward API): the overlay's `namespace:` is then the only place to set it.
    default_namespace = os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
    namespace = _string(document.get("namespace", default_namespace), f"{source}: namespace")
    resync_s = _number(document.get("resync_s", 5.0), f"{source}: resync_s", float)
    if resync_s <= 0:
        raise ValueError(f"{source}: resync_s must be > 0, got {resync_s}")
    lease_name = _string(document.get("lease_name", DEFAULT_LEASE_NAME), f"{source}: lease_name")
    raw_pools = document.get("pools")
    if not isinstance(raw_pools, list) or not raw_pools:
        raise ValueError(f"{source}: 'pools' must be a non-empty list")
    pools = tuple(_parse_pool(raw, index, namespace, source) for index, raw in enumerate(raw_pools))
    _reject_duplicates(pools, source)
    return AutoscalerConfig(pools=pools, namespace=namespace, resync_s=resync_s, lease_name=lease_name)


def _parse_pool(raw: Any, index: int, default_namespace: str, source: str) -> PoolDeployment:
    where = f"{source}: pools[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping")
    if "name" in raw:
        where = f"{source}: pool {raw['name']!r}"
    pool_fields = {f.name for f in dataclasses.fields(PoolConfig)}
    _reject_unknown(raw, pool_fields | POOL_ONLY_KEYS | ALIASES.keys(), where)
    raw = _resolve_aliases(raw, where)
    for required in ("name", "queues", "deployment"):
        if required not in raw:
            raise ValueError(f"{where}: missing required field '{required}'")
    kwargs: dict[str, Any] = {
        "name": _string(raw["name"], f"{where}: name"),
        "queues": _queues(raw["queues"], f"{where}: queues"),
    }
    for key in (pool_fields - {"name", "queues"}) & raw.keys():
        kwargs[key] = _field_value(key, raw[key], f"{where}: {key}")
    try:
        pool = PoolConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    return PoolDeployment(
        pool=pool,
        deployment=_string(raw["deployment"], f"{where}: deployment"),
        namespace=_string(raw.get("namespace", default_namespace), f"{where}: namespace"),
    )


def _resolve_aliases(raw: dict, where: str) -> dict:
    resolved = dict(raw)
    for alias, field in ALIASES.items():
        if alias not in resolved:
            continue
        if field in resolved:
            raise ValueError(f"{where}: give either '{alias}' or '{field}', not both")
        resolved[field] = resolved.pop(alias)
    return resolved


def _field_value(key: str, value: Any, where: str) -> Any:
    if value is None and key in NULLABLE_FIELDS:
        return None
    if key in INT_FIELDS:
        return _number(value, where, int)
    return _number(value, where, float)


def _number(value: Any, where: str, kind: type) -> Any:
    # bool is an int in Python; "max_replicas: yes" is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{where}: expected a whole number, got {value!r}")
    return kind(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _queues(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        # "queues: transcode" is a natural shorthand for a one-queue pool.
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of queue names, got {value!r}")
    return tuple(_string(item, where) for item in value)


def _reject_unknown(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _reject_duplicates(pools: tuple[PoolDeployment, ...], source: str) -> None:
    seen_names: set[str] = set()
    seen_deployments: set[tuple[str, str]] = set()
    for entry in pools:
        if entry.pool.name in seen_names:
            raise ValueError(f"{source}: pool name {entry.pool.name!r} appears twice")
        key = (entry.namespace, entry.deployment)
        if key in seen_deployments:
            # Two pools driving one Deployment would fight over its replica count.
            raise ValueError(f"{source}: deployment {key[0]}/{key[1]} is used by two pools")
        seen_names.add(entry.pool.name)
        seen_deployments.add(key)
