"""The CLI a user types: upload with --wait, status, ls, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import API_KEY, ROOT, settings_env


def vidfarm(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidfarm", *args], env=settings_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_upload_wait_status_and_ls(api, worker, clips, settings):
    common = ["--url", api.url, "--api-key", API_KEY]
    done = vidfarm(settings, "upload", str(clips["landscape720"]), "--wait", *common)
    assert done.returncode == 0, done.stderr
    video_id = done.stdout.splitlines()[0]
    assert len(video_id) == 32
    assert f"{video_id}  ready  100%" in done.stdout
    assert f"/v1/videos/{video_id}/renditions/720p" in done.stdout
    hls = next(line.split()[-1] for line in done.stdout.splitlines() if line.strip().startswith("hls "))
    assert hls.startswith(f"{api.url}/v1/play/") and hls.endswith("/master.m3u8")
    assert httpx.get(hls).text.startswith("#EXTM3U")  # a player needs nothing but the URL
    status = vidfarm(settings, "status", video_id, *common)
    assert status.returncode == 0 and "ready" in status.stdout
    listing = vidfarm(settings, "ls", *common)
    assert video_id in listing.stdout and "landscape720.mp4" in listing.stdout


def test_errors_are_one_clear_line(api, settings, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    done = vidfarm(settings, "upload", str(text), "--url", api.url, "--api-key", API_KEY)
    assert done.returncode == 1
    assert "Error: 422" in done.stderr and "Traceback" not in done.stderr
    wrong_key = vidfarm(settings, "ls", "--url", api.url, "--api-key", "nope")
    assert wrong_key.returncode == 1 and "401 unauthorized" in wrong_key.stderr
    unreachable = vidfarm(settings, "ls", "--url", "http://127.0.0.1:9", "--api-key", API_KEY)
    assert unreachable.returncode == 1 and "cannot reach the API" in unreachable.stderr


def _tus_location(settings, port: int, env_extra: dict[str, str], *args: str) -> str:
    """Start `vidfarm api`, create a tus upload as a TLS proxy would forward it, return its Location."""
    from tests.conftest import wait_serving
    from tests.test_security import stop

    settings.home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in settings_env(settings).items() if k != "FORWARDED_ALLOW_IPS"} | env_extra
    env.pop("VIDFARM_PUBLIC_URL", None)  # the URLs come from the request here, as without one
    proc = subprocess.Popen([sys.executable, "-m", "vidfarm", "api", "--port", str(port), *args], env=env, cwd=ROOT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url + "/readyz", proc)
        created = httpx.post(url + "/v1/uploads", timeout=30, headers={
            "Authorization": f"Bearer {API_KEY}", "Tus-Resumable": "1.0.0", "Upload-Length": "10",
            "X-Forwarded-Proto": "https", "Host": "vidfarm.example.com"})
        assert created.status_code == 201, created.text
        return created.headers["Location"]
    finally:
        stop(proc)


def test_api_believes_x_forwarded_proto_only_from_allowed_peers(settings):
    """Behind a TLS ingress the API hears plain HTTP: the URLs it hands out are https:// only when the
    peer that says so is trusted (--forwarded-allow-ips / FORWARDED_ALLOW_IPS), never from anyone."""
    from vidfarm.localredis import free_port

    trusted = _tus_location(settings, free_port(), {}, "--forwarded-allow-ips", "127.0.0.0/8")
    assert trusted.startswith("https://vidfarm.example.com/v1/uploads/")
    by_env = _tus_location(settings, free_port(), {"FORWARDED_ALLOW_IPS": "127.0.0.1"})
    assert by_env.startswith("https://vidfarm.example.com/v1/uploads/")
    # The ingress's range, and this client outside it: the header is a forgery and is ignored.
    untrusted = _tus_location(settings, free_port(), {"FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
    assert untrusted.startswith("http://vidfarm.example.com/v1/uploads/")
