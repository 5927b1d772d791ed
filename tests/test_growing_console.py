"""The web console plays a video that is still processing: in Debian's chromium (headless, driven by
tests/browser/console_growing.mjs), the row of a video uploaded through the API gets its Play button
once the video is playable, and the player starts while the video is `processing`, then plays to
the end once it is ready."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace

import pytest

from tests.conftest import API_KEY, CHROMIUM, NEEDS_BROWSER, ROOT, make_clip, upload
from vidfarm.rungs import DEFAULT_STREAM_RUNGS
from vidfarm.settings import Settings

# As the browser test's growing clip: several chunks of 720p on one worker, processing for a while.
CLIP = ("testsrc2=size=1280x720:rate=25:duration=27", True, [])

pytestmark = NEEDS_BROWSER


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, ladder=("720p", "360p"), stream_rungs=DEFAULT_STREAM_RUNGS, chunk_seconds=6.0)


def test_the_console_plays_a_processing_video_once_playable(api, http, worker, tmp_path):
    video_id = upload(http, make_clip(tmp_path / "clip.mp4", *CLIP)).json()["id"]
    plan = {"url": api.url + "/", "key": API_KEY, "videoId": video_id}
    done = subprocess.run(["node", str(ROOT / "tests" / "browser" / "console_growing.mjs"), json.dumps(plan)],
                          capture_output=True, text=True, cwd=ROOT / "tests" / "browser", timeout=400,
                          env={**os.environ, "CHROMIUM": CHROMIUM})
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    why = json.dumps(result, indent=1)
    assert "failure" not in result and result["errors"] == [], why
    assert result["statusAtPlay"] == "processing", why
    assert result["playing"]["info"].startswith("HLS while processing"), why
    assert result["ended"]["status"] == "ready", why
    assert abs(result["ended"]["currentTime"] - 27.0) <= 0.1, why
