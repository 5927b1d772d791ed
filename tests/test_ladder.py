"""The ladder rules, as pure data: sizes, never upscaling, frame rate, level limits."""

from __future__ import annotations

from fractions import Fraction

import pytest

from transcoder.command import X264, chunk_args
from transcoder.ladder import plan_outputs, rungs_named
from vidfarm.chunks import ChunkWindow, output_fps
from vidfarm.probe import SourceInfo
from vidfarm.settings import Settings

LADDER = rungs_named(["1080p", "720p"])


def source(width: int, height: int, fps: float = 30.0) -> SourceInfo:
    return SourceInfo(duration_s=10, width=width, height=height, fps=fps, video_codec="h264",
                      audio_codec="aac", pix_fmt="yuv420p", rotation=0)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1920, 1080, [("1080p", 1920, 1080), ("720p", 1280, 720)]),
        (3840, 2160, [("1080p", 1920, 1080), ("720p", 1280, 720)]),
        (1080, 1920, [("1080p", 1080, 1920), ("720p", 720, 1280)]),
        (1280, 720, [("720p", 1280, 720)]),
        (1000, 800, [("720p", 900, 720)]),
        (640, 360, [("360p", 640, 360)]),
        (853, 481, [("480p", 852, 480)]),
        (1440, 1080, [("1080p", 1440, 1080), ("720p", 960, 720)]),
    ],
)
def test_sizes(width, height, expected):
    plans = plan_outputs(source(width, height), LADDER)
    assert [(p.name, p.width, p.height) for p in plans] == expected
    assert all(p.width % 2 == 0 and p.height % 2 == 0 for p in plans)


