"""vidfarm/package.py on its own: the HLS playlists and the DASH manifest written from given
segments, line by line and attribute by attribute as players read them, and the reading back of what
ffmpeg's segmenter wrote, on a real clip. No farm: the whole file runs in about a second."""

from __future__ import annotations

import math
import re
import subprocess
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest

from tests.conftest import ffprobe
from transcoder.command import segment_args
from vidfarm.package import (
    AAC_LC_CODECS,
    AUDIO_FOLDER,
    INIT_SEGMENT,
    MEDIA_PLAYLIST,
    SEGMENTS_PER_CHUNK_GOPS,
    Segment,
    Track,
    avc_codecs,
    dash_manifest,
    master_playlist,
    media_playlist,
    read_cut_list,
)

NTSC = Fraction(30000, 1001)
FILM = Fraction(24000, 1001)
MPD = {"d": "urn:mpeg:dash:schema:mpd:2011"}


def segments(*spec: tuple[float, int]) -> tuple[Segment, ...]:
    """(seconds, bytes) per segment, named as ffmpeg's segmenter names them."""
    return tuple(Segment(f"seg_{i:05d}.m4s", seconds, size) for i, (seconds, size) in enumerate(spec))


def rung(folder: str, width: int, height: int, *spec: tuple[float, int], fps: Fraction = NTSC,
         codecs: str = "avc1.64001f") -> Track:
    return Track(folder, segments(*spec), codecs, width=width, height=height, fps=fps)


def sound(*spec: tuple[float, int]) -> Track:
    return Track(AUDIO_FOLDER, segments(*spec), AAC_LC_CODECS, sample_rate=48000)


# Three 6.006 s segments of 180 NTSC frames (3 GOPs of 60) would be 18.018 s; this video is 390
# frames: two full segments and a short last one of 30 frames. The audio's cuts fall on AAC frames
# (1024 samples) nearest the picture's, so its segments differ a little.
HD = rung("720p", 1280, 720, (6.006, 1_500_000), (6.006, 2_000_000), (1.001, 150_000))
SD = rung("360p", 640, 360, (6.006, 400_000), (6.006, 500_000), (1.001, 90_000), codecs="avc1.64001e")
AUDIO = sound((6.016, 97_000), (5.994667, 96_000), (1.002667, 16_500))


def attributes(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1])}


def extinf(playlist: str) -> list[float]:
    return [float(d) for d in re.findall(r"^#EXTINF:([0-9.]+),$", playlist, re.MULTILINE)]


def timeline(representation: ET.Element) -> list[dict[str, str]]:
    return [s.attrib for s in representation.findall("d:SegmentTemplate/d:SegmentTimeline/d:S", MPD)]


# -- HLS media playlists -----------------------------------------------------------------------------


def test_media_playlist_of_ntsc_segments_with_a_short_last_one():
    assert media_playlist(HD).splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:7",  # 6.006 rounds to 6, but no EXTINF may exceed the target
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
        "#EXTINF:6.006000,", "seg_00000.m4s",
        "#EXTINF:6.006000,", "seg_00001.m4s",
        "#EXTINF:1.001000,", "seg_00002.m4s",
        "#EXT-X-ENDLIST",
    ]
    assert media_playlist(HD).endswith("#EXT-X-ENDLIST\n")


@pytest.mark.parametrize(("durations", "target"), [
    ([6.0, 6.0, 2.0], 6),  # whole seconds (25 fps): not rounded up to 7
    ([6.0000004, 1.5], 6),  # float noise of a cut list above a whole second
    ([6.006, 6.006, 1.001], 7),  # NTSC
    ([2.002], 3),  # 24000/1001, one GOP
    ([0.5], 1),  # one segment shorter than a second
])
def test_target_duration_holds_every_segment(durations, target):
    playlist = media_playlist(rung("720p", 1280, 720, *[(d, 1000) for d in durations]))
    assert f"#EXT-X-TARGETDURATION:{target}" in playlist.splitlines()
    assert max(extinf(playlist)) <= target


