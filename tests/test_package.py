"""The HLS + DASH package of a ready video, checked against ffprobe's numbers, and the playback URLs
that serve it: signed expiring tokens, tenants, CORS, Range, content types."""

from __future__ import annotations

import math
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, OTHER_KEY, assert_no_scratch_left, ffprobe, upload, wait_for
from uploader.playback import sign, signing_key
from vidfarm.rungs import DEFAULT_STREAM_RUNGS

MPD_NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
DOWNLOADS = ("720p", "360p")


@pytest.fixture
def settings(settings):
    return replace(settings, chunk_seconds=6.0, ladder=DOWNLOADS, stream_rungs=DEFAULT_STREAM_RUNGS)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("package") / "source.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=1280x720:rate=30000/1001:duration=13", "-f", "lavfi",
                    "-i", "sine=frequency=330:duration=13", "-c:v", "libx264", "-preset", "ultrafast",
                    "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


@pytest.fixture
def ready(http, worker, source, settings) -> dict:
    video = wait_for(http, upload(http, source).json()["id"])
    assert video["status"] == "ready", video["error"]
    assert_no_scratch_left(settings)
    return video


def attributes(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1])}


def probe_url(url: str, *args: str) -> dict:
    return ffprobe(url, *args)  # type: ignore[arg-type]


def segment_probe(http, base: str, folder: str, name: str, tmp: Path) -> dict:
    """A media segment is playable only after its init segment: probe the two joined."""
    joined = tmp / f"{folder}-{name}.mp4"
    joined.write_bytes(http.get(f"{base}/{folder}/init.mp4").content + http.get(f"{base}/{folder}/{name}").content)
    return ffprobe(joined, "-show_entries", "packet=pts_time,duration_time,flags,codec_type")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_hls_master_and_media_playlists_match_the_segments(http, ready, tmp_path):
    hls = ready["playback"]["hls"]
    base = hls.rsplit("/", 1)[0]
    master = http.get(hls)
    assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
    lines = master.text.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-INDEPENDENT-SEGMENTS" in lines
    audio = attributes(next(line for line in lines if line.startswith("#EXT-X-MEDIA:")))
    variants = [(attributes(line), lines[i + 1]) for i, line in enumerate(lines)
                if line.startswith("#EXT-X-STREAM-INF")]
    # 480p: a stream-only rung (the default VIDFARM_STREAM_RUNGS) between the two downloads.
    # Listed from where players start (the best variant within 1 Mb/s), then highest first.
    assert sorted(v["RESOLUTION"] for v, _ in variants) == ["1280x720", "640x360", "854x480"]
    start = [v for v, _ in variants if int(v["BANDWIDTH"]) <= 1_000_000][0]
    assert variants[0][0] == start

    audio_sizes = segment_sizes(http, base, audio["URI"])
    for variant, uri in variants:
        rung = uri.split("/")[0]
        rendition = tmp_path / f"{rung}.mp4"
        if rung in DOWNLOADS:
            rendition.write_bytes(http.get(f"/v1/videos/{ready['id']}/renditions/{rung}").content)
        else:  # stream-only: no MP4 to download, its first segment says the same
            first = [http.get(f"{base}/{rung}/{name}").content for name in ("init.mp4", "seg_00000.m4s")]
            rendition.write_bytes(b"".join(first))
        stream = ffprobe(rendition, "-select_streams", "v:0", "-show_streams")["streams"][0]
        assert variant["CODECS"] == f"avc1.6400{stream['level']:02x},mp4a.40.2"
        assert variant["FRAME-RATE"] == "29.970" and variant["AUDIO"] == audio["GROUP-ID"]
        media = http.get(f"{base}/{uri}").text
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in media and '#EXT-X-MAP:URI="init.mp4"' in media
        assert media.rstrip().endswith("#EXT-X-ENDLIST")
        target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", media).group(1))
        listed = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", media)]
        assert all(d <= target for d in listed)
        names = [line for line in media.splitlines() if line and not line.startswith("#")]
        sizes = segment_sizes(http, base, uri)
        # Bandwidth from real segment sizes: peak of picture + sound over any segment, and the mean.
        peak = max(s * 8 / d for s, d in zip(sizes, listed, strict=True))
        peak_audio = max(s * 8 / d for s, d in zip(audio_sizes, audio_durations(http, base, audio["URI"]), strict=True))
        assert int(variant["BANDWIDTH"]) == pytest.approx(peak + peak_audio, rel=0.01)
        assert int(variant["AVERAGE-BANDWIDTH"]) < int(variant["BANDWIDTH"])
        for name, duration in zip(names, listed, strict=True):
            frames = segment_probe(http, base, rung, name, tmp_path)["packets"]
            times = sorted(float(p["pts_time"]) for p in frames)
            assert "K" in min(frames, key=lambda p: float(p["pts_time"]))["flags"]  # starts on a keyframe
            assert len(frames) / (30000 / 1001) == pytest.approx(duration, abs=0.001)
            assert times[-1] - times[0] < duration
        # 3 GOPs of 60 frames per segment, the last one shorter.
        assert listed[:-1] == [pytest.approx(180 * 1001 / 30000, abs=1e-5)] * (len(listed) - 1)
        assert math.isclose(sum(listed), 390 * 1001 / 30000, abs_tol=0.001)


def segment_sizes(http, base: str, playlist_uri: str) -> list[int]:
    folder = playlist_uri.split("/")[0]
    media = http.get(f"{base}/{playlist_uri}").text
    names = [line for line in media.splitlines() if line and not line.startswith("#")]
    return [len(http.get(f"{base}/{folder}/{name}").content) for name in names]