def test_ultra_wide_frames_fit_level_4_2():
    (plan, *_) = plan_outputs(source(7680, 1080), LADDER)
    assert -(-plan.width // 16) * -(-plan.height // 16) <= 8704
    assert abs(plan.width / plan.height - 7680 / 1080) < 0.02


@pytest.mark.parametrize(("fps", "expected"), [(25, 25), (29.97, Fraction(30000, 1001)), (60, 60), (120, 60),
                                               (100, 50), (90, 45)])
def test_frame_rate_kept_up_to_60(fps, expected):
    assert output_fps(fps) == expected


def test_caps_and_gop_scale_with_frame_rate():
    slow, fast = plan_outputs(source(1920, 1080, 30), LADDER)[0], plan_outputs(source(1920, 1080, 60), LADDER)[0]
    assert (slow.maxrate_kbps, slow.gop_frames) == (6000, 60)
    assert fast.maxrate_kbps > slow.maxrate_kbps and fast.gop_frames == 120


WHOLE = ChunkWindow(seek_s=0.0, grid_start_frame=0, skip_frames=0)


def test_chunk_command_is_one_process_with_split_and_video_only(tmp_path):
    plans = plan_outputs(source(1920, 1080), LADDER)
    args = chunk_args(tmp_path / "in", [(p, tmp_path / p.name) for p in plans], window=WHOLE, frames=None,
                      encoder=X264)
    assert args.count("-i") == 1 and "-ss" not in args
    graph = args[args.index("-filter_complex") + 1]
    assert "split=2" in graph and "end_frame" not in graph
    assert args.count("-an") == 2 and "0:a:0" not in args
    assert all(isinstance(a, str) for a in args)


def test_a_later_chunk_seeks_before_its_start_and_cuts_on_output_frames(tmp_path):
    plans = plan_outputs(source(1920, 1080), LADDER)
    window = ChunkWindow(seek_s=56.0, grid_start_frame=1740, skip_frames=60)
    args = chunk_args(tmp_path / "in", [(p, tmp_path / p.name) for p in plans], window=window, frames=1800,
                      encoder=X264)
    assert args[args.index("-ss") + 1] == "56.000000" and "-copyts" in args
    graph = args[args.index("-filter_complex") + 1]
    # The cut comes after the frame-rate converter, whose grid is anchored at frame 1740 (58 s).
    assert graph.index("fps=") < graph.index("trim=") < graph.index("split")
    assert "start_time=58.000000000" in graph and "trim=end_frame=1860:start_frame=60" in graph


def test_nvenc_outputs_keep_the_same_keyframe_grid_and_caps(tmp_path):
    from transcoder.command import NVENC

    plans = plan_outputs(source(1920, 1080), LADDER)
    args = chunk_args(tmp_path / "in", [(p, tmp_path / p.name) for p in plans], window=WHOLE, frames=None,
                      encoder=NVENC)
    assert args.count("h264_nvenc") == 2 and "libx264" not in args
    assert args.count("expr:eq(mod(n,60),0)") == 2 and args.count("-forced-idr") == 2
    assert args[args.index("-maxrate"):args.index("-maxrate") + 2] == ["-maxrate", "6000k"]
    assert "-sc_threshold" not in args  # an x264 option; NVENC turns scene cuts off with -no-scenecut


# -- the streaming ladder: stream-only rungs below the downloads --------------------------------------

STREAMED = rungs_named(["480p", "360p"])


@pytest.mark.parametrize(
    ("width", "height", "downloads", "streamed"),
    [
        (1920, 1080, ["1080p", "720p"], ["480p", "360p"]),
        (3840, 2160, ["1080p", "720p"], ["480p", "360p"]),
        (1080, 1920, ["1080p", "720p"], ["480p", "360p"]),  # portrait: named by the short side
        (1280, 720, ["720p"], ["480p", "360p"]),
        (640, 360, ["360p"], []),  # the source's own size, no second 360p
        (853, 481, ["480p"], ["360p"]),
        (704, 400, ["400p"], ["360p"]),  # below every download rung: its own size, then what fits under
        (320, 240, ["240p"], []),
    ],
)
def test_stream_only_rungs_sit_below_the_downloads_and_never_above_the_source(width, height, downloads, streamed):
    plans = plan_outputs(source(width, height), LADDER, STREAMED)
    assert [p.name for p in plans if p.download] == downloads
    assert [p.name for p in plans if not p.download] == streamed
    assert [p.width * p.height for p in plans] == sorted((p.width * p.height for p in plans), reverse=True)
    assert all(min(p.width, p.height) <= min(width, height) for p in plans)


def test_stream_rungs_get_apples_caps_and_the_same_keyframe_grid(tmp_path):
    plans = plan_outputs(source(1920, 1080), LADDER, rungs_named(["480p", "360p", "240p"]))
    assert [(p.name, p.width, p.height, p.maxrate_kbps) for p in plans] == [
        ("1080p", 1920, 1080, 6000), ("720p", 1280, 720, 3000), ("480p", 854, 480, 1500),
        ("360p", 640, 360, 730), ("240p", 426, 240, 145),
    ]
    args = chunk_args(tmp_path / "in", [(p, tmp_path / p.name) for p in plans], window=WHOLE, frames=None,
                      encoder=X264)
    assert args.count("-i") == 1 and "split=5" in args[args.index("-filter_complex") + 1]
    assert args.count("expr:eq(mod(n,60),0)") == 5


def test_an_upload_asking_for_one_download_still_streams_the_lower_rungs():
    plans = plan_outputs(source(1920, 1080), rungs_named(["720p"]), STREAMED)
    assert [(p.name, p.download) for p in plans] == [("720p", True), ("480p", False), ("360p", False)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VIDFARM_STREAM_RUNGS": "480p,144p"}, "VIDFARM_STREAM_RUNGS: unknown rung '144p'; known rungs: 2160p"),
        ({"VIDFARM_STREAM_RUNGS": "480,360p"}, "VIDFARM_STREAM_RUNGS: unknown rung '480'"),
        ({"VIDFARM_STREAM_RUNGS": "360p,360p"}, "VIDFARM_STREAM_RUNGS names 360p more than once"),
        ({"VIDFARM_STREAM_RUNGS": ","}, "VIDFARM_STREAM_RUNGS must list rungs from 2160p"),
        ({"VIDFARM_LADDER": "1080p,4k"}, "VIDFARM_LADDER: unknown rung '4k'"),
        ({"VIDFARM_LADDER": "none"}, "VIDFARM_LADDER: unknown rung 'none'"),
    ],
)
def test_rung_settings_are_checked_when_a_process_starts(monkeypatch, tmp_path, env, message):
    monkeypatch.setenv("VIDFARM_HOME", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as raised:
        Settings.from_env()
    assert str(raised.value).startswith(message)


def test_stream_rungs_default_and_none_survive_the_trip_to_a_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDFARM_HOME", str(tmp_path))
    monkeypatch.delenv("VIDFARM_STREAM_RUNGS", raising=False)
    settings = Settings.from_env()
    assert (settings.ladder, settings.stream_rungs) == (("1080p", "720p"), ("480p", "360p"))
    for value, expected in (("none", ()), (" 360p , 240p ", ("360p", "240p"))):
        monkeypatch.setenv("VIDFARM_STREAM_RUNGS", value)
        settings = Settings.from_env()
        assert settings.stream_rungs == expected
        for name, passed in settings.to_env({}).items():
            monkeypatch.setenv(name, passed)
        assert Settings.from_env().stream_rungs == expected


def test_a_stream_rung_some_chunk_did_not_encode_is_left_out_not_the_video():
    from transcoder.job import encoded_by_every_chunk

    plans = plan_outputs(source(1920, 1080), LADDER, STREAMED)
    everything = {"frames": 60, "rungs": ["1080p", "720p", "480p", "360p"]}
    before_stream_rungs = {"frames": 60}  # a chunk result written before results named their rungs
    other_config = {"frames": 60, "rungs": ["1080p", "720p", "360p"]}
    assert encoded_by_every_chunk(plans, [everything, everything]) == plans
    assert [p.name for p in encoded_by_every_chunk(plans, [everything, other_config])] == ["1080p", "720p", "360p"]
    assert [p.name for p in encoded_by_every_chunk(plans, [before_stream_rungs, everything])] == ["1080p", "720p"]