def test_one_segment():
    track = rung("720p", 1280, 720, (4.004, 500_000))
    playlist = media_playlist(track)
    assert extinf(playlist) == [4.004]
    assert [line for line in playlist.splitlines() if not line.startswith("#")] == ["seg_00000.m4s"]
    root = ET.fromstring(dash_manifest([track], None))
    assert root.get("mediaPresentationDuration") == "PT4.004S"
    [representation] = root.findall("d:Period/d:AdaptationSet/d:Representation", MPD)
    assert timeline(representation) == [{"t": "0", "d": "360360"}]  # no repeat count
    assert representation.get("bandwidth") == str(math.ceil(500_000 * 8 / 4.004))


def test_audio_media_playlist():
    playlist = media_playlist(AUDIO)
    assert extinf(playlist) == [6.016, 5.994667, 1.002667]
    assert "#EXT-X-TARGETDURATION:7" in playlist.splitlines()
    assert '#EXT-X-MAP:URI="init.mp4"' in playlist.splitlines()


# -- HLS master playlist -----------------------------------------------------------------------------


def test_master_playlist_starts_where_a_slow_network_plays_then_lists_highest_first():
    # Players start on the first variant listed: the best one whose peak fits 1 Mb/s (the 360p here),
    # then the rest highest first. BANDWIDTH: the peak segment bit rate of picture plus sound (the
    # 720p's second segment, 2,000,000 B in 6.006 s, and the audio's short last one);
    # AVERAGE-BANDWIDTH: all bytes over all seconds, picture plus sound.
    assert master_playlist([HD, SD], AUDIO).splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",'
        'URI="audio/index.m3u8"',
        '#EXT-X-STREAM-INF:BANDWIDTH=850930,AVERAGE-BANDWIDTH=737414,CODECS="avc1.64001e,mp4a.40.2",'
        'RESOLUTION=640x360,FRAME-RATE=29.970,AUDIO="aac"',
        "360p/index.m3u8",
        '#EXT-X-STREAM-INF:BANDWIDTH=2795652,AVERAGE-BANDWIDTH=2372701,CODECS="avc1.64001f,mp4a.40.2",'
        'RESOLUTION=1280x720,FRAME-RATE=29.970,AUDIO="aac"',
        "720p/index.m3u8",
    ]


def test_bandwidth_covers_every_stretch_a_player_measures():
    """RFC 8216bis: BANDWIDTH is at least the bit rate of any run of segments lasting 0.5 to 1.5
    target durations; AVERAGE-BANDWIDTH is the whole playlist's."""
    lines = master_playlist([HD, SD], AUDIO).splitlines()
    variants = {lines[i + 1].split("/")[0]: attributes(line) for i, line in enumerate(lines)
                if line.startswith("#EXT-X-STREAM-INF:")}
    for track in (HD, SD):
        declared = variants[track.folder]
        target = 7
        for start in range(len(track.segments)):
            for end in range(start + 1, len(track.segments) + 1):
                run = track.segments[start:end]
                seconds = sum(s.duration_s for s in run)
                if 0.5 * target <= seconds <= 1.5 * target:
                    picture = sum(s.size_bytes for s in run) * 8 / seconds
                    assert int(declared["BANDWIDTH"]) >= picture + AUDIO.peak_bps
        total_bytes = sum(s.size_bytes for s in (*track.segments, *AUDIO.segments))
        assert int(declared["AVERAGE-BANDWIDTH"]) == pytest.approx(total_bytes * 8 / 13.013, rel=1e-4)
        assert int(declared["AVERAGE-BANDWIDTH"]) < int(declared["BANDWIDTH"])


def test_master_playlist_without_audio():
    lines = master_playlist([HD], None).splitlines()
    assert lines == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-STREAM-INF:BANDWIDTH=2664003,AVERAGE-BANDWIDTH=2243910,CODECS="avc1.64001f",'
        "RESOLUTION=1280x720,FRAME-RATE=29.970",
        "720p/index.m3u8",
    ]
    assert not any(line.startswith("#EXT-X-MEDIA:") for line in lines)  # no group a player would wait for


