"""The web console at /, in a real browser: Debian's chromium, headless, driven by Playwright (npm
`playwright-core`) from tests/browser/console.mjs, against the API served by the fixtures and a real
worker process.

A person's path through it: a wrong key is refused with a clear message, the right one signs in; a
clip chosen in the file input uploads with a moving progress bar (the upload is throttled so it
can be seen, and paused where it is resumable); the farm page shows no worker, then the worker the
test starts meanwhile; the video goes live to `ready`, plays to the end, and is deleted; a file that
is not a video and one over the size limit each get a clear error. Screenshots at desktop and phone
width are saved under the folder the test prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from autoscaler.runtime import publish_status
from tests.conftest import API_KEY, BACKENDS, CHROMIUM, NEEDS_BROWSER, ROOT, make_clip
from vidfarm.farm import Farm
from vidfarm.settings import Settings

BROWSER_DIR = ROOT / "tests" / "browser"
CONSOLE_DIR = ROOT / "uploader" / "console"
CLIP = ("testsrc2=size=640x360:rate=25:duration=4", True, [])
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
WORKER = "console-test-worker"

pytestmark = NEEDS_BROWSER


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, ladder=("360p",), chunk_seconds=2.0, max_upload_bytes=MAX_UPLOAD_BYTES)


def pool_status(current: int) -> dict[str, Any]:
    """What the autoscaler publishes for GET /v1/farm (Controller.status()): one pool that wants a
    worker. No autoscaler runs here (the test starts the worker), so the test publishes it."""
    return {"pools": {"cpu": {
        "min": 0, "max": 2, "desired": 1, "current": current, "queues": ["cpu"],
        "last_decision": {"direction": "up", "reason": "backlog", "message": "1 video waiting", "at": time.time()},
    }}}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # tus into the bucket, playback from it
def test_console_sign_in_upload_watch_play_delete(farm: Farm, api, http, start_worker, tmp_path: Path) -> None:
    for vendored in ("tus.min.js", "hls.min.js"):
        assert (CONSOLE_DIR / "vendor" / vendored).is_file(), "run `make console` (part of `make setup`)"
    page = http.get("/")
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert http.get("/console/vendor/tus.min.js").status_code == 200
    assert http.get("/console/../app.py").status_code == 404

    shots = Path(os.environ.get("VIDFARM_CONSOLE_SHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {shots}")
    clip = make_clip(tmp_path / "clip.mp4", *CLIP)
    assert 256 * 1024 < clip.stat().st_size < MAX_UPLOAD_BYTES  # seconds at the throttled speed
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("these are notes, not a video\n" * 100)
    too_large = tmp_path / "huge.mp4"
    too_large.write_bytes(clip.read_bytes() * (2 * MAX_UPLOAD_BYTES // clip.stat().st_size + 1))
    plan = {"url": api.url + "/", "key": API_KEY, "wrongKey": "not-" + API_KEY, "clip": str(clip),
            "notVideo": str(not_video), "tooLarge": str(too_large), "workerName": WORKER, "shots": str(shots)}

    publish_status(farm, pool_status(current=0))
    started = time.monotonic()
    driver = subprocess.Popen(["node", str(BROWSER_DIR / "console.mjs")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=BROWSER_DIR,
                              env={**os.environ, "CHROMIUM": CHROMIUM})
    assert driver.stdin and driver.stdout
    driver.stdin.write(json.dumps(plan) + "\n")
    driver.stdin.flush()
    result: dict[str, Any] = {}
    try:
        for line in driver.stdout:
            if line.startswith("NEED-WORKER"):
                start_worker(name=WORKER)
                publish_status(farm, pool_status(current=1))
                driver.stdin.write("started\n")
                driver.stdin.flush()
            elif line.startswith("RESULT "):
                result = json.loads(line.removeprefix("RESULT "))
    finally:
        driver.wait(timeout=60)
    print(f"console: browser session took {time.monotonic() - started:.1f} s")
    (tmp_path / "console.json").write_text(json.dumps(result, indent=1))
    why = json.dumps(result, indent=1)[-6000:]
    assert driver.returncode == 0 and result, "the driver printed no result"
    assert "failure" not in result, why
    assert result["errors"] == [], why
    steps = {s["name"]: s for s in result["steps"]}

    assert "not accepted" in steps["wrong key"]["message"] and "invalid API key" in steps["wrong key"]["message"]
    assert 0 < steps["uploading"]["progress"] < 1, why
    assert "%" in steps["uploading"]["meta"], why
    if "paused" in steps:  # tus: nothing more is sent while paused
        assert steps["paused"]["status"] == "paused" and steps["paused"]["after"] == steps["paused"]["progress"], why
    assert "No workers" in steps["farm without workers"]["workers"], why
    assert WORKER in steps["worker appeared"]["workers"], why
    assert "cpu" in steps["worker appeared"]["pools"], why
    assert steps["uploaded"]["status"] == "uploaded" and not steps["uploaded"]["error"], why
    assert steps["ready"]["seen"][-1]["status"] == "ready", why
    # Beside each rendition, what it looks like: VMAF (and PSNR), or "not scored" without a scorer.
    assert re.search(r"360p · 640×360 · \d+ kb/s · (VMAF \d+\.\d \(5th percentile|not scored)",
                     steps["scored"]["renditions"]), why
    # Live status came over Server-Sent Events, read with fetch so the key rides in a header.
    assert result["streams"] and set(result["streams"]) == {"with key"}, why

    played = steps["played"]
    assert played["ended"] and abs(played["currentTime"] - played["duration"]) < 0.2, why
    assert abs(played["duration"] - 4.0) < 0.2 and played["height"] == 360, why
    assert played["info"].startswith("HLS"), why

    assert "not a readable media file" in steps["not a video"]["message"], why
    assert "too large" in steps["too large"]["message"] or "larger than the limit" in steps["too large"]["message"], why

    video_id = steps["ready"]["id"]
    assert steps["deleted"]["player"], "the player closes when its video is deleted"
    assert http.get(f"/v1/videos/{video_id}").json()["status"] == "canceled"
    for name in ("sign-in-wrong-key", "uploading", "farm", "playing", "errors", "phone-videos", "phone-farm"):
        assert (shots / f"{name}.png").is_file(), name
