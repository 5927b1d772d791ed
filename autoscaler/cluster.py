"""`vidfarm autoscaler`: scale worker Deployments in a Kubernetes cluster.

Several replicas may run for availability; a Lease elects the one that acts (scales and reconciles).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from prometheus_client import start_http_server

from autoscaler import metrics, runtime
from autoscaler.config import AutoscalerConfig, load_config
from autoscaler.controller import Controller
from autoscaler.k8s import deployments_for, load_kube_client
from autoscaler.leader import LeaseElector
from autoscaler.observe import FarmObserver
from vidfarm import metrics as farm_metrics
from vidfarm.farm import Farm
from vidfarm.settings import Settings

log = logging.getLogger(__name__)

# How long shutdown waits for the controller's pass in progress before releasing the lease anyway.
LAST_PASS_TIMEOUT_S = 10.0


def forget_leader_gauges() -> None:
    """Drop the gauges only the leader keeps current (pools, queues, workers). A follower still
    exporting its last values would be double-counted by the dashboard's `sum by`."""
    for gauge in (metrics.DESIRED_REPLICAS, metrics.CURRENT_REPLICAS, metrics.BACKLOG_SECONDS,
                  farm_metrics.QUEUE_JOBS, farm_metrics.WORKERS):
        gauge.clear()


def resync_interval(config: AutoscalerConfig, flag_s: float | None) -> float:
    """`--resync` overrides pools.yaml only when given: the deployed autoscaler passes no flag."""
    return config.resync_s if flag_s is None else flag_s


def run_cluster_autoscaler(
    settings: Settings, config_path: str, *, dry_run: bool, metrics_port: int, resync_s: float | None = None
) -> None:
    config = load_config(config_path)
    resync = resync_interval(config, resync_s)
    api_client = load_kube_client()
    pools = deployments_for(config.pools, dry_run=dry_run, api_client=api_client)
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    leader = LeaseElector(config.namespace, config.lease_name, identity, api_client=api_client,
                          on_lost=forget_leader_gauges)
    farm = Farm(settings)
    farm.storage  # noqa: B018 - its reconciler sweeps it: a storage of another catalog stops it here
    controller = Controller(
        pools, FarmObserver(farm),
        resync_s=resync, leader=leader, on_status=lambda status: runtime.publish_status(farm, status),
    )
    start_http_server(metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("autoscaler %s: %d pool(s), resync %.1f s%s", identity, len(config.pools), resync,
             " (dry run: no changes are made)" if dry_run else "")
    # In dry-run nothing may change, and the reconciler re-queues jobs: it only runs for real.
    threads = runtime.start(farm, controller, stop, resync_s=resync, may_act=lambda: leader.is_leader and not dry_run)
    stop.wait()
    log.info("autoscaler stopping")
    # Release only after the last pass: a rival must not scale while this one still does. A rollout
    # then fails over at once instead of after the lease duration.
    for thread in threads:
        if thread.name == "controller":
            thread.join(LAST_PASS_TIMEOUT_S)
    leader.release()
