"""pools.yaml: what the loader accepts, what it refuses (naming the field), and who wins over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from autoscaler import cluster
from autoscaler.config import load_config, parse_config
from autoscaler.policy import PoolConfig
from vidfarm.cli import main


def test_example_pools_file_loads() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "deploy" / "pools.example.yaml")
    assert [(p.pool.name, p.deployment, p.namespace) for p in config.pools] == [
        ("cpu", "worker-cpu", "vidfarm"),
        ("gpu", "worker-gpu", "vidfarm"),
    ]
    assert config.pools[0].pool.target_backlog_seconds == 600.0
    assert config.pools[0].pool.max_scale_up_step is None


def test_defaults_and_aliases() -> None:
    config = parse_config({"pools": [{"name": "cpu", "queues": "cpu", "deployment": "worker-cpu", "min": 1, "max": 3}]})
    entry = config.pools[0]
    assert entry.namespace == "vidfarm"
    assert entry.pool == PoolConfig("cpu", ("cpu",), min_replicas=1, max_replicas=3)
    assert (config.resync_s, config.lease_name) == (5.0, "vidfarm-autoscaler")


def test_a_pod_finds_its_pools_and_lease_in_its_own_namespace(monkeypatch) -> None:
    """In a cluster the overlay's `namespace:` is the only place to set it: POD_NAMESPACE (downward API)
    is the default, so the pools file need not repeat it."""
    monkeypatch.setenv("POD_NAMESPACE", "media-farm")
    config = parse_config({"pools": [{"name": "cpu", "queues": "cpu", "deployment": "worker-cpu"}]})
    assert config.namespace == "media-farm"
    assert [p.namespace for p in config.pools] == ["media-farm"]
    explicit = parse_config({"namespace": "other", "pools": [{"name": "cpu", "queues": "cpu", "deployment": "w"}]})
    assert explicit.pools[0].namespace == "other"


def test_pool_namespace_overrides_the_top_level_one() -> None:
    config = parse_config(
        {
            "namespace": "media",
            "pools": [
                {"name": "a", "queues": ["a"], "deployment": "wa"},
                {"name": "b", "queues": ["b"], "deployment": "wb", "namespace": "gpu"},
            ],
        }
    )
    assert [p.namespace for p in config.pools] == ["media", "gpu"]


POOL = {"name": "cpu", "queues": ["cpu"], "deployment": "worker-cpu"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a mapping"),
        ({"pools": []}, "'pools' must be a non-empty list"),
        ({"pools": [POOL], "nmespace": "x"}, r"top level: unknown field\(s\) \['nmespace'\]"),
        ({"pools": [{**POOL, "max_replica": 3}]}, r"pool 'cpu': unknown field\(s\) \['max_replica'\]"),
        ({"pools": [{"name": "cpu", "queues": ["cpu"]}]}, "pool 'cpu': missing required field 'deployment'"),
        ({"pools": [{**POOL, "max_replicas": "ten"}]}, "pool 'cpu': max_replicas: expected a number"),
        ({"pools": [{**POOL, "max_replicas": 2.5}]}, "max_replicas: expected a whole number"),
        ({"pools": [{**POOL, "min_replicas": True}]}, "min_replicas: expected a number"),
        ({"pools": [{**POOL, "min_replicas": 5, "max_replicas": 2}]}, "pool 'cpu': max_replicas must be >= 1"),
        ({"pools": [{**POOL, "queues": []}]}, "queues: expected a non-empty list"),
        ({"pools": [{**POOL, "min": 1, "min_replicas": 1}]}, "either 'min' or 'min_replicas'"),
        ({"pools": [POOL, POOL]}, "pool name 'cpu' appears twice"),
        ({"pools": [POOL, {**POOL, "name": "other"}]}, "deployment vidfarm/worker-cpu is used by two pools"),
        ({"pools": [POOL], "resync_s": 0}, "resync_s must be > 0"),
    ],
)
def test_config_errors_name_the_field(document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(document)


def test_invalid_yaml_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text("pools: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path)


# -- resync_s: the file's value unless --resync is given -------------------------------------------


@pytest.fixture
def pools_file(tmp_path: Path) -> Path:
    path = tmp_path / "pools.yaml"
    path.write_text("resync_s: 12\npools:\n  - {name: cpu, queues: [cpu], deployment: worker-cpu}\n")
    return path


@pytest.mark.parametrize(("flags", "expected_s"), [([], 12.0), (["--resync", "2"], 2.0)])
def test_resync_flag_overrides_the_file_only_when_given(
    pools_file: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], expected_s: float
) -> None:
    chosen: list[float] = []

    def stop_after_choosing(_settings: object, config_path: str, *, resync_s: float | None, **_: object) -> None:
        # Everything past choosing the interval needs a cluster.
        chosen.append(cluster.resync_interval(load_config(config_path), resync_s))

    monkeypatch.setattr(cluster, "run_cluster_autoscaler", stop_after_choosing)
    result = CliRunner().invoke(main, ["autoscaler", "--config", str(pools_file), *flags])
    assert result.exit_code == 0, result.output
    assert chosen == [expected_s]
