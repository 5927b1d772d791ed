"""What clients are told when a video becomes playable while still processing, with a real worker:
the live stream's `playable` event with signed playback URLs, and `vidfarm upload --wait` printing
the HLS URL before the video is ready."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest

from tests.conftest import API_KEY, ROOT, make_clip, settings_env, upload
from vidfarm.settings import Settings
from vidfarm.states import VideoStatus

# 50 s at 10 fps in 6 s segments: several chunks, so the video is playable well before it is ready.
CLIP = ("testsrc2=size=640x360:rate=10:duration=50", True, [])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, ladder=("360p",), stream_rungs=("240p",), chunk_seconds=6.0)


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "clip.mp4", *CLIP)


def test_the_live_stream_says_playable_with_the_playback_urls_before_ready(http, worker, clip):
    video_id = upload(http, clip).json()["id"]
    seen: list[tuple[str, dict]] = []
    with http.stream("GET", f"/v1/videos/{video_id}/events", timeout=180) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in seen]
    assert kinds.count("playable") == 1 and kinds[-1] == "status", kinds
    playable = seen[kinds.index("playable")][1]
    assert playable["status"] == VideoStatus.PROCESSING and playable["playable_at"]
    assert seen[-1][1]["status"] == VideoStatus.READY
    # The URLs are the resource's: a player opens them as they are, without a key.
    assert playable["playback"]["dash"] is None
    master = httpx.get(playable["playback"]["hls"])
    assert master.status_code == 200 and master.text.startswith("#EXTM3U")
    assert http.get(f"/v1/videos/{video_id}").json()["playable_at"] == playable["playable_at"]


def test_upload_wait_prints_the_hls_url_when_playable_then_waits_for_ready(api, worker, clip, settings):
    command = [sys.executable, "-m", "vidfarm", "upload", str(clip), "--wait", "--url", api.url, "--api-key", API_KEY]
    with subprocess.Popen(command, env=settings_env(settings), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        video_id = proc.stdout.readline().strip()
        line = proc.stdout.readline()
        assert line.startswith("playable  "), line
        # Printed while processing: the URL plays now, from the growing playlists.
        hls = line.split()[-1]
        video = httpx.get(f"{api.url}/v1/videos/{video_id}", headers={"Authorization": f"Bearer {API_KEY}"}).json()
        assert video["playable_at"], video
        assert httpx.get(hls).text.startswith("#EXTM3U")
        rest = proc.stdout.read()
        assert proc.wait(timeout=180) == 0
    assert f"{video_id}  ready  100%" in rest  # then it waited for ready, as before
    assert "  hls    " in rest and "  dash   " in rest
