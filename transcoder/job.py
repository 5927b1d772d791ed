"""The RQ jobs of a video's graph: chunk, audio and finalize, with the catalog as the record of truth.

Every attempt claims its task with a compare-and-set on the task's job id, so a stale duplicate of
an older attempt (after a worker was presumed dead, or Redis was wiped and the job re-queued) does
nothing. An attempt writes into its own folder, named by its job id (in the shared directory, or on
local scratch and then uploaded under the video's prefix of an object store); the catalog records
which attempt finished, and only that attempt's files are ever read. Errors the input causes fail the
video at once (and stop its other tasks); anything else (the object store down, say) is left for
the reconciler to retry.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError

from transcoder import floor, fragments, quality
from transcoder.command import (
    CUT_LIST,
    ENCODERS,
    Encoder,
    audio_args,
    chunk_args,
    concat_list,
    poster_args,
    segment_args,
    stitch_args,
)
from transcoder.ladder import RUNGS, OutputPlan, plan_outputs, poster_size, rungs_named
from transcoder.runner import Canceled, FfmpegError, FfmpegKilled, FfmpegStalled, run_ffmpeg
from vidfarm import cancel, events, lifecycle, metrics, package, rerun, segments
from vidfarm.catalog import Task
from vidfarm.chunks import ChunkSpan, chunk_window, segment_frames
from vidfarm.farm import Farm
from vidfarm.probe import SourceInfo
from vidfarm.rungs import stream_only
from vidfarm.settings import Settings
from vidfarm.states import ACTIVE, TASK_ACTIVE, TaskKind, TaskStatus, VideoStatus
from vidfarm.storage import STORAGE_ERRNOS, StorageUnavailable

log = logging.getLogger(__name__)

EVENT_INTERVAL_S = 0.25
CATALOG_INTERVAL_S = 1.0
SHORTFALL_TOLERANCE_S = 2.0
SHORTFALL_TOLERANCE_RATIO = 0.05
# The same errors reported by ffmpeg itself (it opens and writes the outputs): its stderr carries
# the strerror text. They are the disk's fault, not the input's. EIO is left out: ffmpeg also says
# "Input/output error" about broken input files.
STORAGE_MESSAGES = tuple(os.strerror(e) for e in sorted(STORAGE_ERRNOS - {errno.EIO}))


@dataclass
class WorkerIdentity:
    """Set by the worker process before it takes jobs."""

    name: str = "unknown"
    encoder: Encoder = ENCODERS["x264"]
    stall_timeout_s: float = 300.0


IDENTITY = WorkerIdentity()
_FARM: Farm | None = None


def current_farm() -> Farm:
    global _FARM
    if _FARM is None:
        _FARM = Farm(Settings.from_env(), role="worker")
    return _FARM


def use_farm(farm: Farm) -> None:
    global _FARM
    _FARM = farm


def run_task(video_id: str, task_name: str, job_id: str) -> str:
    """RQ entry point (enqueued by dotted path). Returns the outcome for RQ's result record."""
    farm = current_farm()
    task = farm.catalog.task(video_id, task_name)
    kind = task.kind if task else TaskKind.CHUNK
    return KINDS[kind](farm, video_id, task_name, job_id).run()


def source_from_row(video: dict[str, Any]) -> SourceInfo:
    return SourceInfo(
        duration_s=video["duration_s"], width=video["width"], height=video["height"], fps=video["fps"],
        video_codec=video["video_codec"], audio_codec=video["audio_codec"], pix_fmt="", rotation=0,
        interlaced=bool(video.get("interlaced")), hdr_transfer=video.get("hdr_transfer"),
        start_s=video.get("start_s") or 0.0, file_start_s=video.get("file_start_s") or 0.0,
    )


class SourceEndsEarly(Exception):
    """ffmpeg stopped cleanly but well short of where the source should still have pictures: a file
    cut short (any container). Publishing it would hand users a video that silently stops."""


def check_complete(encoded_s: float, duration_s: float) -> None:
    # A little slack: declared durations are rounded, and audio may outlast the last video frame.
    if encoded_s < duration_s - max(SHORTFALL_TOLERANCE_S, SHORTFALL_TOLERANCE_RATIO * duration_s):
        raise SourceEndsEarly(
            f"the source ends early: only {encoded_s:.1f} s of its declared {duration_s:.1f} s could be decoded"
        )


