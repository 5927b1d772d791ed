"""The streaming ladder end to end: stream-only rungs below the MP4 downloads, never above the
source, in the HLS master and the DASH MPD, keyframe- and segment-aligned with the downloads."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import ffprobe, make_clip, upload, wait_for
from vidfarm.rungs import DEFAULT_STREAM_RUNGS

MPD_NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
# 13 s at 25 fps in 6 s chunks: a chunk join and three segments per rung (6 s + 6 s + 1 s) for the
# 1080p source; the smaller ones only need to show which rungs they get.
RATE = 25
SOURCES = {
    "1080p": (f"testsrc2=size=1920x1080:rate={RATE}:duration=13", ["1920x1080", "1280x720", "854x480", "640x360"]),
    "720p": (f"testsrc2=size=1280x720:rate={RATE}:duration=3", ["1280x720", "854x480", "640x360"]),
    "360p": (f"testsrc2=size=640x360:rate={RATE}:duration=3", ["640x360"]),
}
DOWNLOADS = {"1080p": {"1080p", "720p"}, "720p": {"720p"}, "360p": {"360p"}}


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, stream_rungs=DEFAULT_STREAM_RUNGS)  # the default ladder too


def attributes(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1])}


def variants(http, hls: str) -> list[tuple[dict[str, str], str]]:
    lines = http.get(hls).text.splitlines()
    return [(attributes(line), lines[i + 1]) for i, line in enumerate(lines) if line.startswith("#EXT-X-STREAM-INF")]


def rung_picture(http, base: str, rung: str, target: Path) -> Path:
    """The rung's whole picture as players get it: its init segment, then every media segment."""
    media = http.get(f"{base}/{rung}/index.m3u8").text
    names = [line for line in media.splitlines() if line and not line.startswith("#")]
    target.write_bytes(b"".join(http.get(f"{base}/{rung}/{name}").content for name in ["init.mp4", *names]))
    return target


def keyframes_and_frames(path: Path) -> tuple[list[str], int]:
    info = ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags")
    packets = info["packets"]
    keys = sorted((p["pts_time"] for p in packets if "K" in p["flags"]), key=float)
    return keys, len(packets)


@pytest.mark.parametrize("size", list(SOURCES))
def test_the_stream_carries_every_rung_up_to_the_source_aligned(size, http, worker, tmp_path):
    lavfi, resolutions = SOURCES[size]
    source = make_clip(tmp_path / f"{size}.mp4", lavfi, True, [])
    video = wait_for(http, upload(http, source).json()["id"])
    assert video["status"] == "ready", video["error"]
    # Stream-only rungs are no downloads: the API lists (and serves) the MP4s it always did.
    assert {r["name"] for r in video["renditions"]} == DOWNLOADS[size]
    hls = video["playback"]["hls"]
    base = hls.rsplit("/", 1)[0]

    # Players start on the first variant listed: the best one within 1 Mb/s (else the lowest), then
    # the others highest first.
    listed = variants(http, hls)
    fitting = [pair for pair in listed if int(pair[0]["BANDWIDTH"]) <= 1_000_000] or listed[-1:]
    start = max(fitting, key=lambda pair: int(pair[0]["BANDWIDTH"]))
    assert listed[0] == start
    listed = sorted(listed, key=lambda pair: -int(pair[0]["RESOLUTION"].split("x")[1]))
    assert [v["RESOLUTION"] for v, _ in listed] == resolutions
    for variant, _ in listed:
        assert re.fullmatch(r"avc1\.6400[0-9a-f]{2},mp4a\.40\.2", variant["CODECS"])
        assert int(variant["AVERAGE-BANDWIDTH"]) <= int(variant["BANDWIDTH"])
        assert variant["FRAME-RATE"] == f"{RATE}.000"
    bandwidths = [int(v["BANDWIDTH"]) for v, _ in listed]
    assert bandwidths == sorted(bandwidths, reverse=True)  # a lower rung costs a player less
    rungs = [uri.split("/")[0] for _, uri in listed]
    stream_only = [rung for rung in rungs if rung not in DOWNLOADS[size]]
    for rung in stream_only:
        assert http.get(f"/v1/videos/{video['id']}/renditions/{rung}").status_code == 404

    mpd = ET.fromstring(http.get(video["playback"]["dash"]).content)
    video_set = mpd.find("d:Period/d:AdaptationSet[@contentType='video']", MPD_NS)
    reps = video_set.findall("d:Representation", MPD_NS)
    assert [f"{r.get('width')}x{r.get('height')}" for r in reps] == resolutions
    assert [int(r.get("bandwidth")) for r in reps] == sorted((int(r.get("bandwidth")) for r in reps), reverse=True)
    timelines = {ET.tostring(r.find("d:SegmentTemplate/d:SegmentTimeline", MPD_NS)) for r in reps}
    assert len(timelines) == 1  # every rung cut into the same segments

    # Switchable: keyframes on the same frames in every rung, and frame-exact (the same frame count).
    seen = {rung: keyframes_and_frames(rung_picture(http, base, rung, tmp_path / f"{rung}.mp4")) for rung in rungs}
    keys, frames = seen[rungs[0]]
    assert all(value == (keys, frames) for value in seen.values()), seen
    counted = ffprobe(source, "-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets")
    assert frames == int(counted["streams"][0]["nb_read_packets"])
    assert len(keys) == -(-frames // (2 * RATE))  # one every 2 s
