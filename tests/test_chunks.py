"""The chunk plan: whole GOPs on the output frame grid, one chunk for short videos, the last chunk
open-ended; and where a chunk job seeks and cuts."""

from __future__ import annotations

from fractions import Fraction

from vidfarm.chunks import ChunkSpan, chunk_frames, chunk_window, plan_chunks

NTSC = Fraction(30000, 1001)


def test_chunks_are_whole_gops_of_output_frames():
    assert chunk_frames(Fraction(30), 60) == 1800
    assert chunk_frames(NTSC, 60) == 1800  # 30 GOPs of 60 frames (2.002 s each), not 60 s of seconds
    assert chunk_frames(Fraction(25), 61.6) == 1550  # rounded to the nearest whole GOP (31 x 50)
    assert chunk_frames(Fraction(30), 0.5) == 60  # never less than one GOP


def test_a_video_under_two_chunks_is_one_chunk():
    assert plan_chunks(119.0, Fraction(30), 60) == [ChunkSpan(0, 0, None)]


def test_the_last_chunk_takes_the_remainder_and_any_error_in_the_declared_duration():
    spans = plan_chunks(150.0, Fraction(30), 60)
    assert spans == [ChunkSpan(0, 0, 1800), ChunkSpan(1, 1800, None)]
    assert [s.end_frame for s in spans] == [1800, None]
    long = plan_chunks(5400.0, NTSC, 60)
    assert len(long) == 89 and all(s.start_frame == i * 1800 for i, s in enumerate(long))


def test_a_later_chunk_warms_up_just_before_its_first_frame_on_the_absolute_grid():
    window = chunk_window(ChunkSpan(2, 3600, 1800), Fraction(30), first_frame=42, file_start_s=1.4)
    # One second (30 frames) of warm-up before frame 3600 of the plan, i.e. absolute frame 3642.
    assert (window.grid_start_frame, window.skip_frames) == (3612, 30)
    assert window.seek_s == float(Fraction(3612, 30)) - 1.4  # -ss counts from the file's start


def test_the_first_chunk_reads_from_the_start():
    window = chunk_window(ChunkSpan(0, 0, 1800), Fraction(30), first_frame=42, file_start_s=1.4)
    assert (window.seek_s, window.grid_start_frame, window.skip_frames) == (0.0, 42, 0)