class VideoFailed(Exception):
    """The input cannot be transcoded: fail the video with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TaskAttempt:
    """Claim, work, record: the protocol every kind of task follows. Subclasses do `work`."""

    kind = ""
    # Chunk and audio outputs are read later by finalize, maybe on another worker: kept in storage.
    keeps_files = True

    def __init__(self, farm: Farm, video_id: str, task_name: str, job_id: str) -> None:
        self.farm = farm
        self.catalog = farm.catalog
        self.video_id = video_id
        self.task_name = task_name
        self.job_id = job_id
        self.encoder = IDENTITY.encoder
        self.storage = farm.storage
        self.folder = self.storage.attempt_folder(video_id, job_id)
        self.kept: set[str] = set()  # files of this attempt already kept one by one

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> str:
        claimed = self.claim()
        if claimed is None:
            return "skipped"
        video, task = claimed
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # a storage error here fails the video clearly
            result = self.work(video, task)
            if self.keeps_files:
                self.storage.keep_attempt(self.video_id, self.job_id, self.kept)
        except Canceled:
            self.discard()
            return VideoStatus.CANCELED
        except VideoFailed as exc:
            return self.fail(exc.code, exc.message)
        except FfmpegError as exc:
            return self.fail(*self.explain(exc))
        except FfmpegStalled as exc:
            return self.fail("stalled", str(exc))
        except SourceEndsEarly as exc:
            return self.fail("truncated", str(exc))
        except JobTimeoutException:
            return self.fail("timeout", f"the {self.kind} job ran past its time limit")
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                self.discard()
                raise
            return self.fail("storage_error", f"storage error: {exc.strerror}")
        except FfmpegKilled as exc:
            # Killed from outside (the OOM killer, an operator): not the input's fault, so it runs
            # again; at the task's last attempt the video fails with the real reason instead.
            if task.attempts >= self.farm.settings.max_attempts:
                return self.fail("killed", str(exc))
            log.warning("video %s: %s: %s; it will run again", self.video_id, self.task_name, exc)
            self.discard()
            raise
        except BaseException:
            # Transient (database, Redis, a signal): this attempt's files are dropped, the task stays
            # `running` and the reconciler runs it again once this worker is no longer on it. The
            # reconciler counts the retry (it also sees workers that died).
            self.discard()
            raise
        return self.record(video, result)

    def claim(self) -> tuple[dict[str, Any], Task] | None:
        video = self.catalog.get(self.video_id, cached=False)
        task = self.catalog.task(self.video_id, self.task_name)
        if (video is None or task is None or video["status"] not in ACTIVE
                or task.job_id != self.job_id or task.status not in TASK_ACTIVE):
            log.info("job %s is stale (video %s is %s); skipping", self.job_id, self.video_id,
                     video and video["status"])
            return None
        claimed = lifecycle.start(self.farm, video, task, IDENTITY.name)
        if claimed is None:
            return None
        self.observe_wait(video["queue"])
        log.info("video %s: %s attempt %d on %s", self.video_id, self.task_name, claimed.attempts, IDENTITY.name)
        return video, claimed

    def work(self, video: dict[str, Any], task: Task) -> dict[str, Any]:
        raise NotImplementedError

    def record(self, video: dict[str, Any], result: dict[str, Any]) -> str:
        """This attempt counts only if the catalog still names it: the compare-and-set decides."""
        if not lifecycle.task_done(self.farm, self.video_id, self.task_name, self.job_id, result):
            self.discard()
            log.info("video %s: %s result dropped, the task was re-assigned or the video canceled",
                     self.video_id, self.task_name)
            return VideoStatus.CANCELED
        self.announce_if_playable()
        return TaskStatus.DONE

    def announce_if_playable(self) -> None:
        """Best effort after segments were recorded: what was recorded stays, and the next chunk or
        audio write checks again."""
        try:
            lifecycle.announce_if_playable(self.farm, self.video_id)
        except (SQLAlchemyError, redis.RedisError) as exc:
            log.warning("video %s: playable not checked: %s", self.video_id, type(exc).__name__)

    def keep_file(self, name: str) -> None:
        """Keep one file of this running attempt now, where other workers and the API read it."""
        self.storage.keep_attempt_file(self.video_id, self.job_id, name)
        self.kept.add(name)

    def fail(self, code: str, message: str) -> str:
        """Fails the whole video (a chunk that cannot be encoded is a video that cannot be); the
        lifecycle stops its other tasks."""
        self.discard()
        log.info("video %s: %s cannot be made: %s", self.video_id, self.task_name, code)
        if lifecycle.fail(self.farm, self.video_id, code, message, keep=self.job_id):
            metrics.TRANSCODES.labels(self.encoder.name, VideoStatus.FAILED).inc()
            # What the other tasks finished is of no use now; stragglers discard their own files.
            self.drop_work()
        return VideoStatus.FAILED

    # -- helpers ----------------------------------------------------------------------------------

    def explain(self, exc: FfmpegError) -> tuple[str, str]:
        # Users see this message: our storage layout (and presigned URLs) are none of their business.
        detail = self.storage.redact(exc.stderr_tail)
        storage = next((m for m in STORAGE_MESSAGES if m in detail), None)
        if storage is not None:
            return "storage_error", f"storage error: {storage} (ffmpeg: {detail})"
        return "media_error", f"ffmpeg could not transcode the source: {detail}"

    def discard(self) -> None:
        try:
            self.storage.drop_attempt(self.video_id, self.job_id)
        except OSError as exc:
            # A read-only disk refuses even this; failing here would leave the video
            # `processing` instead of `failed` with the real reason.
            log.warning("video %s: cannot remove %s: %s", self.video_id, self.folder.name, exc.strerror)
        except StorageUnavailable as exc:  # left under the video's prefix: DELETE or the next run removes it
            log.warning("video %s: cannot remove %s: %s", self.video_id, self.folder.name, exc)

    def drop_work(self) -> None:
        try:
            self.storage.drop_work(self.video_id)
        except StorageUnavailable as exc:
            log.warning("video %s: work files not removed: %s", self.video_id, exc)

    def cancel_requested(self) -> bool:
        try:
            return cancel.requested(self.farm.redis, self.video_id)
        except redis.RedisError:
            return False  # cannot tell; the final compare-and-set still catches a cancel

    def ffmpeg(self, args: list[str], on_progress=None) -> float:
        try:
            return run_ffmpeg(args, on_progress=on_progress, should_cancel=self.cancel_requested,
                              stall_timeout_s=IDENTITY.stall_timeout_s)
        except FfmpegError as exc:
            # Reading the source from an object store that failed is no fault of the input: retried.
            if self.storage.input_trouble(exc.stderr_tail):
                raise StorageUnavailable(f"ffmpeg could not read the source: {self.storage.redact(str(exc))}") from exc
            raise

    def source_input(self) -> str:
        """What ffmpeg opens: the source's path, or a presigned URL it reads ranges of."""
        return self.storage.source_location(self.video_id)

    def plans(self, video: dict[str, Any]) -> list[OutputPlan]:
        """Every output of the video: the downloads asked for (or the configured ladder) and the
        stream-only rungs below them. Chunks and finalize must agree, so both come from here."""
        settings = self.farm.settings
        names = video["requested"] or list(settings.ladder)
        streamed = rungs_named(stream_only(settings.ladder, settings.stream_rungs))
        return plan_outputs(source_from_row(video), rungs_named(names), streamed)

    def observe_wait(self, queue: str) -> None:
        job = get_current_job()
        if job is not None and job.enqueued_at is not None:
            waited = time.time() - job.enqueued_at.timestamp()
            metrics.JOB_WAIT_SECONDS.labels(queue).observe(max(0.0, waited))


