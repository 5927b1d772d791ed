"""Moving a media segment along the timeline (transcoder/fragments.py) on hand-built boxes; the real
segments of a real farm are checked in tests/test_chunk_segments.py."""

import struct
from fractions import Fraction

import pytest

from transcoder.fragments import decode_times, shift_segment, track_timescale


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full(kind: bytes, version: int, payload: bytes) -> bytes:
    return box(kind, bytes([version, 0, 0, 0]) + payload)


def segment(tfdt: int, *, wide: bool = True, sequence: int = 1, ept: int = 0) -> bytes:
    sidx = full(b"sidx", 1, struct.pack(">II", 1, 30000) + struct.pack(">QQ", ept, 0) + b"\0" * 16)
    time = struct.pack(">Q", tfdt) if wide else struct.pack(">I", tfdt)
    moof = box(b"moof", full(b"mfhd", 0, struct.pack(">I", sequence))
               + box(b"traf", full(b"tfhd", 0, b"\0" * 4) + full(b"tfdt", 1 if wide else 0, time)))
    return box(b"styp", b"msdh") + sidx + moof + box(b"mdat", b"picture")


def test_a_segment_moves_by_whole_ticks_and_its_fragments_renumber():
    moved = shift_segment(segment(0), by=Fraction(6006, 1000), timescale=30000, sequence_by=3)
    assert decode_times(moved) == [180180]
    assert moved == segment(180180, sequence=4, ept=180180)  # tfdt, sidx and mfhd, nothing else
    assert moved.endswith(box(b"mdat", b"picture"))  # the media itself is untouched


def test_a_time_that_is_not_whole_ticks_or_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="ticks"):
        shift_segment(segment(0), by=Fraction(1, 7), timescale=30000, sequence_by=1)
    with pytest.raises(ValueError, match="32-bit"):
        shift_segment(segment(2**32 - 10, wide=False), by=Fraction(1), timescale=30000, sequence_by=1)


def test_the_timescale_is_read_from_the_init_segments_mdhd():
    mdhd = full(b"mdhd", 0, struct.pack(">IIII", 0, 0, 12800, 0) + b"\0" * 4)
    init = box(b"ftyp", b"iso6") + box(b"moov", box(b"trak", box(b"mdia", mdhd)))
    assert track_timescale(init) == 12800
