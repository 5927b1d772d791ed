"""Prometheus metrics of the API and the workers (the autoscaler keeps its own in autoscaler/).

Names carry their unit; labels stay low-cardinality (never a video id or a filename).
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import Counter, Gauge, Histogram

# Histogram buckets in seconds: requests take milliseconds, transcodes and queue waits up to hours.
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LONG_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

UPLOADS = Counter("vidfarm_uploads_total", "Uploads by result.", ["result"])
UPLOAD_BYTES = Counter("vidfarm_upload_bytes_total", "Bytes received in accepted uploads.")
UPLOAD_SECONDS = Histogram("vidfarm_upload_duration_seconds", "Time to receive, store and probe an upload.",
                           buckets=FAST_BUCKETS + LONG_BUCKETS[3:])
HTTP_SECONDS = Histogram("vidfarm_http_request_duration_seconds", "API request latency.",
                         ["method", "route", "status"], buckets=FAST_BUCKETS)
JOBS_ENQUEUED = Counter("vidfarm_jobs_enqueued_total", "Transcoding jobs queued.", ["queue"])
QUEUE_JOBS = Gauge("vidfarm_queue_jobs", "Jobs per queue and state.", ["queue", "state"])
JOB_WAIT_SECONDS = Histogram("vidfarm_job_wait_seconds", "Time from enqueue to a worker starting the job.",
                             ["queue"], buckets=FAST_BUCKETS + LONG_BUCKETS[3:])
TRANSCODE_SECONDS = Histogram("vidfarm_transcode_duration_seconds", "Wall time of one transcode.",
                              ["queue", "encoder"], buckets=LONG_BUCKETS)
TRANSCODE_SPEED = Histogram("vidfarm_transcode_speed_ratio", "Seconds of video transcoded per wall second.",
                            ["encoder"], buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
TRANSCODES = Counter("vidfarm_transcodes_total", "Finished transcode attempts by result.", ["encoder", "result"])
FAILURES = Counter("vidfarm_failures_total", "Videos that failed, or were canceled while being made, by reason.",
                   ["reason"])
STORAGE_ORPHANS = Gauge("vidfarm_storage_orphans", "Video ids in storage that the catalog has no row for "
                        "(kept, never removed automatically: `vidfarm storage orphans` lists them).")
WORKERS = Gauge("vidfarm_workers", "Workers by pool and state.", ["pool", "state"])
# One observation per published rendition (its whole-video mean), by rung; not-scored ones are counted.
VMAF_BUCKETS = (20, 40, 50, 60, 70, 75, 80, 85, 90, 93, 95, 97, 99, 100)
RENDITION_VMAF = Histogram("vidfarm_rendition_vmaf", "VMAF mean (vmaf_v0.6.1) of each published rendition.",
                           ["rung"], buckets=VMAF_BUCKETS)
RENDITION_VMAF_P5 = Histogram("vidfarm_rendition_vmaf_p5", "VMAF 5th percentile of each published rendition.",
                              ["rung"], buckets=VMAF_BUCKETS)
RENDITIONS_NOT_SCORED = Counter("vidfarm_renditions_not_scored_total", "Published renditions without a score.",
                                ["rung"])
# `kept`: first or retry, whichever had the higher 5th percentile (transcoder/floor.py).
FLOOR_REENCODES = Counter("vidfarm_floor_reencodes_total", "Chunk renditions encoded again under their VMAF floor.",
                          ["rung", "kept"])

# Known label values start at zero, so dashboards show a flat line instead of "no data" until the
# first failure (and rate() has a series to work on).
FAILURE_REASONS = ("media_error", "truncated", "stalled", "timeout", "storage_error", "worker_lost", "killed",
                   "upload_expired", "canceled")
for _reason in FAILURE_REASONS:
    FAILURES.labels(_reason)
for _result in ("accepted", "rejected", "abandoned"):
    UPLOADS.labels(_result)


def rung_label(name: str, rungs: Collection[str]) -> str:
    """Renditions below the ladder (named by their own size) share one label: bounded cardinality."""
    return name if name in rungs else "below_ladder"


def observe_quality(renditions: list[dict], rungs: Collection[str]) -> None:
    for rendition in renditions:
        rung = rung_label(rendition["name"], rungs)
        score = rendition.get("quality")
        if score is None:
            RENDITIONS_NOT_SCORED.labels(rung).inc()
            continue
        RENDITION_VMAF.labels(rung).observe(score["vmaf_mean"])
        RENDITION_VMAF_P5.labels(rung).observe(score["vmaf_p5"])