def first_frame(video: dict[str, Any], fps: Fraction) -> int:
    """Frame 0 of the plan on the source's clock: the first video timestamp on the output grid."""
    return round(Fraction(video.get("start_s") or 0.0).limit_denominator(10**6) * fps)


class ChunkAttempt(TaskAttempt):
    """A run of frames of the picture, every rung from one decode, video only."""

    kind = TaskKind.CHUNK

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._last_event = 0.0
        self._last_write = 0.0
        self._others_done = 0

    def work(self, video: dict[str, Any], task: Task) -> dict[str, Any]:
        plans = self.plans(video)
        fps = plans[0].fps
        source = source_from_row(video)
        window = chunk_window(_span(task), fps, first_frame(video, fps), source.file_start_s)
        outputs = [(plan, self.folder / f"{plan.name}.mp4") for plan in plans]
        scorer = self.scorer(video, source, self.planned_frames(video, task), plans[0])
        encode = functools.partial(chunk_args, self.source_input(), window=window, frames=task.frames,
                                   encoder=self.encoder, deinterlace=source.interlaced,
                                   hdr_transfer=source.hdr_transfer)
        args = encode(outputs, reference=scorer.sample.reference if scorer else None)
        started = time.monotonic()
        self.ffmpeg(args, on_progress=lambda s: self.progress(video, round(s * fps)))
        frames = count_frames(outputs[0][1])
        self.check_frames(video, task, frames, fps)
        settings = self.farm.settings
        # Scoring takes as long as the encode or longer: where it cannot change the MP4s, the segments
        # are recorded first, so that the video plays that much sooner.
        early = scorer is not None and not floor.may_encode_again(plans, settings.vmaf_floor,
                                                                  settings.vmaf_floor_ceiling)
        cut = self.record_segments(plans, task.start_frame) if early else None
        # Scores; a rung under its floor is encoded again here and its MP4 replaced, before anything reads it.
        scores = floor.score_chunk(scorer, outputs, lambda again: self.ffmpeg(encode(again)),
                                   floors=settings.vmaf_floor, ceiling=settings.vmaf_floor_ceiling)
        self.progress(video, frames, force=True)
        metrics.TRANSCODE_SECONDS.labels(video["queue"], self.encoder.name).observe(time.monotonic() - started)
        return {"frames": frames, "rungs": [plan.name for plan in plans],
                "quality": scores, **(cut or self.cut_segments(plans, task.start_frame))}

    def record_segments(self, plans: list[OutputPlan], start_frame: int) -> dict[str, Any]:
        """Cut the segments, keep their files and record them while the chunk still runs (best effort,
        as the audio's: task_done records them anyway); then the video may be playable."""
        cut = self.cut_segments(plans, start_frame)
        names = [f"{rung}/{name}" for rung, made in cut["segments"].items()
                 for name in [package.INIT_SEGMENT, *(segments.segment_name(cut["first_segment"] + i)
                                                      for i in range(len(made)))]]
        with ThreadPoolExecutor(max_workers=8) as pool:  # object stores answer each slowly
            list(pool.map(self.keep_file, names))
        try:
            written = lifecycle.running_segments(self.farm, self.video_id, self.task_name, self.job_id, cut)
        except SQLAlchemyError as exc:
            log.warning("video %s: %s segments not recorded early: %s", self.video_id, self.task_name,
                        type(exc).__name__)
            return cut
        if written:
            self.announce_if_playable()
        return cut

    def cut_segments(self, plans: list[OutputPlan], start_frame: int) -> dict[str, Any]:
        """The chunk's final CMAF segments of every rung (stream copy of its MP4, which finalize still
        stitches into the downloads), numbered and timed on the whole video's grid: what the result
        records (vidfarm/segments.py)."""
        per_segment = segment_frames(plans[0].fps)
        if start_frame % per_segment:
            raise VideoFailed("internal_error", f"{self.task_name} starts at frame {start_frame}, "
                              f"not on a segment boundary (every {per_segment} frames)")
        first = start_frame // per_segment
        cut = {plan.name: self.segment_rung(plan, first, Fraction(start_frame) / plan.fps) for plan in plans}
        return {"first_segment": first, "segments": {name: made for name, (made, _) in cut.items()},
                "tracks": {name: info for name, (_, info) in cut.items()}}

    def segment_rung(self, plan: OutputPlan, first: int, start_s: Fraction) -> tuple[list[list[float]], dict[str, Any]]:
        """[[seconds, bytes], ...] of the rung's segments from `first`, and the track's descriptor.
        Cut on their own, the segments' times start at 0: moved to `start_s`, they are byte for byte
        those of the whole rendition cut in one pass (transcoder/fragments.py)."""
        folder = self.folder / plan.name
        folder.mkdir(exist_ok=True)
        self.ffmpeg(segment_args(self.folder / f"{plan.name}.mp4", "v:0", folder, segment_seconds(plan), first=first))
        init = (folder / package.INIT_SEGMENT).read_bytes()
        timescale = fragments.track_timescale(init)
        made = []
        for name, seconds in package.read_cut_list(folder / CUT_LIST):
            path = folder / name
            if first:
                path.write_bytes(fragments.shift_segment(path.read_bytes(), by=start_s, timescale=timescale,
                                                         sequence_by=first))
            made.append([seconds, path.stat().st_size])
        (folder / CUT_LIST).unlink()
        info = {"codecs": package.avc_codecs(init), "width": plan.width, "height": plan.height,
                "fps": f"{plan.fps.numerator}/{plan.fps.denominator}", "cap_bps": self.cap_bps(plan)}
        return made, info

    def cap_bps(self, plan: OutputPlan) -> int:
        """The most a segment of the rung may carry: a rung with a VMAF floor may be encoded again at
        the ceiling, and growing playlists announce this figure until the segments are measured."""
        settings = self.farm.settings
        raised = floor.floor_for(settings.vmaf_floor, plan) is not None
        return round(plan.maxrate_kbps * 1000 * (settings.vmaf_floor_ceiling if raised else 1))

    def scorer(self, video: dict[str, Any], source: SourceInfo, frames: int, plan: OutputPlan) -> floor.Scorer | None:
        """What scores this chunk, and which of its frames (every frame if the upload asked); None
        when no scorer runs here."""
        settings = self.farm.settings
        binary = quality.scorer_binary(settings.quality_scorer)
        if binary is None:
            return None
        full = video.get("quality_mode") == lifecycle.FULL_QUALITY
        sample = quality.chunk_sample(self.folder, frames, plan.gop_frames, source.width, source.height,
                                      every=1 if full else settings.quality_every,
                                      gop_every=1 if full else settings.quality_gop_every,
                                      max_bytes=settings.quality_max_reference_bytes)
        return floor.Scorer(binary, sample, plan.fps, self.encoder.threads, self.run_scorer)

    @staticmethod
    def planned_frames(video: dict[str, Any], task: Task) -> int:
        """The chunk's frames; the last chunk (no end) gets what the plan leaves for it."""
        return task.frames or max(1, (video.get("total_frames") or 0) - task.start_frame)

    def run_scorer(self, args: list[str], binary: str) -> None:
        run_ffmpeg(args, should_cancel=self.cancel_requested, stall_timeout_s=IDENTITY.stall_timeout_s, binary=binary)

    def check_frames(self, video: dict[str, Any], task: Task, frames: int, fps: Fraction) -> None:
        """A chunk in the middle must hold exactly its planned frames; the last one must reach about
        the declared end. Fewer means the source is cut short (or broken) there."""
        if task.frames is not None and frames != task.frames:
            if frames < task.frames:
                decoded_s = float((task.start_frame + frames) / fps)
                raise SourceEndsEarly(
                    f"the source ends early: only {decoded_s:.1f} s of its declared "
                    f"{video['duration_s']:.1f} s could be decoded"
                )
            raise VideoFailed("media_error", f"{self.task_name} produced {frames} frames, not {task['frames']}")
        if task.frames is None:
            check_complete(float((task.start_frame + frames) / fps), video["duration_s"])

    def progress(self, video: dict[str, Any], frames: int, force: bool = False) -> None:
        """Done frames over all frames, across every chunk of the video (others read each second)."""
        now = time.monotonic()
        total = max(1, video.get("total_frames") or 1)
        if force or now - self._last_write >= CATALOG_INTERVAL_S:
            self._last_write = now
            try:
                all_done = lifecycle.progress(self.farm, self.video_id, self.task_name, self.job_id, frames,
                                              lambda done: percent(done, total))
                self._others_done = all_done - frames
            except SQLAlchemyError as exc:
                # Progress is best effort: a database blip must not throw away an hour of encoding.
                log.warning("video %s: progress not saved: %s", self.video_id, type(exc).__name__)
        if force or now - self._last_event >= EVENT_INTERVAL_S:
            self._last_event = now
            events.publish(self.farm.redis, self.video_id, "progress",
                           progress=percent(self._others_done + frames, total))


