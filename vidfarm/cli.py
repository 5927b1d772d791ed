"""The `vidfarm` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import click

from vidfarm.settings import Settings
from vidfarm.states import VideoStatus
from vidfarm.terminal import api_call, print_video, wait_with_bar

DEFAULT_URL = "http://127.0.0.1:8000"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "rq.worker", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def refusing_bad_storage() -> Iterator[None]:
    """A missing bucket or wrong credentials, or a storage of another catalog: one line naming the
    bucket (and the catalogs) and the error, no traceback."""
    from vidfarm.ownership import ForeignStorage
    from vidfarm.storage import StorageUnavailable

    try:
        yield
    except StorageUnavailable as exc:
        raise click.ClickException(f"storage unusable: {exc}") from exc
    except ForeignStorage as exc:
        raise click.ClickException(str(exc)) from exc


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """vidfarm: an autoscaling video transcoding farm.

    Configuration comes from the environment: VIDFARM_HOME, REDIS_URL, DATABASE_URL,
    VIDFARM_STORAGE_URL (file:///path or s3://bucket/prefix; VIDFARM_STORAGE_DIR for a directory),
    VIDFARM_SCRATCH_DIR, VIDFARM_API_KEYS (or VIDFARM_API_KEYS_FILE), VIDFARM_MAX_UPLOAD_BYTES,
    VIDFARM_MAX_DURATION_S, VIDFARM_MAX_PIXELS.
    """
    setup_logging(verbose)


# -- running the farm ---------------------------------------------------------------------------


def _up_options(host, port, min_workers, max_workers, scale_down_after, encoder, queues, resync):
    from vidfarm.up import UpOptions

    if max_workers < max(min_workers, 1):
        raise click.BadParameter("--max-workers must be at least 1 and at least --min-workers")
    return UpOptions(host=host, port=port, min_workers=min_workers, max_workers=max_workers,
                     scale_down_after_s=scale_down_after, encoder=encoder, queues=tuple(queues), resync_s=resync)


def _run_up(settings: Settings, options, **kwargs) -> None:
    from vidfarm.up import UpError, run_up

    try:
        with refusing_bad_storage():
            run_up(settings, options, **kwargs)
    except UpError as exc:
        raise click.ClickException(str(exc)) from exc


def up_flags(func):
    for option in reversed([
        click.option("--host", default="127.0.0.1", show_default=True, help="API listen address."),
        click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="API port."),
        click.option("--min-workers", default=0, show_default=True, type=click.IntRange(0), help="Fewest workers."),
        click.option("--max-workers", default=os.cpu_count() or 2, show_default=True, type=click.IntRange(1),
                     help="Most workers (default: CPU count)."),
        click.option("--scale-down-after", default=None, type=click.FloatRange(0),
                     help="Seconds of idle capacity before workers are stopped (default: about as long as a "
                          "worker takes to start, learned from the starts measured)."),
        click.option("--encoder", default="x264", show_default=True, type=click.Choice(["x264", "nvenc", "auto"]),
                     help="Video encoder of the local workers."),
        click.option("--queue", "queues", multiple=True,
                     help="Queue the local workers serve; repeat for several (default: every queue in "
                          "VIDFARM_QUEUES). Uploads naming another queue are refused."),
        click.option("--resync", default=5.0, show_default=True, type=click.FloatRange(0.1),
                     help="Seconds between autoscaler passes besides those woken by new jobs."),
    ]):
        func = option(func)
    return func


@main.command()
@up_flags
def up(host, port, min_workers, max_workers, scale_down_after, encoder, queues, resync) -> None:
    """Run the whole farm on this machine.

    Starts Redis (unless REDIS_URL is set), the API and autoscaled workers in the foreground.
    Ctrl-C drains: busy workers finish their transcode; a second Ctrl-C interrupts them.
    Nothing it starts outlives it, and one runs per VIDFARM_HOME.
    """
    options = _up_options(host, port, min_workers, max_workers, scale_down_after, encoder, queues, resync)
    _run_up(load_settings(), options)


@main.command()
@up_flags
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to save the renditions (default: $VIDFARM_HOME/demo).")
def demo(host, port, min_workers, max_workers, scale_down_after, encoder, queues, resync, out) -> None:
    """Transcode a generated sample end to end.

    Brings the farm up, uploads a generated 1080p clip, downloads its renditions, stops.
    """
    from vidfarm.demo import run_demo

    options = _up_options(host, port, min_workers, max_workers, scale_down_after, encoder, queues, resync)
    result: dict = {}
    _run_up(load_settings(), options, after_start=lambda procs: result.update(run_demo(procs, out)))
    if result.get("status") != VideoStatus.READY:
        raise click.ClickException(f"demo video ended {result.get('status')}: {result.get('error')}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--fd", default=None, type=click.IntRange(0), hidden=True,
              help="Serve on this inherited listening socket instead (how `vidfarm up` runs the API).")
@click.option("--forwarded-allow-ips", envvar="FORWARDED_ALLOW_IPS", default="127.0.0.1", show_default=True,
              help="Peers (comma-separated addresses or CIDR ranges, '*' for any) whose X-Forwarded-Proto "
                   "and X-Forwarded-For are believed: your ingress or gateway. Env: FORWARDED_ALLOW_IPS.")
@click.option("--ready-fd", default=None, type=click.IntRange(0), hidden=True,
              help="Write one byte to this inherited pipe once serving (how `vidfarm up` tells a failed "
                   "start from a crash).")
def api(host: str, port: int, fd: int | None, forwarded_allow_ips: str, ready_fd: int | None) -> None:
    """Run the HTTP API (one process of a cluster deployment)."""
    import socket

    import uvicorn

    from uploader.announce import AnnouncingServer
    from uploader.app import create_app
    from uploader.http11 import server_config
    from vidfarm.farm import Farm

    settings = load_settings()
    if not settings.api_keys:
        raise click.ClickException("no API keys: set VIDFARM_API_KEYS or VIDFARM_API_KEYS_FILE")
    with refusing_bad_storage():
        app = create_app(Farm(settings))
    # h11 with bounds on header bytes and time (uploader/http11.py); the app answers 431 above 32 KiB.
    # Behind a TLS ingress the API sees plain HTTP: only X-Forwarded-Proto from a trusted peer makes
    # the URLs it builds from the request (tus Location, resources) https://. Anyone else could forge it.
    config = server_config(app, settings.header_timeout_s, host=host, port=port, log_level="warning",
                           timeout_graceful_shutdown=30, proxy_headers=True,
                           forwarded_allow_ips=forwarded_allow_ips)
    server = uvicorn.Server(config) if ready_fd is None else AnnouncingServer(config, ready_fd)
    server.run(sockets=None if fd is None else [socket.socket(fileno=fd)])


@main.command()
@click.option("--queue", "queues", multiple=True, default=["cpu"], show_default=True,
              help="Queue to take jobs from; repeat for several, in priority order.")
@click.option("--encoder", default="auto", show_default=True, type=click.Choice(["x264", "nvenc", "auto"]))
@click.option("--name", default=None, help="Worker name (default: host.pid).")
@click.option("--pool", default=None, help="Autoscaling pool name (default: the first queue).")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535), help="Serve /metrics here.")
def worker(queues, encoder, name, pool, metrics_port) -> None:
    """Run one transcoding worker. SIGTERM finishes the current job, then exits."""
    from transcoder.worker import EncoderUnusable, run_worker
    from vidfarm.farm import Farm

    try:
        with refusing_bad_storage():
            run_worker(Farm(load_settings(), role="worker"), list(queues), encoder=encoder, name=name,
                       pool=pool, metrics_port=metrics_port)
    except EncoderUnusable as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Deliveries attempted at once.")
def deliver(threads: int) -> None:
    """Send webhook events from the catalog's outbox until SIGTERM.

    Each API process already runs deliverers (unless VIDFARM_WEBHOOK_DELIVER_IN_API=0); run this to
    deliver from processes of its own. Any number may run: leases in the catalog share the work.
    """
    import signal
    import threading

    from uploader.resources import webhook_document
    from vidfarm.deliver import Deliverer
    from vidfarm.farm import Farm

    farm = Farm(load_settings())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running = Deliverer(farm.settings, farm.webhooks, webhook_document(farm.settings)).run(stop, threads)
    logging.getLogger(__name__).info("delivering webhooks with %d threads", threads)
    stop.wait()
    for thread in running:
        thread.join()


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="pools.yaml: which Deployments to scale, on which queues.")
@click.option("--dry-run", is_flag=True, help="Log decisions without changing anything.")
@click.option("--metrics-port", default=9101, show_default=True, type=click.IntRange(0, 65535))
@click.option("--resync", default=None, type=click.FloatRange(0.1),
              help="Seconds between passes (default: resync_s of --config, else 5).")
def autoscaler(config_path: str, dry_run: bool, metrics_port: int, resync: float | None) -> None:
    """Scale worker Deployments in a Kubernetes cluster.

    Reads the pools from --config; several replicas may run, a Lease elects the one that acts.
    """
    from autoscaler.cluster import run_cluster_autoscaler

    with refusing_bad_storage():
        run_cluster_autoscaler(load_settings(), config_path, dry_run=dry_run, metrics_port=metrics_port,
                               resync_s=resync)


@main.group()
def storage() -> None:
    """Inspect or adopt the storage (VIDFARM_STORAGE_URL) this farm's catalog manages."""


@storage.command()
def orphans() -> None:
    """List the video ids in storage that the catalog has no row for, one a line.

    The farm never removes them itself: they may be another farm's, or a restored backup's. Remove
    one deliberately with your storage's own tools (its folder or prefix `videos/<id>/`).
    """
    from vidfarm import ownership
    from vidfarm.farm import Farm

    farm = Farm(load_settings())
    with refusing_bad_storage():
        found = ownership.orphans(farm.storage, farm.catalog)
    for video_id in found:
        click.echo(video_id)
    click.echo(f"{len(found)} orphaned video id(s) in {farm.storage.location()}", err=True)


@storage.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def adopt(yes: bool) -> None:
    """Make the storage belong to this farm's catalog, whichever catalog it belonged to.

    For a storage moved to a new catalog on purpose (a restored database, a migration). Media the
    catalog does not know stays where it is and is reported as orphaned, never removed.
    """
    from vidfarm import ownership
    from vidfarm.farm import Farm

    farm = Farm(load_settings())
    with refusing_bad_storage():
        store = farm.unclaimed_storage()
        mine, previous = farm.catalog.catalog_id(), ownership.owner(store)
        if previous == mine:
            click.echo(f"storage {store.location()} already belongs to catalog {mine}")
            return
        if not yes:
            click.confirm(f"storage {store.location()} belongs to catalog {previous or '(none)'}; make it "
                          f"catalog {mine}'s?", abort=True)
        ownership.adopt(store, farm.catalog)
    click.echo(f"storage {store.location()} now belongs to catalog {mine} (was {previous or 'unmarked'})")


# -- talking to a running farm ------------------------------------------------------------------


def client_options(func):
    func = click.option("--api-key", envvar="VIDFARM_API_KEY", default=None,
                        help="API key (default: VIDFARM_API_KEY, or the key `vidfarm up` created).")(func)
    return click.option("--url", envvar="VIDFARM_URL", default=DEFAULT_URL, show_default=True,
                        help="API base URL.")(func)


def make_client(url: str, api_key: str | None):
    from vidfarm.client import Client
    from vidfarm.up import key_for_cli

    key = api_key or key_for_cli(load_settings())
    if not key:
        raise click.ClickException("no API key: pass --api-key or set VIDFARM_API_KEY")
    return Client(url, key)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Wait for the transcode, with a progress bar; the HLS URL is printed "
                                          "as soon as the video is playable.")
