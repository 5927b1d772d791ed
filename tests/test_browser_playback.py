"""Playback in a real browser: Debian's chromium, headless, plays a ready video's HLS with hls.js and
its DASH with dash.js, from a page on another origin than the API, to the end and at every level.

Playwright (npm `playwright-core`) drives the browser from tests/browser/play.mjs; the players come
from tests/browser/node_modules (`make setup` runs `npm ci` there) and are served, with the page, by
a static server on its own port, so every manifest and segment request is a cross-origin one.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import BACKENDS, CHROMIUM, NEEDS_BROWSER, ROOT, make_clip, upload, wait_for, wait_until
from uploader import playback
from vidfarm.rungs import DEFAULT_STREAM_RUNGS
from vidfarm.settings import Settings
from vidfarm.states import TaskKind

BROWSER_DIR = ROOT / "tests" / "browser"
# Resolved: a checkout may link node_modules to a shared install, and served paths are checked against it.
NODE_MODULES = (BROWSER_DIR / "node_modules").resolve()
# Only the players are served from node_modules, not whatever else npm installed.
VENDORED = ("hls.js/dist/", "dashjs/dist/")
# 13 s at 25 fps in 6 s chunks (one segment each): two chunks stitched, three segments per rung
# (6 s + 6 s + 1 s), so a chunk join, a SegmentTimeline with two entries and a short last segment are all
# exercised.
CLIP = ("testsrc2=size=1280x720:rate=25:duration=13", True, [])
LADDER = ("720p", "360p")
# The stream also carries 480p (a default stream-only rung) between the two downloads: every level
# below is played, forced, in both players.
STREAMED = ("720p", "480p", "360p")
HEIGHTS = sorted(int(rung.removesuffix("p")) for rung in STREAMED)  # a landscape clip: height = rung
CHUNK_SECONDS = 6.0
RATE = 4  # playbackRate: 13 s of video in under 4 s per playback
PLAY_TIMEOUT_MS = 20_000
END_TOLERANCE_S = 0.1
HALF_FRAME_S = 0.02  # at 25 fps
AAC_FRAME_S = 1024 / 48000
# hls.js's note that the playhead stood still for a moment: a decoder slowed by a loaded machine at
# 4x speed, not a fault of the stream. Non-fatal; every other error event fails the test.
STALL = "bufferStalledError"

pytestmark = NEEDS_BROWSER


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two downloads, the default stream rungs, small chunks (the worker gets them through Settings.to_env)."""
    return replace(settings, ladder=LADDER, stream_rungs=DEFAULT_STREAM_RUNGS, chunk_seconds=CHUNK_SECONDS)


