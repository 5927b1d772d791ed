"""A track a whole number of segments long ends in a lone AAC frame: that closing fragment joins the
segment before it (vidfarm/package.py settled_cuts, transcoder/fragments.py append_fragments).
The rule on cut lists, then the merge on segments ffmpeg really cut; the published package of a real
farm is checked in tests/test_chunk_segments.py."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import ffmpeg
import pytest

from transcoder.command import CUT_LIST, audio_options, cmaf_options
from transcoder.fragments import _boxes, _walk, append_fragments, decode_times
from vidfarm.package import SHORT_TAIL_S, read_cut_list, settled_cuts

FULL, TAIL = 6.016, 0.021333  # what ffmpeg lists for 30 s of sound in 6 s segments


def cuts(*durations: float) -> list[tuple[str, float]]:
    return [(f"seg_{i:05d}.m4s", d) for i, d in enumerate(durations)]


def test_while_ffmpeg_runs_the_newest_segment_waits_and_so_does_the_one_before_a_short_newest():
    assert settled_cuts([], ended=False) == ([], None)
    assert settled_cuts(cuts(FULL), ended=False) == ([], None)  # segment 0 waits for segment 1
    assert settled_cuts(cuts(FULL, 5.99, FULL), ended=False) == (cuts(FULL, 5.99), None)
    # The tail is listed before ffmpeg has exited: the segment it joins is not published yet.
    assert settled_cuts(cuts(FULL, FULL, TAIL), ended=False) == (cuts(FULL), None)


def test_once_ffmpeg_ended_a_short_tail_joins_the_segment_before_it_with_both_durations():
    assert settled_cuts(cuts(FULL, FULL, TAIL), ended=True) == (cuts(FULL, 6.037333), "seg_00002.m4s")
    just_long_enough = cuts(FULL, SHORT_TAIL_S)
    assert settled_cuts(just_long_enough, ended=True) == (just_long_enough, None)
    assert settled_cuts(cuts(FULL, 2.0), ended=True) == (cuts(FULL, 2.0), None)
    assert settled_cuts(cuts(TAIL), ended=True) == (cuts(TAIL), None)  # nothing to join: kept as it is


@pytest.fixture(scope="module")
def cut(tmp_path_factory) -> Path:
    """30 s of a sine cut as the audio task cuts it."""
    folder = tmp_path_factory.mktemp("audio-tail")
    sound = ffmpeg.input("sine=frequency=330:duration=30", f="lavfi")
    out = sound.output(str(folder / CUT_LIST), **audio_options(), **cmaf_options(folder, 6.0))
    subprocess.run(["ffmpeg", *out.global_args("-loglevel", "error").overwrite_output().get_args()], check=True)
    return folder


def packets(path: Path) -> list[str]:
    done = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-c", "copy", "-f", "framemd5", "-"],
                          capture_output=True, text=True, check=True)
    return [line.split(",")[5].strip() for line in done.stdout.splitlines() if not line.startswith("#")]


def sidx_reference(segment: bytes) -> tuple[int, int]:
    """(referenced size, subsegment duration) of the one reference of the segment's sidx (version 1)."""
    payload = next(p for kind, p, _ in _boxes(segment, 0, len(segment)) if kind == b"sidx")
    assert segment[payload] == 1 and struct.unpack_from(">H", segment, payload + 30)[0] == 1
    size, duration = struct.unpack_from(">II", segment, payload + 32)
    return size & 0x7FFFFFFF, duration


def sequence_numbers(segment: bytes) -> list[int]:
    return [struct.unpack_from(">I", segment, p + 4)[0] for kind, p in _walk(segment, 0, len(segment))
            if kind == b"mfhd"]


def test_the_joined_segment_holds_the_same_packets_and_an_index_spanning_both_fragments(cut, tmp_path):
    listed = read_cut_list(cut / CUT_LIST)
    assert [round(d, 6) for _, d in listed] == [FULL, 5.994667, 5.994667, 5.994667, FULL, TAIL]
    settled, tail = settled_cuts(listed, ended=True)
    last, tail_bytes = (cut / settled[-1][0]).read_bytes(), (cut / tail).read_bytes()
    joined = append_fragments(last, tail_bytes)

    # Two fragments back to back, numbered on, the second's decode time where the first ends.
    assert sequence_numbers(joined) == sequence_numbers(last) + sequence_numbers(tail_bytes)
    assert sequence_numbers(joined) == sorted(set(sequence_numbers(joined)))
    assert decode_times(joined) == decode_times(last) + decode_times(tail_bytes)
    assert [kind for kind, _, _ in _boxes(joined, 0, len(joined))] == [b"styp", b"sidx", b"moof", b"mdat",
                                                              b"moof", b"mdat"]
    # The index covers both fragments: from the first moof to the end of the file, and both durations.
    size, duration = sidx_reference(joined)
    first_moof = next(p - 8 for kind, p, _ in _boxes(joined, 0, len(joined)) if kind == b"moof")
    assert size == len(joined) - first_moof
    assert duration == sidx_reference(last)[1] + sidx_reference(tail_bytes)[1]

    init = (cut / "init.mp4").read_bytes()
    before, after = tmp_path / "before.mp4", tmp_path / "after.mp4"
    before.write_bytes(init + b"".join((cut / name).read_bytes() for name, _ in listed))
    after.write_bytes(init + b"".join((cut / name).read_bytes() for name, _ in settled[:-1]) + joined)
    assert packets(after) == packets(before)  # not a sample lost, moved or repeated


def test_segments_without_an_index_are_simply_joined_and_a_lone_index_is_refused(cut):
    first, tail = (cut / "seg_00004.m4s").read_bytes(), (cut / "seg_00005.m4s").read_bytes()

    def without_index(segment: bytes) -> bytes:
        return b"".join(segment[p - 8:stop] for kind, p, stop in _boxes(segment, 0, len(segment)) if kind != b"sidx")

    fragments_of_tail = without_index(tail)[24:]  # past the 24-byte styp
    assert append_fragments(without_index(first), without_index(tail)) == without_index(first) + fragments_of_tail
    with pytest.raises(ValueError, match="sidx"):
        append_fragments(first, without_index(tail))
