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