@pytest.mark.parametrize(("fps", "hls_rate", "dash_rate"), [
    (NTSC, "29.970", "30000/1001"),
    (FILM, "23.976", "24000/1001"),
    (Fraction(60000, 1001), "59.940", "60000/1001"),
    (Fraction(25), "25.000", "25/1"),
])
def test_frame_rates_exact_in_dash_and_to_three_decimals_in_hls(fps, hls_rate, dash_rate):
    track = rung("720p", 1280, 720, (6.0, 1_000_000), fps=fps)
    stream_inf = next(line for line in master_playlist([track], None).splitlines()
                      if line.startswith("#EXT-X-STREAM-INF:"))
    assert attributes(stream_inf)["FRAME-RATE"] == hls_rate
    representation = ET.fromstring(dash_manifest([track], None)).find("d:Period/d:AdaptationSet/d:Representation", MPD)
    assert representation.get("frameRate") == dash_rate


# -- DASH ------------------------------------------------------------------------------------------


def test_dash_manifest_describes_each_track_and_its_segments():
    root = ET.fromstring(dash_manifest([SD, HD], AUDIO))
    assert root.tag == "{urn:mpeg:dash:schema:mpd:2011}MPD"
    assert (root.get("type"), root.get("profiles")) == ("static", "urn:mpeg:dash:profile:isoff-live:2011")
    assert root.get("mediaPresentationDuration") == "PT13.013S"
    video_set, audio_set = root.findall("d:Period/d:AdaptationSet", MPD)
    assert (video_set.get("contentType"), video_set.get("segmentAlignment"), video_set.get("startWithSAP")) == (
        "video", "true", "1")
    hd, sd = video_set.findall("d:Representation", MPD)  # highest first
    assert {k: hd.get(k) for k in ("id", "mimeType", "codecs", "bandwidth", "width", "height", "frameRate", "sar")} == {
        "id": "720p", "mimeType": "video/mp4", "codecs": "avc1.64001f", "bandwidth": "2664003",
        "width": "1280", "height": "720", "frameRate": "30000/1001", "sar": "1:1"}
    assert (sd.get("id"), sd.get("bandwidth"), sd.get("width"), sd.get("height")) == ("360p", "719281", "640", "360")
    template = hd.find("d:SegmentTemplate", MPD)
    assert template.attrib == {"timescale": "90000", "startNumber": "0", "initialization": "720p/init.mp4",
                               "media": "720p/seg_$Number%05d$.m4s"}
    # 6.006 s is 540540 ticks of 90 kHz: two of them (r="1" repeats once), then the 1.001 s one.
    assert timeline(hd) == timeline(sd) == [{"t": "0", "d": "540540", "r": "1"}, {"d": "90090"}]

    [audio] = audio_set.findall("d:Representation", MPD)
    assert (audio_set.get("contentType"), audio_set.get("lang")) == ("audio", "und")
    assert {k: audio.get(k) for k in ("id", "mimeType", "codecs", "bandwidth", "audioSamplingRate")} == {
        "id": "audio", "mimeType": "audio/mp4", "codecs": "mp4a.40.2", "bandwidth": "131649",
        "audioSamplingRate": "48000"}
    assert audio.find("d:AudioChannelConfiguration", MPD).get("value") == "2"
    assert audio.find("d:SegmentTemplate", MPD).get("timescale") == "48000"
    # In samples: 282, 281 and 47 AAC frames of 1024.
    assert timeline(audio) == [{"t": "0", "d": "288768"}, {"d": "287744"}, {"d": "48128"}]


def test_dash_and_hls_name_the_same_segments():
    root = ET.fromstring(dash_manifest([HD, SD], AUDIO))
    for representation in root.iter("{urn:mpeg:dash:schema:mpd:2011}Representation"):
        track = {t.folder: t for t in (HD, SD, AUDIO)}[representation.get("id")]
        template = representation.find("d:SegmentTemplate", MPD)
        count = sum(1 + int(s.get("r", 0)) for s in timeline(representation))
        names = [template.get("media").replace("$Number%05d$", f"{n:05d}") for n in range(count)]
        hls = [line for line in media_playlist(track).splitlines() if line and not line.startswith("#")]
        assert names == [f"{track.folder}/{name}" for name in hls]
        assert template.get("initialization") == f"{track.folder}/{INIT_SEGMENT}"


