"""Prometheus metrics of the autoscaler, on prometheus_client's default registry.

Per-pool series only: the controller sees pool totals. Per-queue job counts
(`vidfarm_queue_jobs{queue,state}`) belong to the code that observes the individual queues.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DESIRED_REPLICAS = Gauge("vidfarm_autoscaler_desired_replicas", "Replicas the autoscaler last asked for", ["pool"])
CURRENT_REPLICAS = Gauge(
    "vidfarm_autoscaler_current_replicas", "Replicas the backend reported before the decision", ["pool"]
)
DECISIONS = Counter(
    "vidfarm_autoscaler_decisions",  # exposed as vidfarm_autoscaler_decisions_total
    "Autoscaler decisions by direction (up|down|none) and reason code",
    ["pool", "direction", "reason"],
)
BACKLOG_SECONDS = Gauge(
    "vidfarm_autoscaler_backlog_seconds",
    "Estimated seconds of transcoding work queued plus remaining in running jobs",
    ["pool"],
)
