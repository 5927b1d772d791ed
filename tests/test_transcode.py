"""End to end over HTTP: upload clips, a real worker runs ffmpeg, renditions checked with ffprobe."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BACKENDS, assert_no_scratch_left, ffprobe, upload, wait_for


def streams(path: Path) -> tuple[dict, dict | None, dict]:
    info = ffprobe(path, "-show_streams", "-show_format")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next((s for s in info["streams"] if s["codec_type"] == "audio"), None)
    return video, audio, info["format"]


def keyframe_times(path: Path) -> list[str]:
    info = ffprobe(path, "-select_streams", "v:0", "-skip_frame", "nokey", "-show_entries", "frame=pts_time")
    return [f["pts_time"] for f in info["frames"]]


def moov_before_mdat(path: Path) -> bool:
    data = path.read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")


def download(http, url: str, target: Path) -> Path:
    response = http.get(url)
    assert response.status_code == 200, response.text
    target.write_bytes(response.content)
    return target


# clip -> expected renditions {name: (width, height)}
EXPECTED = {
    "landscape1080": {"1080p": (1920, 1080), "720p": (1280, 720)},
    "portrait": {"1080p": (1080, 1920), "720p": (720, 1280)},
    "landscape720": {"720p": (1280, 720)},
    "noaudio": {"720p": (1280, 720)},
    "tenbit": {"720p": (1280, 720)},
    "odd": {"480p": (852, 480)},
}


# Every clip on the directory; a landscape and a silent one on S3 (CI time).
LADDER_CASES = [("file", clip) for clip in EXPECTED] + [("s3", "landscape1080"), ("s3", "noaudio")]


@pytest.mark.parametrize(("backend", "clip"), LADDER_CASES, indirect=["backend"])
def test_renditions_follow_the_ladder(clip, clips, http, worker, tmp_path, settings):
    source_video, source_audio, source_format = streams(clips[clip])
    created = upload(http, clips[clip])
    assert created.status_code == 201, created.text
    video = wait_for(http, created.json()["id"])
    assert video["status"] == "ready", video["error"]
    assert {r["name"]: (r["width"], r["height"]) for r in video["renditions"]} == EXPECTED[clip]

    keyframes = []
    for rendition in video["renditions"]:
        path = download(http, rendition["url"], tmp_path / f"{rendition['name']}.mp4")
        out_video, out_audio, out_format = streams(path)
        assert (out_video["width"], out_video["height"]) == (rendition["width"], rendition["height"])
        assert out_video["codec_name"] == "h264"
        assert out_video["profile"] == "High"
        assert out_video["level"] <= 42
        assert out_video["pix_fmt"] == "yuv420p"
        assert abs(float(out_format["duration"]) - float(source_format["duration"])) <= 0.1
        assert (out_audio is not None) == (source_audio is not None)
        if out_audio is not None:
            assert out_audio["codec_name"] == "aac" and out_audio["channels"] == 2
        assert moov_before_mdat(path)
        assert rendition["size_bytes"] == path.stat().st_size
        assert abs(rendition["bitrate_kbps"] - int(out_format["bit_rate"]) / 1000) <= 0.05 * rendition["bitrate_kbps"]
        keyframes.append(keyframe_times(path))
    assert all(k == keyframes[0] for k in keyframes), "keyframes differ between renditions"
    assert len(keyframes[0]) >= 1
    poster = http.get(video["poster_url"])
    assert poster.status_code == 200 and poster.content[:2] == b"\xff\xd8"
    assert_no_scratch_left(settings)


def test_rendition_pick_and_progress_events(clips, http, worker):
    created = upload(http, clips["landscape1080"], renditions="720p")
    assert created.status_code == 201, created.text
    video_id = created.json()["id"]
    seen = []
    with http.stream("GET", f"/v1/videos/{video_id}/events", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
    assert '"ready"' in seen[-1], seen[-3:]
    video = http.get(f"/v1/videos/{video_id}").json()
    assert [r["name"] for r in video["renditions"]] == ["720p"]
    assert video["attempts"] == 1 and video["progress"] == 100


def test_small_source_is_never_upscaled(clips, http, worker):
    video = wait_for(http, upload(http, clips["small"]).json()["id"])
    assert video["status"] == "ready"
    assert [(r["name"], r["width"], r["height"]) for r in video["renditions"]] == [("240p", 320, 240)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_range_requests_serve_partial_content(clips, http, worker):
    video = wait_for(http, upload(http, clips["noaudio"]).json()["id"])
    url = video["renditions"][0]["url"]
    whole = http.get(url).content
    part = http.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_source_cut_short_fails_instead_of_silently_stopping(http, worker, tmp_path, settings):
    """Matroska declares its duration up front; a file cut in half still probes as whole."""
    from tests.conftest import make_clip

    whole = make_clip(tmp_path / "whole.mkv", "testsrc2=size=640x360:rate=25:duration=8", True, [])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    created = upload(http, cut)
    assert created.status_code == 201, created.text
    assert created.json()["source"]["duration_s"] > 7.5
    video = wait_for(http, created.json()["id"])
    assert video["status"] == "failed"
    assert video["error"]["code"] == "truncated"
    assert "ends early" in video["error"]["message"]
    assert video["renditions"] == []
    assert_no_scratch_left(settings)
