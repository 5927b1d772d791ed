"""The vocabularies every process shares: a video's status, a task's kind and status, a worker's state.

They are `StrEnum`s, as RQ's `JobStatus` and `WorkerStatus` are: each member *is* its string, so the
catalog column, the presence hash in Redis, the events and the API's JSON hold the same text as
plain strings would, and a row read back compares equal to the member.
"""

from __future__ import annotations

from enum import StrEnum


class VideoStatus(StrEnum):
    """Where a video is in its life, as the catalog records it and the API shows it."""

    # A regular upload (POST) whose body is still arriving. The row records the intent before the first
    # byte is stored, so everything in storage has a row saying whose it is; its client has no id yet.
    RECEIVING = "receiving"
    UPLOADING = "uploading"  # a resumable (tus) upload still receiving bytes: not yet work for anyone
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    CANCELED = "canceled"


# A tuple, not a set: the catalog's compare-and-set reads a tuple as "one of". `receiving` and
# `uploading` are in neither: the reconciler must not plan or re-queue a video whose source has not
# fully arrived.
ACTIVE = (VideoStatus.QUEUED, VideoStatus.PROCESSING)
TERMINAL = frozenset({VideoStatus.READY, VideoStatus.FAILED, VideoStatus.CANCELED})


class TaskKind(StrEnum):
    """What one RQ job of a video's graph does: a chunk of the picture, the whole audio track, or the
    finalize step that stitches, packages and publishes."""

    CHUNK = "chunk"
    AUDIO = "audio"
    FINALIZE = "finalize"


class TaskStatus(StrEnum):
    """Where a task is: `done` keeps which attempt's files count (`Task.result`)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


# A task still to be run, or being run: the ones a failed or canceled video stops.
TASK_ACTIVE = (TaskStatus.QUEUED, TaskStatus.RUNNING)


class WorkerState(StrEnum):
    """What a worker is doing, as its presence hash says."""

    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"  # asked to stop; finishing its current job first
