"""Chunks write their own final CMAF segments, the audio task stores its segments as they close, the
catalog records them, and the video becomes playable once the first of every track exists.

With real workers, Redis, ffmpeg and storage. The segments a chunk cut on its own, moved onto the
video's timeline, must be exactly those of the stitched rendition cut in one pass (what finalize
did before), so that players see one continuous stream across chunk joins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from tests.conftest import API_KEY, BACKENDS, upload, wait_for, wait_until
from tests.test_faults import HEARTBEAT_TTL_S, ffmpeg_pids
from transcoder import fragments
from transcoder import job as job_module
from transcoder.command import CUT_LIST, segment_args
from transcoder.job import segment_seconds
from transcoder.ladder import OutputPlan
from uploader.auth import tenant_of
from vidfarm import events, segments
from vidfarm.outbox import EVENT_TYPES
from vidfarm.package import SHORT_TAIL_S, read_cut_list

NTSC = "30000/1001"
SECONDS = 20  # 6 s chunks: one segment, one segment, the rest (8 s: a full segment and a short one)
RUNG = "360p"
AAC_FRAME_S = 1024 / 48000


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, ladder=(RUNG,), worker_heartbeat_ttl_s=HEARTBEAT_TTL_S)


def make_clip(path: Path, seconds: float, size: str = "640x360", rate: str = NTSC) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds},scroll=h=0.01",
                    "-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("chunk-segments") / "clip.mp4", SECONDS)


@pytest.fixture
def published_events(farm) -> Iterator[list[dict]]:
    """Every event published on any video's channel while the test runs."""
    listener = farm.redis.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(events.channel("*"))
    seen: list[dict] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if (message := listener.get_message(timeout=0.1)) is not None:
                seen.append(json.loads(message["data"]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield seen
    stop.set()
    thread.join()
    listener.close()


def tasks(farm, video_id: str) -> dict:
    return {t.name: t for t in farm.catalog.tasks(video_id)}


def first_chunk_alone(farm, video_id: str) -> dict | None:
    """The tasks once chunk 0 is done while the last chunk is not."""
    now = tasks(farm, video_id)
    done = {name for name, t in now.items() if t.status == "done"}
    return now if "chunk-00000" in done and "chunk-00002" not in done else None


def frames(path: Path, stream: str = "v:0", *codec: str) -> list[tuple[str, str]]:
    """(pts, md5) of every decoded picture (or, with `-c copy`, of every packet) of `stream`."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", f"0:{stream}",
                           *codec, "-f", "framemd5", "-"], capture_output=True, text=True, check=True)
    rows = [line.split(",") for line in done.stdout.splitlines() if not line.startswith("#")]
    return [(row[2].strip(), row[5].strip()) for row in rows]  # after the md5: side data, if any


def cut_in_one_pass(download: Path, stream: str, folder: Path) -> list[tuple[str, float]]:
    """What finalize did before: the stitched file's stream cut into segments in one pass."""
    folder.mkdir()
    plan = OutputPlan(RUNG, 640, 360, Fraction(NTSC), 1000)
    subprocess.run(["ffmpeg", *segment_args(download, stream, folder, segment_seconds(plan))], check=True)
    return read_cut_list(folder / CUT_LIST)


def test_chunks_publish_segments_of_the_whole_timeline_and_the_video_becomes_playable_once(
        clip, http, farm, start_worker, published_events, tmp_path):
    webhook = farm.webhooks.create(tenant_of(API_KEY), "http://127.0.0.1:9/hook", EVENT_TYPES)
    start_worker()
    video_id = upload(http, clip).json()["id"]

    # Chunk 0's segments are recorded and stored while the later chunks are still to come.
    early = wait_until(lambda: first_chunk_alone(farm, video_id), 120, "chunk 0 done before the last chunk")
    result = early["chunk-00000"].result
    assert result["first_segment"] == 0 and set(result["segments"]) == set(result["tracks"]) >= {RUNG}
    for rung, made in result["segments"].items():
        assert [d for d, _ in made] == [6.006]
        track = result["tracks"][rung]
        assert track["codecs"].startswith("avc1.64") and track["fps"] == NTSC and track["cap_bps"] > 0
        kept = farm.storage.attempt_file(video_id, result["attempt"], f"{rung}/seg_00000.m4s", tmp_path / "kept")
        assert kept.stat().st_size == made[0][1]
        assert farm.storage.attempt_file(video_id, result["attempt"], f"{rung}/init.mp4", tmp_path / "kept").exists()

    ready = wait_for(http, video_id, timeout_s=240)
    assert ready["status"] == "ready", ready["error"]
    row = farm.catalog.get(video_id, cached=False)
    assert row["playable_at"] is not None and row["playable_at"] <= row["updated_at"]
    time.sleep(0.5)  # the last events arrive
    assert [e["type"] for e in published_events if e["id"] == video_id].count("playable") == 1
    assert sorted(d["event"] for d in farm.webhooks.deliveries(webhook["id"])) == ["video.playable", "video.ready"]

    base = ready["playback"]["hls"].rsplit("/", 1)[0]
    download = tmp_path / "download.mp4"
    download.write_bytes(http.get(f"/v1/videos/{video_id}/renditions/{RUNG}").content)
    assert_segments_equal_one_pass(http, base, download, tmp_path)
    assert_audio_cut_as_in_one_pass(http, base, download, tmp_path)


def published(http, base: str, folder: str, name: str) -> bytes:
    answer = http.get(f"{base}/{folder}/{name}")
    assert answer.status_code == 200, (folder, name)
    return answer.content


def assert_segments_equal_one_pass(http, base: str, download: Path, tmp_path: Path) -> None:
    """Every segment the chunks cut has the decode time (and the bytes) the one-pass cut of the
    stitched rendition gives, and init + segments decode to the rendition's very frames."""
    cuts = cut_in_one_pass(download, "v:0", tmp_path / "one-pass")
    durations = [round(d, 3) for _, d in cuts]
    assert durations[:3] == [6.006] * 3 and len(durations) == 4  # 3 chunks, a short last segment
    joined = bytearray(published(http, base, RUNG, "init.mp4"))
    for name, _ in cuts:
        ours = published(http, base, RUNG, name)
        theirs = (tmp_path / "one-pass" / name).read_bytes()
        assert fragments.decode_times(ours) == fragments.decode_times(theirs), name
        assert ours == theirs, name
        joined += ours
    (tmp_path / "joined.mp4").write_bytes(joined)
    pictures = frames(download)
    assert frames(tmp_path / "joined.mp4") == pictures
    assert len(pictures) == round(sum(durations) * Fraction(NTSC))


def assert_audio_cut_as_in_one_pass(http, base: str, download: Path, tmp_path: Path) -> None:
    """The audio segments written while the track was encoded are cut where cutting the finished
    track would cut them: the same durations (the last within one AAC frame), so HLS and DASH agree."""
    cuts = cut_in_one_pass(download, "a:0", tmp_path / "audio-one-pass")
    playlist = published(http, base, segments.AUDIO, "index.m3u8").decode()
    ours = [float(line[8:].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF:")]
    assert len(ours) == len(cuts)
    assert ours[:-1] == [d for _, d in cuts][:-1]
    assert abs(ours[-1] - cuts[-1][1]) <= AAC_FRAME_S
    # Joined, the segments hold the download's very packets (nothing lost or repeated at a join), at
    # the times the one-pass cut gives them.
    names = ["init.mp4", *(segments.segment_name(i) for i in range(len(ours)))]
    joined, one_pass = tmp_path / "audio-joined.mp4", tmp_path / "audio-one-pass.mp4"
    joined.write_bytes(b"".join(published(http, base, segments.AUDIO, name) for name in names))
    one_pass.write_bytes(b"".join((tmp_path / "audio-one-pass" / name).read_bytes() for name in names))
    packets = frames(joined, "a:0", "-c", "copy")
    assert packets == frames(one_pass, "a:0", "-c", "copy")
    assert [md5 for _, md5 in packets] == [md5 for _, md5 in frames(download, "a:0", "-c", "copy")]


WHOLE_SECONDS = 30  # five whole segments: the sound runs one AAC frame (its priming) past them
MPD = "{urn:mpeg:dash:schema:mpd:2011}"


def test_a_clip_of_whole_segments_ends_its_audio_in_a_full_segment_with_the_same_sound(
        http, worker, tmp_path):
    """The lone AAC frame past the last whole segment (hls.js never counts it as buffered, so the
    stream never ends) is part of the last audio segment instead: in HLS and DASH alike, and joined,
    the segments hold the download's very packets."""
    source = make_clip(tmp_path / "whole.mp4", WHOLE_SECONDS, size="320x180", rate="5")
    ready = wait_for(http, upload(http, source).json()["id"], timeout_s=240)
    assert ready["status"] == "ready", ready["error"]
    base = ready["playback"]["hls"].rsplit("/", 1)[0]
    playlist = published(http, base, segments.AUDIO, "index.m3u8").decode()
    durations = [float(line[8:].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF:")]
    assert len(durations) == WHOLE_SECONDS // 6 and min(durations) >= SHORT_TAIL_S, playlist
    assert 0 <= sum(durations) - WHOLE_SECONDS <= 2 * AAC_FRAME_S, playlist

    mpd = ET.fromstring(http.get(ready["playback"]["dash"]).content)
    audio = mpd.find(f".//{MPD}AdaptationSet[@contentType='audio']//{MPD}SegmentTimeline")
    timeline = [int(s.get("d")) / 48000 for s in audio for _ in range(int(s.get("r", 0)) + 1)]
    assert timeline == pytest.approx(durations, abs=1 / 48000)

    names = ["init.mp4", *(segments.segment_name(i) for i in range(len(durations)))]
    joined = tmp_path / "audio-joined.mp4"
    joined.write_bytes(b"".join(published(http, base, segments.AUDIO, name) for name in names))
    download = tmp_path / "download.mp4"
    download.write_bytes(http.get(f"/v1/videos/{ready['id']}/renditions/{ready['renditions'][0]['name']}").content)
    packets = frames(joined, "a:0", "-c", "copy")
    assert [md5 for _, md5 in packets] == [md5 for _, md5 in frames(download, "a:0", "-c", "copy")]
    last = published(http, base, segments.AUDIO, names[-1])
    assert len(fragments.decode_times(last)) == 2  # the last whole segment and the lone frame


def audio_result(farm, video_id: str) -> dict | None:
    task = tasks(farm, video_id)["audio"]
    return task.result if task.status == "running" and (task.result or {}).get("segments") else None


def test_audio_segments_are_stored_and_recorded_while_the_track_is_encoded(http, farm, tmp_path):
    """Ten minutes of sound (a tiny picture): its first segments are kept and in the catalog while
    ffmpeg is still encoding the rest."""
    source = make_clip(tmp_path / "long.mp4", 600, size="64x64", rate="1")
    video_id = upload(http, source).json()["id"]
    audio = tasks(farm, video_id)["audio"]
    job_module.use_farm(farm)
    attempt = job_module.AudioAttempt(farm, video_id, "audio", audio.job_id)
    running = threading.Thread(target=attempt.run)
    running.start()
    try:
        partial = wait_until(lambda: audio_result(farm, video_id), 60, "audio segments while encoding")
    finally:
        running.join(timeout=120)
    assert partial["complete"] is False and partial["attempt"] == audio.job_id
    done = tasks(farm, video_id)["audio"]
    assert done.status == "done" and done.result["complete"] is True
    # 600 s is 100 whole segments: the lone AAC frame past them joined the last one.
    assert len(done.result["segments"]) == 100 > len(partial["segments"])
    assert min(seconds for seconds, _ in done.result["segments"]) >= SHORT_TAIL_S
    assert done.result["segments"][:len(partial["segments"])] == partial["segments"]
    for index, (_, size) in enumerate(done.result["segments"]):
        name = f"audio/{segments.segment_name(index)}"
        assert farm.storage.attempt_file(video_id, audio.job_id, name, tmp_path / "kept").stat().st_size == size


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_worker_killed_during_the_first_chunk_still_makes_it_playable_then_ready(
        http, farm, start_worker, reconciler, tmp_path):
    source = make_clip(tmp_path / "big.mp4", 14, size="1280x720", rate="30")
    first = start_worker()
    video_id = upload(http, source).json()["id"]
    wait_until(lambda: ffmpeg_pids(f"{video_id}-chunk-00000"), 60, "chunk 0 encoding")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)

    start_worker()
    ready = wait_for(http, video_id, timeout_s=240)
    assert ready["status"] == "ready", ready["error"]
    assert tasks(farm, video_id)["chunk-00000"].attempts == 2
    assert farm.catalog.get(video_id, cached=False)["playable_at"] is not None
    assert http.get(ready["playback"]["hls"]).status_code == 200
    assert reconciler == []


def test_chunks_encoded_before_segments_were_recorded_run_again_at_finalize(http, farm, start_worker, tmp_path):
    """A rolling upgrade: a chunk done by a vidfarm that recorded no segments. Finalize runs it again
    (and waits for it) instead of failing the video."""
    source = make_clip(tmp_path / "clip.mp4", 9, rate="30")  # two chunks: 6 s and 3 s
    video_id = upload(http, source).json()["id"]
    job_module.use_farm(farm)
    for task in farm.catalog.tasks(video_id):  # here, so that finalize cannot start before the change
        if task.kind != "finalize":
            assert job_module.run_task(video_id, task.name, task.job_id) == "done"
    old = tasks(farm, video_id)["chunk-00001"]
    unrecorded = {k: v for k, v in old.result.items() if k not in ("segments", "first_segment", "tracks")}
    assert farm.catalog.update_task(video_id, old.name, expect={"job_id": old.job_id}, result=unrecorded)

    start_worker()
    ready = wait_for(http, video_id, timeout_s=120)
    assert ready["status"] == "ready", ready["error"]
    again = tasks(farm, video_id)["chunk-00001"]
    assert again.attempts == 2 and again.job_id != old.job_id and "segments" in again.result
    base = ready["playback"]["hls"].rsplit("/", 1)[0]
    playlist = published(http, base, RUNG, "index.m3u8").decode()
    names = [line for line in playlist.splitlines() if line.endswith(".m4s")]
    assert names == ["seg_00000.m4s", "seg_00001.m4s"] and "#EXT-X-ENDLIST" in playlist
    joined = tmp_path / "joined.mp4"
    joined.write_bytes(b"".join(published(http, base, RUNG, n) for n in ["init.mp4", *names]))
    assert len(frames(joined)) == 9 * 30