class PageHandler(SimpleHTTPRequestHandler):
    """player.html, player.js and the players' dist files; 404 for anything else."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path in ("/player.html", "/player.js"):
            return str(BROWSER_DIR / path.lstrip("/"))
        rest = path.removeprefix("/vendor/")
        target = (NODE_MODULES / rest).resolve()
        if path.startswith("/vendor/") and rest.startswith(VENDORED) and target.is_relative_to(NODE_MODULES):
            return str(target)
        return str(BROWSER_DIR / "no-such-file")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not every static request


@pytest.fixture
def page_url() -> Iterator[str]:
    """The player page on its own port: another origin than the API, as on a customer's site."""
    if not (NODE_MODULES / "playwright-core").is_dir():
        pytest.fail(f"{NODE_MODULES} is missing: run `make setup` (npm ci in tests/browser)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(PageHandler, directory=str(BROWSER_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/player.html"
    server.shutdown()
    thread.join(timeout=10)


def play(page_url: str, scenarios: list[dict[str, Any]], timeout_s: float = 180) -> list[dict[str, Any]]:
    """Every scenario in one browser, each in a fresh page; what each page saw."""
    done = subprocess.run(["node", str(BROWSER_DIR / "play.mjs"), page_url], input=json.dumps(scenarios),
                          capture_output=True, text=True, cwd=BROWSER_DIR, timeout=timeout_s,
                          env={**os.environ, "CHROMIUM": CHROMIUM})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def scenario(player: str, url: str, level: int | None = None) -> dict[str, Any]:
    return {"player": player, "url": url, "level": level, "rate": RATE, "timeoutMs": PLAY_TIMEOUT_MS}


def segment_folders(result: dict[str, Any]) -> set[str]:
    """Rungs whose video media segments the page fetched (audio/ and init segments left out)."""
    folders = set()
    for response in result["responses"]:
        parts = response["url"].split("?", 1)[0].split("/")  # a presigned URL's query left out
        if parts[-1].endswith(".m4s") and parts[-2] != "audio":
            folders.add(parts[-2])
    return folders


def describe(result: dict[str, Any]) -> str:
    """Enough of a failed playback to see why, in the assertion message."""
    keep = ("player", "level", "finish", "ended", "currentTime", "duration", "mediaErrors", "playerErrors",
            "levels", "heights", "tracks", "console")
    summary = {k: result.get(k) for k in keep}
    summary["responses"] = [(r["url"].rsplit("/", 2)[-2:], r["status"]) for r in result["responses"]]
    return json.dumps(summary, indent=1)


def assert_played_to_the_end(result: dict[str, Any], duration_s: float) -> None:
    why = describe(result)
    assert result["ended"], "no `ended` event: " + why
    assert result["mediaErrors"] == [], why
    assert [e for e in result["playerErrors"] if e["fatal"] or e["details"] != STALL] == [], why
    assert abs(result["currentTime"] - result["duration"]) <= END_TOLERANCE_S, why
    # The presentation is as long as the source, not a segment longer or shorter.
    assert abs(result["duration"] - duration_s) <= END_TOLERANCE_S, why
    # 307: a segment on S3, redirected to a presigned URL; the bucket's answer must carry CORS too.
    assert all(r["status"] in (200, 206, 307) for r in result["responses"] if "/v1/play/" in r["url"]), why
    from_bucket = [r for r in result["responses"] if "X-Amz-Signature=" in r["url"]]
    assert all(r["status"] in (200, 206) and r["cors"] for r in from_bucket), why
    # Where each track landed on the browser's timeline: picture and sound both start at 0 with no
    # gap, as in the source (an edit list that MSE ignores once put the picture 2 frames late). The
    # sound may run a little past the picture: AAC codes whole frames of 1024 samples.
    tracks = {t["mime"].split("/")[0]: t["buffered"] for t in result["tracks"]}
    assert len(tracks["video"]) == 1 and len(tracks["audio"]) == 1, why
    (video_start, video_end), (audio_start, audio_end) = tracks["video"][0], tracks["audio"][0]
    assert abs(video_start) <= HALF_FRAME_S and abs(video_end - duration_s) <= HALF_FRAME_S, why
    assert abs(audio_start) <= HALF_FRAME_S and -HALF_FRAME_S <= audio_end - duration_s <= 2 * AAC_FRAME_S, why


# On S3 the players follow segment redirects to presigned URLs: the bucket's CORS rule answers them.
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_hls_and_dash_play_to_the_end_at_every_level(farm, http, worker, page_url, tmp_path, backend):
    source = make_clip(tmp_path / "clip.mp4", *CLIP)
    created = upload(http, source)
    assert created.status_code == 201, created.text
    video = wait_for(http, created.json()["id"])
    assert video["status"] == "ready", video["error"]
    assert sorted(r["name"] for r in video["renditions"]) == sorted(LADDER)
    assert sum(t.kind == TaskKind.CHUNK for t in farm.catalog.tasks(video["id"])) >= 2  # stitched joins to play over
    hls, dash = video["playback"]["hls"], video["playback"]["dash"]
    # The page is on another origin: every answer the players read depends on CORS.
    assert not page_url.startswith(hls.split("/v1/")[0])

    row = farm.catalog.get(video["id"])
    key = playback.signing_key(farm.settings)
    expired = playback.sign(key, video["id"], row["tenant"], int(time.time()) - 60)
    expired_prefix = hls.rsplit("/", 2)[0] + "/" + expired

    rungs = len(STREAMED)
    scenarios = [
        scenario("hls", hls), scenario("dash", dash),
        *(scenario("hls", hls, level) for level in range(rungs)),
        *(scenario("dash", dash, level) for level in range(rungs)),
        scenario("hls", f"{expired_prefix}/master.m3u8"), scenario("dash", f"{expired_prefix}/manifest.mpd"),
    ]
    started = time.monotonic()
    results = play(page_url, scenarios)
    (tmp_path / "results.json").write_text(json.dumps(results, indent=1))
    print(f"browser: {len(results)} playbacks in {time.monotonic() - started:.1f} s")

    for result in results[: 2 + 2 * rungs]:
        assert_played_to_the_end(result, video["source"]["duration_s"])
        from_bucket = [r for r in result["responses"] if "X-Amz-Signature=" in r["url"]]
        assert bool(from_bucket) == (backend == "s3"), describe(result)
        assert sorted(level["height"] for level in result["levels"]) == HEIGHTS, describe(result)

    forced = results[2: 2 + 2 * rungs]
    for player in ("hls", "dash"):  # every rung forced once in each player
        assert sorted(r["forcedHeight"] for r in forced if r["player"] == player) == HEIGHTS
    for result in forced:
        # Forcing a level plays that level: only its segments are fetched, and the picture has its height.
        assert segment_folders(result) == {f"{result['forcedHeight']}p"}, describe(result)
        assert result["heights"] == [result["forcedHeight"]], describe(result)

    for result in results[2 + 2 * rungs:]:
        why = describe(result)
        assert not result["ended"], why
        assert result["playerErrors"], "no error event for an expired token: " + why
        assert any(e["fatal"] for e in result["playerErrors"]), why
        answers = [r for r in result["responses"] if "/v1/play/" in r["url"]]
        # Only the manifest was asked for (players may retry it), and refused; the 403 carries CORS,
        # so the player could read the status instead of an opaque network failure.
        assert answers and all(r["status"] == 403 and r["cors"] == "*" for r in answers), why
        if result["player"] == "hls":
            assert result["playerErrors"][0]["code"] == 403, why


# 30 s of 720p at 25 fps, three stream rungs, one worker: it stays `processing` long after it is
# playable (several chunks of 6 s segments), so the browser starts on the growing playlists. A
# multiple of 6 s: the sound runs one AAC frame past the last whole segment, a closing fragment
# hls.js would never count as buffered (no `ended`) were it not joined to the segment before it.
GROWING_CLIP = ("testsrc2=size=1280x720:rate=25:duration=30", True, [])
GROWING_TIMEOUT_MS = 240_000


def test_hls_plays_a_processing_video_from_the_start_to_the_end(farm, http, worker, page_url, tmp_path):
    """hls.js, on a page of another origin, opens a video that is playable but still processing: it
    starts at 0 (not at the live edge), plays on as segments arrive, and ends where the source does
    once the video is ready."""
    source = make_clip(tmp_path / "long.mp4", *GROWING_CLIP)
    video_id = upload(http, source).json()["id"]

    def playable() -> dict | None:
        video = http.get(f"/v1/videos/{video_id}").json()
        assert video["status"] not in ("failed", "canceled"), video
        return video if video["playback"] else None

    video = wait_until(playable, 180, "the video to be playable", every_s=0.1)
    assert video["status"] == "processing" and video["playback"]["dash"] is None
    growing = {**scenario("hls", video["playback"]["hls"]), "rate": 1, "timeoutMs": GROWING_TIMEOUT_MS,
               "keepPlaylists": True, "hlsLog": True}
    [result] = play(page_url, [growing], timeout_s=GROWING_TIMEOUT_MS / 1000 + 60)
    (tmp_path / "results.json").write_text(json.dumps(result, indent=1))

    ready = http.get(f"/v1/videos/{video_id}").json()
    assert ready["status"] == "ready"
    why = describe(result)
    assert_played_to_the_end(result, ready["source"]["duration_s"])
    assert result["startedAt"] is not None and result["startedAt"] <= END_TOLERANCE_S, why
    media = [p["text"] for p in result["playlists"] if p["url"].endswith("p/index.m3u8")]
    # The player began on a growing playlist (EVENT, no end, only part of the video) and saw it end.
    first, last = media[0], media[-1]
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in first and "#EXT-X-ENDLIST" not in first, why
    assert "#EXT-X-ENDLIST" in last and first.count("seg_") < last.count("seg_"), why
