"""Adaptive streaming in a real browser: on a slow network hls.js plays a 1080p upload on a stream
rung whose bandwidth fits, without stalling; on a fast one it climbs to 1080p.

The network is throttled by Chromium itself (the DevTools protocol's network emulation, driven by
Playwright in tests/browser/play.mjs); the page is on another origin than the API, as in
test_browser_playback, whose page server and driver this test uses.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from tests.conftest import NEEDS_BROWSER, make_clip, upload, wait_for
from tests.test_browser_playback import describe, page_url, play  # noqa: F401 (page_url: a fixture)
from vidfarm.rungs import DEFAULT_STREAM_RUNGS
from vidfarm.settings import Settings

# 11 s of 1080p25: two segments per rung (6 s + 5 s). testsrc2 moves enough that its 720p needs well over
# 1 Mb/s, so only the stream-only rungs (480p, 360p) fit the slow network.
CLIP = ("testsrc2=size=1920x1080:rate=25:duration=11", True, [])
SLOW_KBPS = 1000
SEGMENT_S = 6.0
PLAY_TIMEOUT_MS = 60_000  # real time (playbackRate 1): 12 s of video, plus the start on a slow link

pytestmark = NEEDS_BROWSER


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The default ladder (1080p, 720p downloads) and stream rungs (480p, 360p); 6 s chunks."""
    return replace(settings, chunk_seconds=6.0, stream_rungs=DEFAULT_STREAM_RUNGS)


def variant_bandwidths(http, hls: str) -> dict[str, int]:
    """Rung folder -> BANDWIDTH of its variant in the master playlist."""
    lines = http.get(hls).text.splitlines()
    return {lines[i + 1].split("/")[0]: int(re.search(r"BANDWIDTH=(\d+)", line).group(1))
            for i, line in enumerate(lines) if line.startswith("#EXT-X-STREAM-INF")}


def video_segments(result: dict) -> list[str]:
    """The rung of every video media segment the page fetched, in order."""
    rungs = []
    for response in result["responses"]:
        parts = response["url"].split("?", 1)[0].split("/")
        if parts[-1].endswith(".m4s") and parts[-2] != "audio" and response["status"] == 200:
            rungs.append(parts[-2])
    return rungs


def scenario(url: str, throttle_kbps: int | None) -> dict:
    return {"player": "hls", "url": url, "level": None, "rate": 1, "timeoutMs": PLAY_TIMEOUT_MS,
            "throttleKbps": throttle_kbps}


def test_hls_fits_a_slow_network_and_climbs_on_a_fast_one(http, worker, page_url, tmp_path):  # noqa: F811
    source = make_clip(tmp_path / "clip.mp4", *CLIP)
    video = wait_for(http, upload(http, source).json()["id"], timeout_s=300)
    assert video["status"] == "ready", video["error"]
    hls = video["playback"]["hls"]
    bandwidths = variant_bandwidths(http, hls)
    assert sorted(bandwidths) == ["1080p", "360p", "480p", "720p"]
    fitting = {rung for rung, bps in bandwidths.items() if bps <= SLOW_KBPS * 1000}
    assert fitting and fitting <= {"480p", "360p"}, bandwidths  # what the test is about

    slow, fast = play(page_url, [scenario(hls, SLOW_KBPS), scenario(hls, None)], timeout_s=240)
    (tmp_path / "results.json").write_text(json.dumps([slow, fast], indent=1))

    why = describe(slow) + (f"\nstartup: {slow['startupMs']} ms\nstalls: {slow['stalls']}\n"
                            f"switches: {slow['switches']}\nsegments: {video_segments(slow)}")
    assert slow["ended"] and not slow["timedOut"], why
    assert abs(slow["currentTime"] - video["source"]["duration_s"]) <= 0.1, why
    assert [e for e in slow["playerErrors"] if e["fatal"]] == [], why
    # It ended on a rung whose bandwidth fits the link, and never waited longer than a segment lasts.
    assert f"{slow['endHeight']}p" in fitting, why
    assert all(stall["ms"] < SEGMENT_S * 1000 for stall in slow["stalls"]), why
    # And it started on such a rung: the first picture within two segments' time (starting on the
    # first variant of a highest-first master, 1080p, took about 30 s here).
    assert slow["startupMs"] < 2 * SEGMENT_S * 1000, why

    why = describe(fast) + f"\nswitches: {fast['switches']}\nsegments: {video_segments(fast)}"
    assert fast["ended"], why
    assert fast["endHeight"] == 1080 and "1080p" in video_segments(fast), why
