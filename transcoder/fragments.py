"""Moving a CMAF media segment along the video's timeline: the few box fields that say where it is.

A chunk is cut into segments on its own (its timestamps start at 0), but players join segments of
several chunks into one timeline, so each segment must say where it sits in the whole video:
the track fragment's decode time (`tfdt`), the segment index's earliest presentation time (`sidx`)
and the fragment's sequence number (`mfhd`). Shifted by the chunk's start (whole GOPs, so an exact
number of ticks), the segments are byte for byte those of the stitched rendition cut in one pass
(tests/test_chunk_segments.py). Nothing else in the file moves: sizes and offsets stay as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from fractions import Fraction

# Boxes whose children we walk to reach mdhd (in the init segment) and tfdt (in a fragment).
CONTAINERS = {b"moov", b"trak", b"mdia", b"moof", b"traf"}


def _boxes(data: bytearray | bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset of the payload, offset of the end) of each box in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise ValueError(f"a malformed {kind!r} box at byte {at}")
        yield kind, at + header, at + size
        at += size


def _walk(data: bytearray | bytes, start: int, end: int) -> Iterator[tuple[bytes, int]]:
    """Every box under the containers we know, depth first: (type, payload offset)."""
    for kind, payload, stop in _boxes(data, start, end):
        yield kind, payload
        if kind in CONTAINERS:
            yield from _walk(data, payload, stop)


def track_timescale(init_segment: bytes) -> int:
    """The media timescale of the (only) track: ticks per second of tfdt and trun."""
    for kind, payload in _walk(init_segment, 0, len(init_segment)):
        if kind == b"mdhd":
            version = init_segment[payload]
            return struct.unpack_from(">I", init_segment, payload + (20 if version == 1 else 12))[0]
    raise ValueError("no mdhd box in the init segment")


def ticks(seconds: Fraction, timescale: int) -> int:
    exact = seconds * timescale
    if exact.denominator != 1:
        raise ValueError(f"{seconds} s is not a whole number of ticks at {timescale} per second")
    return int(exact)


def _add(data: bytearray, at: int, wide: bool, amount: int) -> None:
    form = ">Q" if wide else ">I"
    value = struct.unpack_from(form, data, at)[0] + amount
    if value >= 1 << (64 if wide else 32):
        raise ValueError("the shifted time does not fit its box's 32-bit field")
    struct.pack_into(form, data, at, value)


def shift_segment(segment: bytes, *, by: Fraction, timescale: int, sequence_by: int) -> bytes:
    """The media segment moved `by` seconds later, its fragments numbered `sequence_by` further."""
    data = bytearray(segment)
    for kind, payload in _walk(data, 0, len(data)):
        wide = data[payload] == 1  # the full box's version: 1 has 64-bit times
        if kind == b"tfdt":
            _add(data, payload + 4, wide, ticks(by, timescale))
        elif kind == b"sidx":
            sidx_scale = struct.unpack_from(">I", data, payload + 8)[0]
            _add(data, payload + 12, wide, ticks(by, sidx_scale))
        elif kind == b"mfhd":
            _add(data, payload + 4, False, sequence_by)
    return bytes(data)


def decode_times(segment: bytes) -> list[int]:
    """The tfdt of each fragment of a media segment, in its track's ticks."""
    times = []
    for kind, payload in _walk(segment, 0, len(segment)):
        if kind == b"tfdt":
            wide = segment[payload] == 1
            times.append(struct.unpack_from(">Q" if wide else ">I", segment, payload + 4)[0])
    return times


def append_fragments(segment: bytes, tail: bytes) -> bytes:
    """`segment` with the fragments (moof + mdat) of the segment that follows it appended: one CMAF
    segment of two fragments. The tail's own `styp` and `sidx` go; the segment's `sidx` (ffmpeg
    writes one with a single reference) is widened so its reference spans both fragments, in bytes
    and in time, as a player reading the index expects. The fragments keep their sequence numbers
    and decode times, which already follow on."""
    tail_boxes = list(_boxes(tail, 0, len(tail)))
    fragments = b"".join(tail[payload - 8:stop] for kind, payload, stop in tail_boxes
                         if kind not in (b"styp", b"sidx"))
    data = bytearray(segment)
    index = next((payload for kind, payload, _ in _boxes(data, 0, len(data)) if kind == b"sidx"), None)
    tail_index = next((payload for kind, payload, _ in tail_boxes if kind == b"sidx"), None)
    if index is not None:
        if tail_index is None:
            raise ValueError("the segment has a sidx box, the fragment after it none")
        _widen_index(data, index, len(fragments), _index_duration(tail, tail_index))
    return bytes(data) + fragments


def _index_reference(data: bytearray | bytes, payload: int) -> tuple[int, int]:
    """(offset of the last reference, reference count) of the sidx box at `payload`."""
    wide = data[payload] == 1
    count_at = payload + 12 + (16 if wide else 8) + 2
    count = struct.unpack_from(">H", data, count_at)[0]
    if count == 0:
        raise ValueError("a sidx box without references")
    return count_at + 2 + 12 * (count - 1), count


def _index_duration(data: bytes, payload: int) -> int:
    """The whole duration a sidx box indexes, in its timescale."""
    last, count = _index_reference(data, payload)
    return sum(struct.unpack_from(">I", data, last - 12 * i + 4)[0] for i in range(count))


def _widen_index(data: bytearray, payload: int, size: int, duration: int) -> None:
    """The sidx's last reference (a subsegment: one or more fragments) grown by `size` bytes and
    `duration` ticks, the fragments appended after it."""
    last, _ = _index_reference(data, payload)
    reference = struct.unpack_from(">I", data, last)[0]
    if (reference & 0x7FFFFFFF) + size >= 1 << 31:
        raise ValueError("the appended fragments do not fit the sidx reference's size field")
    struct.pack_into(">I", data, last, reference + size)
    _add(data, last + 4, False, duration)
