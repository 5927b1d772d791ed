"""The playlists of a video still encoded, written from its tasks (uploader/growing.py over
vidfarm/package.py): what a player reads before the video is ready. Pure: no farm needed."""

from __future__ import annotations

from dataclasses import replace

from tests.conftest import ROOT
from tests.test_lint import imported_modules, module_name
from tests.test_segments import audio, chunk
from uploader import growing
from vidfarm import package
from vidfarm.catalog import Task
from vidfarm.segments import stream_state

RUNGS = {
    "720p": {"codecs": "avc1.64001f", "width": 1280, "height": 720, "fps": "30000/1001", "cap_bps": 3_000_000},
    "360p": {"codecs": "avc1.64001e", "width": 640, "height": 360, "fps": "30000/1001", "cap_bps": 800_000},
    "180p": {"codecs": "avc1.64000d", "width": 320, "height": 180, "fps": "30000/1001", "cap_bps": 300_000},
}


def described(task: Task) -> Task:
    """`task` with the three rungs above, as a chunk of a 720p source records them."""
    result = dict(task.result or {})
    if result:
        seconds = [[6.006, 2000 + n] for n in range(len(next(iter(result["segments"].values()))))]
        result |= {"segments": dict.fromkeys(RUNGS, seconds), "tracks": RUNGS, "rungs": list(RUNGS)}
    return Task(task.name, task.kind, start_frame=task.start_frame, status=task.status, job_id=task.job_id,
                result=result or None)


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_growing_media_playlist_lists_the_contiguous_prefix_from_the_start_and_has_no_end():
    # Chunks 0 and 2 are done, 1 is still encoding: only chunk 0's two segments may be listed.
    state = stream_state([described(chunk(0, 2)), described(chunk(1, 2, done=False)), described(chunk(2, 2)),
                          audio(5)])
    text = growing.playlist(state, "360p/index.m3u8")
    assert lines(text) == [
        "#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:7", "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-START:TIME-OFFSET=0,PRECISE=YES", "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
        "#EXTINF:6.006000,", "seg_00000.m4s", "#EXTINF:6.006000,", "seg_00001.m4s",
    ]
    audio_lines = lines(growing.playlist(state, "audio/index.m3u8"))
    # The audio is encoded faster than the picture: its own prefix, further on.
    assert [x for x in audio_lines if x.startswith("seg_")] == [f"seg_{n:05d}.m4s" for n in range(5)]
    assert "#EXT-X-ENDLIST" not in audio_lines and "#EXT-X-PLAYLIST-TYPE:EVENT" in audio_lines


def test_the_target_duration_of_a_growing_playlist_is_a_whole_segment_from_the_first_listing():
    """A 2 s video, one short segment: the target duration must not grow later (a
    playlist may not change it), so it is at least the 6 s of the segments to come."""
    first = described(chunk(0, 1))
    short = replace(first, result={**first.result, "segments": dict.fromkeys(RUNGS, [[2.0, 100]])})
    assert "#EXT-X-TARGETDURATION:6" in lines(growing.playlist(stream_state([short]), "360p/index.m3u8"))


def test_the_growing_master_declares_the_caps_in_todays_start_order():
    state = stream_state([described(chunk(0, 1)), audio(1)])
    text = lines(growing.playlist(state, "master.m3u8"))
    variants = [(text[i], text[i + 1]) for i, line in enumerate(text) if line.startswith("#EXT-X-STREAM-INF:")]
    # 360p + audio fits START_BANDWIDTH_BPS (928 kbit/s ≤ 1 Mbit/s): players start there, then highest first.
    assert [uri for _, uri in variants] == ["360p/index.m3u8", "720p/index.m3u8", "180p/index.m3u8"]
    assert variants[0][0] == ('#EXT-X-STREAM-INF:BANDWIDTH=928000,CODECS="avc1.64001e,mp4a.40.2",'
                              'RESOLUTION=640x360,FRAME-RATE=29.970,AUDIO="aac"')
    assert "BANDWIDTH=3128000," in variants[1][0] and "AVERAGE-BANDWIDTH" not in "".join(text)
    assert text[3] == ('#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
                       'CHANNELS="2",URI="audio/index.m3u8"')


def test_a_silent_video_has_no_audio_group():
    text = growing.playlist(stream_state([described(chunk(0, 1))]), "master.m3u8")
    assert "#EXT-X-MEDIA" not in text and 'AUDIO="aac"' not in text and 'CODECS="avc1.64001e"' in text


def test_anything_but_a_playlist_is_not_written():
    state = stream_state([described(chunk(0, 1)), audio(1)])
    for path in ("360p/seg_00000.m4s", "360p/init.mp4", "1080p/index.m3u8", "manifest.mpd", "360p", "index.m3u8"):
        assert growing.playlist(state, path) is None, path


def test_the_vod_playlist_is_unchanged():
    """At ready the published playlist is today's: VOD type, the end tag, the longest segment as target."""
    track = package.Track("360p", (package.Segment("seg_00000.m4s", 6.0, 10), package.Segment("seg_00001.m4s", 1.0, 5)),
                          codecs="avc1.64001e", width=640, height=360)
    text = lines(package.media_playlist(track))
    assert text[2:5] == ["#EXT-X-TARGETDURATION:6", "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    assert text[-1] == "#EXT-X-ENDLIST" and not any(x.startswith("#EXT-X-START") for x in text)


# Modules that run ffmpeg (or drive a worker): the API process must not load them.
RUNS_FFMPEG = ("ffmpeg", "transcoder.job", "transcoder.command", "transcoder.worker", "transcoder.runner",
               "transcoder.quality")


def test_the_api_never_imports_ffmpeg_running_code():
    paths = {module_name(p): p for package_dir in ("uploader", "vidfarm", "transcoder")
             for p in (ROOT / package_dir).rglob("*.py")}
    seen, todo = set(), ["uploader.app"]
    while todo:
        module = todo.pop()
        if module in seen or module not in paths:
            continue
        seen.add(module)
        imported = imported_modules(paths[module])
        assert not imported & set(RUNS_FFMPEG), f"{module} imports {sorted(imported & set(RUNS_FFMPEG))}"
        todo += sorted(imported)
    assert "uploader.growing" in seen and "vidfarm.package" in seen

