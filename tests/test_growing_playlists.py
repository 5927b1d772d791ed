"""What a player reads of a video still encoded, with a real worker and ffmpeg: HLS playlists that
grow from the catalog's record of the segments (only the contiguous prefix, EVENT + START, no end),
exactly today's VOD playlists at ready, 404 at once for a failed or deleted video, and playlists
still served after Redis lost everything (the catalog is the truth)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import httpx
import pytest
import redis

from tests.conftest import make_clip, upload, wait_for, wait_until
from vidfarm import lifecycle
from vidfarm.segments import is_playable, stream_state
from vidfarm.settings import Settings
from vidfarm.states import TaskKind, VideoStatus
from vidfarm.storage import stream_key

# 26 s at 10 fps in 6 s chunks: five chunks (the last one 2 s), so the playlists grow in several steps.
CLIP = ("testsrc2=size=640x360:rate=10:duration=26", True, [])
LADDER = ("360p",)
STREAM_RUNGS = ("240p",)
TRACKS = ("360p", "240p", "audio")
EVENT = ["#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-START:TIME-OFFSET=0,PRECISE=YES"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, ladder=LADDER, stream_rungs=STREAM_RUNGS, chunk_seconds=6.0)


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "clip.mp4", *CLIP)


@dataclass
class Snapshot:
    """A media playlist as a player got it, and the segments the catalog recorded right after."""

    text: str
    cache_control: str
    recorded: int

    @property
    def segments(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.startswith("seg_")]


def playable(http: httpx.Client, video_id: str, timeout_s: float = 120) -> dict:
    def check() -> dict | None:
        video = http.get(f"/v1/videos/{video_id}").json()
        assert video["status"] not in (VideoStatus.FAILED, VideoStatus.CANCELED), video
        return video if video["playback"] else None

    return wait_until(check, timeout_s, f"video {video_id} to be playable", every_s=0.05)


def recorded_segments(farm, video_id: str, track: str) -> int:
    return len(stream_state(farm.catalog.tasks(video_id))[track].segments)


def watch(farm, video_id: str, base: str, track: str) -> list[Snapshot]:
    """The track's media playlist as a player polling it sees it, until the video is ready."""
    seen: list[Snapshot] = []
    while True:
        answer = httpx.get(f"{base}/{track}/index.m3u8")
        assert answer.status_code == 200, answer.text
        seen.append(Snapshot(answer.text, answer.headers["cache-control"], recorded_segments(farm, video_id, track)))
        if "#EXT-X-ENDLIST" in answer.text:
            return seen
        time.sleep(0.1)


def test_playlists_grow_with_the_contiguous_prefix_then_are_todays_vod(farm, http, worker, clip):
    video_id = upload(http, clip).json()["id"]
    video = playable(http, video_id)
    assert video["status"] == VideoStatus.PROCESSING and video["playable_at"]
    assert video["playback"]["dash"] is None  # DASH waits for ready
    hls = video["playback"]["hls"]
    base = hls.rsplit("/", 1)[0]

    master = httpx.get(hls)
    assert master.status_code == 200 and master.headers["cache-control"] == "public, max-age=3"
    assert "BANDWIDTH=" in master.text and "AVERAGE-BANDWIDTH" not in master.text  # caps, not measured yet
    not_yet = httpx.get(f"{base}/manifest.mpd")
    assert not_yet.status_code == 404 and not_yet.json()["error"]["code"] == "not_ready"

    snapshots = watch(farm, video_id, base, "360p")
    growing, final = snapshots[:-1], snapshots[-1]
    # Seen growing: several lengths before the end, each a prefix the catalog had recorded.
    assert len({len(s.segments) for s in growing}) >= 2, [len(s.segments) for s in snapshots]
    for snapshot in growing:
        lines = snapshot.text.splitlines()
        assert lines[4:6] == EVENT and "#EXT-X-ENDLIST" not in lines, snapshot.text
        assert snapshot.segments == [f"seg_{n:05d}.m4s" for n in range(len(snapshot.segments))]
        assert 1 <= len(snapshot.segments) <= snapshot.recorded
        assert snapshot.cache_control == "public, max-age=3"
    # Every segment listed while growing plays, and is immutable.
    for name in growing[0].segments:
        segment = httpx.get(f"{base}/360p/{name}")
        assert segment.status_code == 200 and segment.content, name
        assert "immutable" in segment.headers["cache-control"]

    ready = wait_for(http, video_id)
    assert ready["status"] == VideoStatus.READY
    assert sum(t.kind == TaskKind.CHUNK for t in farm.catalog.tasks(video_id)) >= 3
    # At ready: exactly the VOD files finalize published, under the same URLs.
    for path in ("master.m3u8", *(f"{track}/index.m3u8" for track in TRACKS)):
        published = b"".join(farm.storage.read(stream_key(video_id, path), None).chunks).decode()
        served = httpx.get(f"{base}/{path}")
        assert served.text == published, path
        assert "immutable" in served.headers["cache-control"]
    assert final.text == b"".join(farm.storage.read(stream_key(video_id, "360p/index.m3u8"), None).chunks).decode()
    assert httpx.get(f"{base}/manifest.mpd").status_code == 200


@pytest.mark.parametrize("ending", ["failed", "deleted"])
def test_redis_wiped_still_plays_and_an_ended_video_404s_at_once(farm, http, worker, clip, settings, ending):
    video_id = upload(http, clip).json()["id"]
    base = playable(http, video_id)["playback"]["hls"].rsplit("/", 1)[0]
    # The video row is in Redis's cache now (the play route read it); Redis loses everything.
    assert httpx.get(f"{base}/master.m3u8").status_code == 200
    redis.Redis.from_url(settings.redis_url).flushall()
    paths = ["master.m3u8", "360p/index.m3u8", "audio/index.m3u8", "360p/init.mp4", "360p/seg_00000.m4s",
             "audio/seg_00000.m4s"]
    for path in paths:
        assert httpx.get(f"{base}/{path}").status_code == 200, path
    assert is_playable(stream_state(farm.catalog.tasks(video_id)))

    if ending == "failed":
        assert lifecycle.fail(farm, video_id, "media_error", "the test failed it")
    else:
        assert http.delete(f"/v1/videos/{video_id}").status_code == 204
    for path in paths:  # from the very next request: no stalled stream that never ends
        gone = httpx.get(f"{base}/{path}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found", path