def audio_durations(http, base: str, playlist_uri: str) -> list[float]:
    return [float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", http.get(f"{base}/{playlist_uri}").text)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_ffprobe_opens_the_master_playlist_and_every_variant(ready):
    info = probe_url(ready["playback"]["hls"], "-show_streams")
    kinds = sorted((s["codec_type"], s.get("height")) for s in info["streams"])
    assert kinds == [("audio", None), ("video", 360), ("video", 480), ("video", 720)]


def test_dash_manifest_describes_the_same_segments(http, ready):
    manifest = http.get(ready["playback"]["dash"])
    assert manifest.headers["content-type"] == "application/dash+xml"
    root = ET.fromstring(manifest.content)
    assert root.get("type") == "static"
    video_set, audio_set = root.findall("d:Period/d:AdaptationSet", MPD_NS)
    reps = {r.get("id"): r for r in video_set.findall("d:Representation", MPD_NS)}
    assert set(reps) == {"720p", "480p", "360p"}
    assert (reps["720p"].get("width"), reps["720p"].get("height")) == ("1280", "720")
    base = ready["playback"]["dash"].rsplit("/", 1)[0]
    for rung, rep in reps.items():
        template = rep.find("d:SegmentTemplate", MPD_NS)
        timeline = template.findall("d:SegmentTimeline/d:S", MPD_NS)
        count = sum(1 + int(s.get("r", 0)) for s in timeline)
        hls = http.get(f"{base}/{rung}/index.m3u8").text
        assert count == hls.count("#EXTINF")  # one set of segments, two manifests
        first = template.get("media").replace("$Number%05d$", "00000")
        assert http.get(f"{base}/{first}").status_code == 200
    assert audio_set.find("d:Representation", MPD_NS).get("codecs") == "mp4a.40.2"
    probe_url(ready["playback"]["dash"], "-show_streams")  # ffmpeg's DASH demuxer reads it too


def test_playback_tokens_are_checked(http, farm, ready, settings):
    hls = ready["playback"]["hls"]
    token = hls.split("/v1/play/")[1].split("/")[0]
    tampered = hls.replace(token, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert http.get(tampered).status_code == 403
    assert http.get(tampered).json()["error"]["code"] == "invalid_token"
    key = signing_key(settings)
    expired = sign(key, ready["id"], farm.catalog.get(ready["id"])["tenant"], int(time.time()) - 1)
    response = http.get(f"/v1/play/{expired}/master.m3u8")
    assert response.status_code == 403 and "expired" in response.json()["error"]["message"]
    # A token for another tenant's video names the wrong tenant: not found, as any other video.
    other = sign(key, ready["id"], "0" * 16, int(time.time()) + 60)
    assert http.get(f"/v1/play/{other}/master.m3u8").status_code == 404
    # Only package files: nothing else of the video's folder, no way out of it.
    for path in ("source", "%2E%2E/source", "720p.mp4", "720p/%2E%2E/%2E%2E/source", "poster.jpg", "stream"):
        assert http.get(f"/v1/play/{token}/{path}").status_code == 404, path


def test_other_tenants_do_not_see_playback_urls(api, http, ready):
    # The owner sees them in its list too, so their absence below is the tenant check's doing.
    owned = http.get("/v1/videos", params={"status": "ready"}).json()["items"]
    assert [(v["id"], "/v1/play/" in v["playback"]["hls"]) for v in owned] == [(ready["id"], True)]
    video = f"/v1/videos/{ready['id']}"
    paths = (video, f"{video}/events", "/v1/videos", "/v1/videos?status=ready")
    with api.client(OTHER_KEY) as other:
        answers = {path: other.get(path) for path in paths}
    assert [a.status_code for a in answers.values()] == [404, 404, 200, 200]
    assert answers["/v1/videos"].json()["items"] == answers["/v1/videos?status=ready"].json()["items"] == []
    for path, answer in answers.items():
        assert "/v1/play/" not in answer.text and "playback" not in answer.text, path


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_players_on_other_origins_may_read_with_ranges(http, ready, backend):
    base = ready["playback"]["hls"].rsplit("/", 1)[0]
    segment = f"{base}/720p/seg_00000.m4s"
    preflight = http.options(segment, headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET",
                                               "Access-Control-Request-Headers": "range"})
    if backend == "s3":  # a redirect to the bucket, answered with CORS too; the bucket's rule answers then
        first = http.get(segment, headers={"Origin": "https://example.org"}, follow_redirects=False)
        assert first.status_code == 307 and first.headers["access-control-allow-origin"] == "*"
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "range" in preflight.headers["access-control-allow-headers"].lower()
    partial = http.get(segment, headers={"Origin": "https://example.org", "Range": "bytes=0-99"})
    assert partial.status_code == 206 and len(partial.content) == 100
    assert partial.headers["content-type"] == "video/iso.segment"
    assert partial.headers["access-control-allow-origin"] in ("*", "https://example.org")
    assert "content-range" in partial.headers["access-control-expose-headers"].lower()
    assert "max-age" in (first if backend == "s3" else partial).headers["cache-control"]
    assert http.get(f"{base}/720p/init.mp4").headers["content-type"] == "video/mp4"
    denied = http.get(segment.replace("/v1/play/", "/v1/play/x"), headers={"Origin": "https://example.org"})
    assert denied.status_code == 403 and denied.headers["access-control-allow-origin"] == "*"
