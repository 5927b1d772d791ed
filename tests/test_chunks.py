"""The chunk plan: whole 6 s segments on the output frame grid, a first chunk of one segment, later
chunks sized to the pool, the last chunk open-ended; and where a chunk job seeks and cuts."""

from __future__ import annotations

from fractions import Fraction

from vidfarm.chunks import ChunkSpan, chunk_frames, chunk_window, later_chunk_segments, plan_chunks

NTSC = Fraction(30000, 1001)
SEGMENT = 180  # frames of a 6 s segment at 30 fps: 3 GOPs of 60


def lengths(spans: list[ChunkSpan]) -> list[int | None]:
    """Chunk lengths in segments (None: the open-ended last chunk)."""
    return [None if s.frames is None else s.frames // SEGMENT for s in spans]


def test_chunks_are_whole_segments_of_output_frames():
    assert chunk_frames(Fraction(30), 60) == 1800
    assert chunk_frames(NTSC, 60) == 1800  # 10 segments of 180 frames (6.006 s each), not 60 s of seconds
    assert chunk_frames(Fraction(25), 61.6) == 1500  # rounded to the nearest whole segment (10 x 150)
    assert chunk_frames(Fraction(30), 0.5) == 180  # never less than one segment


def test_a_video_of_one_segment_and_less_than_a_gop_is_one_chunk():
    assert plan_chunks(4.0, Fraction(30), 6) == [ChunkSpan(0, 0, None)]
    assert plan_chunks(7.9, Fraction(30), 6) == [ChunkSpan(0, 0, None)]  # 237 frames: a second chunk of 57


def test_a_longer_video_cuts_its_first_segment_off_as_its_own_chunk():
    for seconds in (8.0, 9.5, 12.0):  # the rest, 2 to 6 s, is one chunk however short
        assert plan_chunks(seconds, Fraction(30), 6) == [ChunkSpan(0, 0, SEGMENT), ChunkSpan(1, SEGMENT, None)]
    assert lengths(plan_chunks(12.5, Fraction(30), 6)) == [1, None]  # two segments and a short third


def test_the_first_chunk_is_one_segment_and_every_chunk_starts_on_a_segment():
    spans = plan_chunks(13.0, Fraction(30), 60)  # two segments and a short third
    assert spans == [ChunkSpan(0, 0, SEGMENT), ChunkSpan(1, SEGMENT, None)]
    spans = plan_chunks(5400.0, NTSC, 60)
    assert spans[0] == ChunkSpan(0, 0, SEGMENT)
    assert all(s.start_frame % SEGMENT == 0 for s in spans)
    assert all(s.frames is not None and s.frames % SEGMENT == 0 for s in spans[:-1])


def test_the_last_chunk_takes_the_remainder_and_any_error_in_the_declared_duration():
    spans = plan_chunks(150.0, Fraction(30), 60)  # 25 segments: 1 + 24 in chunks of at most 10
    assert lengths(spans) == [1, 8, 8, None]
    assert spans[-1].start_frame == 17 * SEGMENT
    long = plan_chunks(5400.0, NTSC, 60)
    assert len(long) == 91 and set(lengths(long)[1:-1]) <= {9, 10}  # 898 segments after the first


def test_a_long_video_has_a_chunk_for_every_worker_of_the_pool():
    spans = plan_chunks(1200.0, Fraction(30), 60, workers=8)  # 20 min, with the measured minimum
    later = lengths(spans)[1:]
    assert len(later) >= 8 and all(n is None or 3 <= n <= 10 for n in later)
    assert max(n for n in later if n) - min(n for n in later if n) <= 1
    spans = plan_chunks(1200.0, Fraction(30), 60, workers=8, min_chunk_seconds=18)  # 199 segments after the first
    later = lengths(spans)[1:-1]
    # Three whole waves of 8 chunks (two would need chunks over 60 s), as even as whole segments allow.
    assert len(spans) - 1 == 24
    assert max(later) - min(later) <= 1 and max(later) <= 10
    assert sorted(later, reverse=True) == later  # the longest start first


def test_a_short_video_is_not_split_below_the_minimum_chunk():
    spans = plan_chunks(30.0, Fraction(30), 60, workers=8, min_chunk_seconds=18)
    assert lengths(spans) == [1, None]  # the first segment, then 24 s as one chunk, not four of 6 s
    spans = plan_chunks(120.0, Fraction(30), 60, workers=8, min_chunk_seconds=18)
    assert lengths(spans) == [1, 4, 3, 3, 3, 3, None]  # 19 segments: 6 chunks of at least 3, not 8


def test_the_configured_chunk_length_is_the_upper_bound():
    assert later_chunk_segments(19, workers=1, max_segments=10, min_segments=3) == [10, 9]
    # The operator's bound wins over the measured minimum (tests use 6 s chunks on short clips).
    assert later_chunk_segments(4, workers=1, max_segments=1, min_segments=3) == [1, 1, 1, 1]
    assert later_chunk_segments(0, workers=8, max_segments=10, min_segments=3) == []


def test_a_later_chunk_warms_up_just_before_its_first_frame_on_the_absolute_grid():
    window = chunk_window(ChunkSpan(2, 3600, 1800), Fraction(30), first_frame=42, file_start_s=1.4)
    # One second (30 frames) of warm-up before frame 3600 of the plan, i.e. absolute frame 3642.
    assert (window.grid_start_frame, window.skip_frames) == (3612, 30)
    assert window.seek_s == float(Fraction(3612, 30)) - 1.4  # -ss counts from the file's start


def test_the_first_chunk_reads_from_the_start():
    window = chunk_window(ChunkSpan(0, 0, 1800), Fraction(30), first_frame=42, file_start_s=1.4)
    assert (window.seek_s, window.grid_start_frame, window.skip_frames) == (0.0, 42, 0)