@click.option("--renditions", default=None, help="Comma-separated rungs (e.g. 720p); default: all.")
@click.option("--queue", default=None, help="Queue (worker pool) to run on, e.g. gpu; default: the server's.")
@click.option("--resumable-above", envvar="VIDFARM_RESUMABLE_ABOVE", default=64 * 1024 * 1024, show_default=True,
              type=click.IntRange(0), help="Files larger than this many bytes go up resumably (tus), in chunks, "
                                           "resuming after a dropped connection.")
@click.option("--chunk-size", envvar="VIDFARM_TUS_CHUNK_BYTES", default=64 * 1024 * 1024, show_default=True,
              type=click.IntRange(1), help="Bytes per request of a resumable upload.")
@client_options
def upload(file: Path, wait: bool, renditions: str | None, queue: str | None, resumable_above: int,
           chunk_size: int, url: str, api_key: str | None) -> None:
    """Upload a video file.

    Prints the video id; with --wait, prints the HLS URL as soon as the video plays (while it is
    still processing), follows the transcode to its end and prints the rendition URLs.
    """
    client = make_client(url, api_key)
    size = file.stat().st_size
    send = partial(client.upload_resumable, chunk_size=chunk_size) if size > resumable_above else client.upload
    with click.progressbar(length=size, label="upload   ", file=sys.stderr, show_pos=False, show_percent=True) as bar:
        video = api_call(send, file, bar.update, renditions, queue)
    click.echo(video["id"])
    if wait:
        video = wait_with_bar(client, video["id"])
        print_video(video)
        if video["status"] != VideoStatus.READY:
            sys.exit(1)