def encoded_by_every_chunk(plans: list[OutputPlan], chunk_results: list[dict[str, Any]]) -> list[OutputPlan]:
    """The plans finalize can stitch: every download, and the stream-only rungs that every chunk
    encoded. Workers that disagree about VIDFARM_STREAM_RUNGS (a rolling change, or chunks encoded
    before stream rungs existed, whose results name no rungs) cost the stream a rung, not the video.
    A missing download still fails: that file was promised."""
    return [p for p in plans if p.download or all(p.name in r.get("rungs", ()) for r in chunk_results)]


def percent(done: int, total: int) -> float:
    return round(min(99.0, 100.0 * done / total), 1)


def _span(task: Task) -> ChunkSpan:
    return ChunkSpan(0, task.start_frame, task.frames)


def count_frames(path: Path) -> int:
    """Packets of the first video stream, read from the container index (nothing is decoded)."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    value = done.stdout.strip().rstrip(",")
    return int(value) if value.isdigit() else 0


class AudioAttempt(TaskAttempt):
    """The whole audio track once, lined up with the picture's first frame: the MP4 the downloads
    are stitched with, and the stream's segments, each stored and recorded as soon as it closes so
    that the audio is never what a video waits for to become playable."""

    kind = TaskKind.AUDIO

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stored: list[list[float]] = []  # [[seconds, bytes], ...] of the segments kept so far
        self.recorded = 0  # of which the catalog knows
        self._last_write = 0.0

    def work(self, video: dict[str, Any], task: Task) -> dict[str, Any]:
        plan = self.plans(video)[0]
        start_s = float(Fraction(first_frame(video, plan.fps)) / plan.fps)
        folder = self.folder / segments.AUDIO
        folder.mkdir(exist_ok=True)
        args = audio_args(self.source_input(), self.folder / "audio.m4a", folder, start_s=start_s,
                          segment_s=segment_seconds(plan))
        self.ffmpeg(args, on_progress=lambda _: self.publish_closed(folder))
        self.keep_closed(folder, ended=True)
        return {"segments": self.stored, "complete": True}

    def publish_closed(self, folder: Path) -> None:
        """Each second at most: keep the segments that closed, then record them in the catalog."""
        now = time.monotonic()
        if now - self._last_write < CATALOG_INTERVAL_S:
            return
        self._last_write = now
        self.keep_closed(folder)
        if len(self.stored) > self.recorded and self.record_segments():
            self.announce_if_playable()

    def keep_closed(self, folder: Path, *, ended: bool = False) -> None:
        """Store the segments ffmpeg listed since the last look that are final (its playlist lists
        closed ones only; it is replaced whole, by a rename, each time one closes): a segment is
        served as soon as it is stored, so one a short closing fragment may still join waits
        (package.settled_cuts)."""
        cut_list = folder / CUT_LIST
        closed = package.read_cut_list(cut_list) if cut_list.exists() else []
        settled, tail = package.settled_cuts(closed, ended=ended)
        if tail is not None:
            last = folder / settled[-1][0]
            last.write_bytes(fragments.append_fragments(last.read_bytes(), (folder / tail).read_bytes()))
        for name, seconds in settled[len(self.stored):]:
            if not self.stored:
                self.keep_file(f"{segments.AUDIO}/{package.INIT_SEGMENT}")
            self.keep_file(f"{segments.AUDIO}/{name}")
            self.stored.append([seconds, (folder / name).stat().st_size])

    def record_segments(self) -> bool:
        try:
            written = lifecycle.running_segments(self.farm, self.video_id, self.task_name, self.job_id,
                                                 {"segments": self.stored, "complete": False})
        except SQLAlchemyError as exc:
            # Best effort, as progress is: task_done records them all anyway.
            log.warning("video %s: audio segments not recorded: %s", self.video_id, type(exc).__name__)
            return False
        self.recorded = len(self.stored)
        return written


class FinalizeAttempt(TaskAttempt):
    """Stream copy only: stitch each download's chunks with the audio into its MP4, gather the
    segments the chunks and the audio task made (nothing is cut again), write the manifests, then
    publish everything at once."""

    kind = TaskKind.FINALIZE
    keeps_files = False  # published instead

    def claim(self) -> tuple[dict[str, Any], Task] | None:
        tasks = self.catalog.tasks(self.video_id)
        waiting = [t.name for t in tasks if t.kind != TaskKind.FINALIZE and t.status != TaskStatus.DONE]
        if waiting:
            # Run early (a repaired graph): the reconciler queues finalize again once they are done.
            log.info("video %s: finalize waits for %s", self.video_id, ", ".join(waiting[:5]))
            return None
        if self.encode_unrecorded(tasks):
            return None
        self.siblings = tasks
        return super().claim()

    def encode_unrecorded(self, tasks: list[Task]) -> bool:
        """Chunks encoded by a vidfarm from before segments were recorded (a rolling upgrade) left
        nothing to publish: they run again, and finalize is queued again after them. Whether any did."""
        current = any(t.kind == TaskKind.FINALIZE and t.job_id == self.job_id for t in tasks)
        unrecorded = [t for t in tasks if t.kind == TaskKind.CHUNK
                      and "segments" not in (segments.current_result(t) or {})]
        # A stale finalize job (replaced, its chunks released it anyway) leaves it to the current one.
        video = self.catalog.get(self.video_id, cached=False) if unrecorded and current else None
        if video is None or video["status"] not in ACTIVE:
            return False
        for task in unrecorded:
            if rerun.run_again(self.farm, video, task) is not None:
                log.info("video %s: %s recorded no segments; it runs again", self.video_id, task.name)
        return True

    def work(self, video: dict[str, Any], task: Task) -> dict[str, Any]:
        chunks = sorted((t for t in self.siblings if t.kind == TaskKind.CHUNK), key=lambda t: t.start_frame)
        audio = next((t for t in self.siblings if t.kind == TaskKind.AUDIO), None)
        audio_path = self.kept_file(audio, "audio.m4a") if audio else None
        plans = encoded_by_every_chunk(self.plans(video), [t.result for t in chunks])
        frames = sum(t.result["frames"] for t in chunks)
        renditions = []
        for plan in (p for p in plans if p.download):
            parts = [self.kept_file(t, f"{plan.name}.mp4") for t in chunks]
            listing = self.folder / f"{plan.name}.txt"
            listing.write_text(concat_list(parts))
            self.ffmpeg(stitch_args(listing, audio_path, self.folder / f"{plan.name}.mp4"))
            renditions.append(self.describe(plan, self.folder / f"{plan.name}.mp4", video["duration_s"])
                              | {"quality": quality.combine(_chunk_quality(t, plan.name) for t in chunks)})
        stream = self.package(plans, segments.stream_state(self.siblings))
        poster = self.make_poster(video)
        self.publish(plans, stream, poster)
        return {"frames": frames, "renditions": renditions, "has_poster": poster is not None}

    def kept_file(self, task: Task, name: str) -> Path:
        """A local path to a file the finished attempt of `task` kept (downloaded to scratch if need be)."""
        return self.storage.attempt_file(self.video_id, task.result["attempt"], name, self.folder / "in")

    def package(self, plans: list[OutputPlan], state: dict[str, segments.TrackState]) -> Path:
        """The recorded segments of every rung and of the audio in one folder, with today's VOD
        playlists, master playlist and DASH manifest."""
        stream = self.folder / "stream"
        tracks = [package.Track(plan.name, self.gather(stream, self.complete(state, plan.name)),
                                codecs=state[plan.name].info["codecs"], width=plan.width, height=plan.height,
                                fps=plan.fps) for plan in plans]
        audio = None
        if segments.AUDIO in state:
            audio = package.Track(segments.AUDIO, self.gather(stream, self.complete(state, segments.AUDIO)),
                                  codecs=package.AAC_LC_CODECS, sample_rate=segments.AUDIO_SAMPLE_RATE)
        for track in [*tracks, *([audio] if audio else [])]:
            (stream / track.folder / package.MEDIA_PLAYLIST).write_text(package.media_playlist(track))
        (stream / package.MASTER_PLAYLIST).write_text(package.master_playlist(tracks, audio))
        (stream / package.DASH_MANIFEST).write_text(package.dash_manifest(tracks, audio))
        return stream

    @staticmethod
    def complete(state: dict[str, segments.TrackState], name: str) -> segments.TrackState:
        track = state.get(name)
        if track is None or not track.complete:
            # Every task is done and every chunk recorded segments (claim ran the others again): a
            # rung that some chunk did not encode, which `encoded_by_every_chunk` leaves out.
            raise VideoFailed("internal_error", f"the {name} segments of some chunk were not recorded")
        return track

    def gather(self, stream: Path, track: segments.TrackState) -> tuple[package.Segment, ...]:
        """Each file of the track from the attempt that made it into stream/<track>/ (linked where
        it is already on this disk), several at once: object stores answer each slowly."""
        (stream / track.name).mkdir(parents=True)
        wanted = [(track.init_attempt, package.INIT_SEGMENT)]
        wanted += [(s.attempt, segments.segment_name(s.index)) for s in track.segments]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda w: self.place(w[0], f"{track.name}/{w[1]}", stream), wanted))
        return tuple(package.Segment(segments.segment_name(s.index), s.duration_s, s.size_bytes)
                     for s in track.segments)

    def place(self, attempt: str, name: str, stream: Path) -> None:
        kept = self.storage.attempt_file(self.video_id, attempt, name, self.folder / "in")
        try:
            os.link(kept, stream / name)
        except OSError:  # another file system
            shutil.copyfile(kept, stream / name)

    def make_poster(self, video: dict[str, Any]) -> Path | None:
        source = source_from_row(video)
        target = self.folder / "poster.jpg"
        width, height = poster_size(source)
        at_s = min(source.duration_s * 0.1, 5.0)
        try:
            run_ffmpeg(poster_args(self.source_input(), target, at_s=at_s, width=width, height=height),
                       stall_timeout_s=60)
        except FfmpegError as exc:
            log.warning("video %s: no poster: %s", self.video_id, exc)
            return None
        return target if target.exists() and target.stat().st_size > 0 else None

    def publish(self, plans: list[OutputPlan], stream: Path, poster: Path | None) -> None:
        """Renames (or uploads) into place. Nothing is served before the catalog says `ready`, so a
        crash halfway only leaves files that the next attempt replaces."""
        renditions = {plan.name: self.folder / f"{plan.name}.mp4" for plan in plans if plan.download}
        self.storage.publish(self.video_id, renditions, poster, stream)
        # What is left (downloaded chunks, stitch lists) goes before the catalog says ready. Local
        # only: finalize keeps nothing in the store under its attempt.
        shutil.rmtree(self.folder, ignore_errors=True)

    def describe(self, plan: OutputPlan, path: Path, duration_s: float) -> dict[str, Any]:
        size = path.stat().st_size
        # Average over the whole file (video + audio), as ffprobe's format bit_rate reports it.
        bitrate_kbps = round(size * 8 / max(duration_s, 0.001) / 1000)
        return {"name": plan.name, "width": plan.width, "height": plan.height,
                "bitrate_kbps": bitrate_kbps, "size_bytes": size}

    def record(self, video: dict[str, Any], result: dict[str, Any]) -> str:
        if not lifecycle.ready(self.farm, self.video_id, self.job_id, result):
            self.after_lost_claim()
            return VideoStatus.CANCELED
        log.info("video %s: ready (%s)", self.video_id, ", ".join(r["name"] for r in result["renditions"]))
        self.observe_success(video)
        metrics.observe_quality(result["renditions"], RUNGS)
        self.drop_work()
        return VideoStatus.READY

    def after_lost_claim(self) -> None:
        self.discard()
        video = self.catalog.get(self.video_id, cached=False)
        if video is None or video["status"] == VideoStatus.CANCELED:
            self.storage.delete_video(self.video_id)
        log.info("video %s: result dropped, the video was canceled or failed meanwhile", self.video_id)

    def observe_success(self, video: dict[str, Any]) -> None:
        wall_s = (time.time() - _timestamp(video["created_at"]))
        metrics.TRANSCODE_SPEED.labels(self.encoder.name).observe(video["duration_s"] / max(wall_s, 1e-3))
        metrics.TRANSCODES.labels(self.encoder.name, VideoStatus.READY).inc()


def _chunk_quality(task: Task, rung: str) -> dict[str, Any] | None:
    return (task.result.get("quality") or {}).get(rung)


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def segment_seconds(plan: OutputPlan) -> float:
    """Segments of whole GOPs, exactly: rounded down to the microsecond so that ffmpeg's segmenter,
    which cuts at the first keyframe at or after each multiple, cuts at that very keyframe."""
    exact = Fraction(segment_frames(plan.fps)) / plan.fps
    return (exact * 1_000_000).__floor__() / 1_000_000


KINDS: dict[TaskKind, type[TaskAttempt]] = {
    TaskKind.CHUNK: ChunkAttempt, TaskKind.AUDIO: AudioAttempt, TaskKind.FINALIZE: FinalizeAttempt,
}