def test_timeline_folds_only_durations_equal_to_the_tick():
    # Cut lists print six decimals: 6.0059996 and 6.006 are the same 540540 ticks, one run; a
    # different length in the middle breaks the run, and `t` is given once, at the start.
    track = rung("720p", 1280, 720, (6.006, 1), (6.0059996, 1), (4.004, 1), (6.006, 1), (2.002, 1))
    [representation] = ET.fromstring(dash_manifest([track], None)).findall(
        "d:Period/d:AdaptationSet/d:Representation", MPD)
    assert timeline(representation) == [
        {"t": "0", "d": "540540", "r": "1"}, {"d": "360360"}, {"d": "540540"}, {"d": "180180"}]


def test_dash_duration_is_the_longest_track():
    longer_audio = sound((6.016, 97_000), (5.994667, 96_000), (2.026667, 30_000))
    assert ET.fromstring(dash_manifest([HD], longer_audio)).get("mediaPresentationDuration") == "PT14.037S"
    without_audio = ET.fromstring(dash_manifest([HD], None))
    assert without_audio.get("mediaPresentationDuration") == "PT13.013S"
    assert [s.get("contentType") for s in without_audio.findall("d:Period/d:AdaptationSet", MPD)] == ["video"]


# -- reading what ffmpeg wrote ---------------------------------------------------------------------


def test_avc_codecs_from_the_avcc_box():
    record = b"\x00\x00\x00\x30avcC\x01\x64\x00\x1f\xff\xe1"  # version 1, High, no constraints, level 3.1
    assert avc_codecs(b"\x00" * 40 + record) == "avc1.64001f"
    assert avc_codecs(b"avcC\x01\x42\xc0\x0a") == "avc1.42c00a"  # Constrained Baseline, level 1
    for broken in (b"", b"no box here", b"avcC\x01\x64"):
        with pytest.raises(ValueError, match="avcC"):
            avc_codecs(broken)


def test_segments_read_back_from_a_real_segmenter_run(tmp_path: Path):
    """A 7 s NTSC clip with a keyframe every 60 frames, cut as finalize cuts it: 3-GOP segments of
    6.006 s, then what is left (30 frames, 1.001 s)."""
    source = tmp_path / "source.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=128x72:rate=30000/1001:duration=7", "-c:v", "libx264",
                    "-preset", "veryfast", "-x264-params", "keyint=60:min-keyint=60:scenecut=0",
                    "-pix_fmt", "yuv420p", str(source)], check=True)
    folder = tmp_path / "720p"
    folder.mkdir()
    segment_s = float(Fraction(SEGMENTS_PER_CHUNK_GOPS * 60) / NTSC)
    subprocess.run(["ffmpeg", *segment_args(source, "v:0", folder, segment_s)], check=True)

    cut_list = folder / "ffmpeg.m3u8"
    assert read_cut_list(cut_list) == [("seg_00000.m4s", 6.006), ("seg_00001.m4s", 1.001)]
    read = tuple(Segment(name, seconds, (folder / name).stat().st_size) for name, seconds in read_cut_list(cut_list))
    level = ffprobe(source, "-select_streams", "v:0", "-show_streams")["streams"][0]["level"]
    codecs = avc_codecs((folder / INIT_SEGMENT).read_bytes())
    assert codecs == f"avc1.6400{level:02x}"  # High profile, as x264 coded it

    track = Track("720p", read, codecs, width=128, height=72, fps=NTSC)
    (folder / MEDIA_PLAYLIST).write_text(media_playlist(track))
    packets = ffprobe(folder / MEDIA_PLAYLIST, "-show_entries", "packet=pts_time")["packets"]
    assert len(packets) == 210  # every frame, through our playlist