@main.command()
@click.argument("video_id", required=False)
@client_options
def status(video_id: str | None, url: str, api_key: str | None) -> None:
    """Show a video, or the farm's queues and workers."""
    client = make_client(url, api_key)
    if video_id:
        print_video(api_call(client.video, video_id))
        return
    farm = api_call(client.farm)
    pools = (farm.get("autoscaler") or {}).get("pools") or {}
    for name, counts in farm["queues"].items():
        served_by = ", ".join(pool for pool, info in pools.items() if name in info["queues"]) or "none"
        click.echo(f"queue {name}: {counts['queued']} queued, {counts['running']} running, {counts['failed']} failed"
                   f"; served by pool {served_by}")
    for name, pool in pools.items():
        click.echo(f"pool {name}: queues {', '.join(pool['queues'])}; {pool['current'] or 0} worker(s) "
                   f"of {pool['min']}..{pool['max']}")
    for w in farm["workers"]:
        click.echo(f"worker {w['name']} ({w['encoder']}): {w['state']} {w['video_id'] or ''}")


@main.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (for scripts).")
@client_options
def top(interval: float, once: bool, url: str, api_key: str | None) -> None:
    """Live view of queues, pools and workers.

    Shows queue depths, each pool's min/max/desired/current replicas, the workers and the recent
    scaling decisions.
    """
    from vidfarm.top import run_top

    api_call(run_top, make_client(url, api_key), interval, once)


@main.command(name="ls")
@click.option("--status", "status_filter", default=None, help="Only videos in this status.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@client_options
def list_videos(status_filter: str | None, limit: int, url: str, api_key: str | None) -> None:
    """List videos, newest first."""
    client = make_client(url, api_key)
    page = api_call(client.videos, status_filter, limit)
    for video in page["items"]:
        click.echo(f"{video['id']}  {video['status']:<10} {video['progress']:>5.1f}%  "
                   f"{video['created_at'][:19]}  {video['source']['filename']}")
