"""The ladder rules, as pure data: sizes, never upscaling, frame rate, level limits."""

from __future__ import annotations

from fractions import Fraction

import pytest

from transcoder.command import X264, chunk_args
from transcoder.ladder import plan_outputs, rungs_named
from vidfarm.chunks import ChunkWindow, output_fps
from vidfarm.probe import SourceInfo

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
