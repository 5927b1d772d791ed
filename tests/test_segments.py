"""The segments of a video read from its tasks (vidfarm/segments.py): which exist, when it is playable,
and where each file is."""

from vidfarm.catalog import Task
from vidfarm.segments import AUDIO, is_playable, locate, stream_state
from vidfarm.states import TaskKind, TaskStatus

S = 180  # frames per segment at 30 fps
TRACK = {"codecs": "avc1.64001f", "width": 320, "height": 180, "fps": "30/1", "cap_bps": 400_000}


def chunk(index: int, segments: int, *, first: int | None = None, done: bool = True, rungs=("180p", "360p"),
          frames: int | None = None) -> Task:
    job_id, first = f"job-c{index}", index * segments if first is None else first
    result = {"attempt": job_id, "frames": segments * S, "rungs": list(rungs), "first_segment": first,
              "segments": {r: [[6.0, 1000 + n] for n in range(segments)] for r in rungs},
              "tracks": {r: TRACK for r in rungs}}
    return Task(f"chunk-{index:05d}", TaskKind.CHUNK, start_frame=first * S, frames=frames,
                status=TaskStatus.DONE if done else TaskStatus.RUNNING, job_id=job_id,
                result=result if done else None)


def audio(segments: int, *, complete: bool = False, job: str = "job-a") -> Task:
    status = TaskStatus.DONE if complete else TaskStatus.RUNNING
    result = {"attempt": job, "segments": [[6.0, 500]] * segments, "complete": complete}
    return Task("audio", TaskKind.AUDIO, status=status, job_id=job, result=result)


def test_contiguous_run_from_zero_only():
    state = stream_state([chunk(0, 2), chunk(1, 2, done=False), chunk(2, 2), audio(3)])
    assert [s.index for s in state["180p"].segments] == [0, 1]
    assert not state["180p"].complete
    assert state["180p"].info == TRACK and state["180p"].init_attempt == "job-c0"
    assert len(state[AUDIO].segments) == 3 and not state[AUDIO].complete
    assert is_playable(state)


def test_complete_when_every_chunk_and_the_audio_are_done():
    state = stream_state([chunk(0, 1), chunk(1, 2, first=1), audio(3, complete=True)])
    assert [s.index for s in state["360p"].segments] == [0, 1, 2]
    assert [s.attempt for s in state["360p"].segments] == ["job-c0", "job-c1", "job-c1"]
    assert all(t.complete for t in state.values())


def test_not_playable_without_the_first_chunk_or_the_audio():
    assert not is_playable(stream_state([chunk(0, 1, done=False), chunk(1, 2, first=1), audio(3)]))
    assert not is_playable(stream_state([chunk(0, 1), audio(0)]))
    assert is_playable(stream_state([chunk(0, 1)]))  # a silent video
    assert not is_playable(stream_state([audio(3)]))


def test_a_retried_tasks_old_result_counts_for_nothing():
    stale_chunk = Task("chunk-00000", TaskKind.CHUNK, status=TaskStatus.QUEUED, job_id="job-new",
                       result=chunk(0, 1).result)
    stale_audio = Task("audio", TaskKind.AUDIO, status=TaskStatus.RUNNING, job_id="job-new",
                       result=audio(2).result)
    state = stream_state([stale_chunk, stale_audio])
    assert state[AUDIO].segments == () and not is_playable(state)


def test_a_running_chunk_counts_once_it_recorded_its_segments():
    """A chunk scored without a floor records its segments before its scores: they play at once, yet
    the track is not complete until the chunk is done."""
    recorded = chunk(0, 1)
    running = Task("chunk-00000", TaskKind.CHUNK, status=TaskStatus.RUNNING, job_id="job-c0",
                   result={k: v for k, v in recorded.result.items() if k not in ("frames", "rungs")})
    state = stream_state([running, chunk(1, 2, first=1), audio(3, complete=True)])
    assert [s.index for s in state["180p"].segments] == [0, 1, 2] and is_playable(state)
    assert locate(state, "180p/init.mp4") == ("job-c0", "180p/init.mp4")
    assert not state["180p"].complete and state[AUDIO].complete
    retried = Task("chunk-00000", TaskKind.CHUNK, status=TaskStatus.RUNNING, job_id="job-again",
                   result=running.result)  # the attempt that recorded them was lost
    assert not is_playable(stream_state([retried, audio(3)]))


def test_locate_names_the_attempt_holding_each_file():
    state = stream_state([chunk(0, 1), chunk(1, 2, first=1), audio(2)])
    assert locate(state, "180p/init.mp4") == ("job-c0", "180p/init.mp4")
    assert locate(state, "180p/seg_00000.m4s") == ("job-c0", "180p/seg_00000.m4s")
    assert locate(state, "360p/seg_00002.m4s") == ("job-c1", "360p/seg_00002.m4s")
    assert locate(state, "audio/seg_00001.m4s") == ("job-a", "audio/seg_00001.m4s")
    assert locate(state, "audio/init.mp4") == ("job-a", "audio/init.mp4")
    for missing in ("360p/seg_00003.m4s", "audio/seg_00002.m4s", "720p/init.mp4", "180p/seg_1.m4s",
                    "180p/../x", "180p/index.m3u8", "180p"):
        assert locate(state, missing) is None, missing
