"""Settings travel whole: every field a process reads from its environment reaches the processes it
starts (`to_env`), bad values are refused naming their variable, and the README documents every one."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vidfarm.settings import ENV, Settings
from vidfarm.storage import StorageLocation

# Not handed on by design: a child gets the file's keys in VIDFARM_API_KEYS (checked below).
NOT_HANDED_ON = {"api_keys_file"}


def changed_values(tmp_path: Path) -> dict[str, object]:
    """A value other than the default for every field but the keys file."""
    return {
        "home": tmp_path / "home", "redis_url": "redis://127.0.0.1:6390/3",
        "database_url": "postgresql+psycopg://farm@db.example/videos",
        "storage": StorageLocation.parse("s3://media-bucket/farm/a"), "api_keys": ("key-a", "key-b"),
        "scratch_dir": tmp_path / "scratch", "storage_proxy": True, "s3_checksums": True,
        "max_upload_bytes": 12345, "max_duration_s": 12.5, "max_pixels": 640 * 360, "upload_idle_timeout_s": 3.25,
        "max_body_bytes": 999, "body_min_rate_bytes_s": 0, "body_rate_window_s": 2.5, "header_timeout_s": 4.0,
        "max_open_uploads": 7, "default_queue": "gpu", "queues": ("gpu", "cpu", "big"), "ladder": ("720p", "360p"),
        "stream_rungs": (),  # `none`: the stream carries the downloads only
        "quality_scorer": "off", "quality_every": 7, "quality_max_reference_bytes": 12345678,
        "max_attempts": 5, "job_timeout_base_s": 30, "job_timeout_factor": 1.5, "stall_timeout_s": 7.0,
        "worker_heartbeat_ttl_s": 4, "lost_job_grace_s": 2.5, "db_lock_timeout_s": 0.5,
        "db_statement_timeout_s": 0.0, "db_worker_idle_in_transaction_s": 9.0, "chunk_seconds": 4.0,
        "pool_max_workers": 3,
        "playback_secret": "s3cret", "playback_ttl_s": 60, "tus_expiry_s": 10.0, "tus_lease_s": 1.5,
        "public_url": "https://videos.example.com/farm", "local_url": "http://127.0.0.1:8123",
        "webhook_allow_private": True, "webhook_retry_delays_s": (0.2, 1.0, 30.0), "webhook_timeout_s": 1.5,
        "webhook_response_max_bytes": 100, "webhook_tenant_in_flight": 1, "webhook_deliver_in_api": False,
        "max_event_streams_per_tenant": 3,
    }


def test_every_setting_reaches_a_child_process(tmp_path):
    defaults = Settings.from_env({"VIDFARM_HOME": str(tmp_path / "default-home")})
    values = changed_values(tmp_path)
    names = {each.name for each in fields(Settings)}
    assert values.keys() == names - NOT_HANDED_ON, "give the new setting a value in changed_values"
    assert [name for name in values if values[name] == getattr(defaults, name)] == []
    changed = Settings(**values, api_keys_file=None)

    env = changed.to_env({"PATH": "/bin", "VIDFARM_API_KEYS_FILE": "/nowhere", "VIDFARM_STORAGE_DIR": "/elsewhere"})

    assert env["PATH"] == "/bin" and "VIDFARM_API_KEYS_FILE" not in env
    assert Settings.from_env(env) == changed


def test_a_directory_location_reaches_a_child_process(tmp_path):
    here = Settings.from_env({"VIDFARM_HOME": str(tmp_path), "VIDFARM_STORAGE_DIR": str(tmp_path / "media dir")})
    assert here.storage == StorageLocation.directory(tmp_path / "media dir")
    # A child given the URL finds the same folder, whatever the directory variable it inherited says.
    child = Settings.from_env(here.to_env({"VIDFARM_STORAGE_DIR": "/elsewhere"}))
    assert child.storage.path == tmp_path / "media dir"
    assert Settings.from_env({"VIDFARM_HOME": str(tmp_path)}).storage.path == tmp_path / "storage"


def test_the_keys_file_adds_to_the_keys_and_is_read_once(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# tenants\nfile-key\n\n  other-key  \n")
    settings = Settings.from_env({"VIDFARM_HOME": str(tmp_path), "VIDFARM_API_KEYS": "env-key, ",
                                  "VIDFARM_API_KEYS_FILE": str(keys_file)})
    assert settings.api_keys == ("env-key", "file-key", "other-key")
    assert Settings.from_env(settings.to_env({})).api_keys == settings.api_keys


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("VIDFARM_MAX_UPLOAD_BYTES", "20G", "VIDFARM_MAX_UPLOAD_BYTES must be an integer, got '20G'"),
    ("VIDFARM_TUS_LEASE_S", "soon", "VIDFARM_TUS_LEASE_S must be a number, got 'soon'"),
    ("VIDFARM_WEBHOOK_RETRY_DELAYS_S", "5,x", "VIDFARM_WEBHOOK_RETRY_DELAYS_S must be comma-separated numbers, "
                                              "got '5,x'"),
    ("VIDFARM_PUBLIC_URL", "videos.example.com", "VIDFARM_PUBLIC_URL must be http(s)://host[:port][/path] (an IDN "
                                                 "host in its xn-- form), got 'videos.example.com'"),
    ("VIDFARM_STORAGE_URL", "gs://bucket", "VIDFARM_STORAGE_URL must be file:///path or s3://bucket/prefix, "
                                           "got 'gs://bucket'"),
])
def test_a_bad_value_is_refused_naming_its_variable(tmp_path, name, raw, message):
    with pytest.raises(ValueError) as refused:
        Settings.from_env({"VIDFARM_HOME": str(tmp_path), name: raw})
    assert str(refused.value) == message


def test_the_readme_documents_every_variable():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    variables = {each.metadata[ENV].name for each in fields(Settings)}
    assert sorted(variables - documented) == []
