"""API v1 behaviour over real HTTP: auth, listing, cancel, farm view, ops endpoints."""

from __future__ import annotations

import pytest

from tests.conftest import API_KEY, BACKENDS, OTHER_KEY, local_files, upload, wait_for, wait_until
from tests.queued import queued_ids
from vidfarm.storage import source_key
from vidfarm.storage_file import FileStorage


def test_every_v1_route_needs_a_key(api):
    with api.client(key=None) as anonymous:
        for method, path in [("GET", "/v1/videos"), ("GET", "/v1/farm"), ("POST", "/v1/videos"),
                             ("GET", "/v1/videos/" + "0" * 32), ("DELETE", "/v1/videos/" + "0" * 32)]:
            response = anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "unauthorized"
    with api.client(key="wrong") as wrong:
        assert wrong.get("/v1/videos").status_code == 401


def accepted_uploads(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith('vidfarm_uploads_total{result="accepted"}'))
    return float(line.rsplit(" ", 1)[1])


def test_open_ops_endpoints(api, http, clips):
    with api.client(key=None) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "database": "ok", "storage": "ok"}
        accepted_before = accepted_uploads(anonymous.get("/metrics").text)
        assert upload(http, clips["small"]).status_code == 201
        metrics = anonymous.get("/metrics").text
        assert accepted_uploads(metrics) == accepted_before + 1  # the counter is process-wide
        # Latency by route template (not by URL: one series per route), and unmatched paths apart.
        anonymous.get("/no/such/path")
        metrics = anonymous.get("/metrics").text
        assert 'vidfarm_http_request_duration_seconds_count{method="POST",route="/v1/videos",status="201"}' in metrics
        assert 'route="unmatched",status="404"' in metrics
        schema = anonymous.get("/openapi.json").json()
        assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/farm"} <= set(schema["paths"])


def test_raw_body_upload_with_filename(http, clips):
    body = clips["small"].read_bytes()
    response = http.post("/v1/videos", params={"filename": "holiday clip.mp4"}, content=body,
                         headers={"Content-Type": "video/mp4"})
    assert response.status_code == 201, response.text
    video = response.json()
    assert video["status"] == "queued"
    assert video["source"]["filename"] == "holiday clip.mp4"
    assert video["source"]["size_bytes"] == len(body)
    assert (video["source"]["width"], video["source"]["height"]) == (320, 240)


def test_listing_pages_and_filters(http, clips):
    ids = [upload(http, clips["small"]).json()["id"] for _ in range(3)]
    first = http.get("/v1/videos", params={"limit": 2}).json()
    second = http.get("/v1/videos", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [v["id"] for v in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert http.get("/v1/videos", params={"status": "ready"}).json()["items"] == []
    assert http.get("/v1/videos", params={"status": "bogus"}).status_code == 400
    assert http.get("/v1/videos", params={"cursor": "garbage"}).status_code == 400


def test_tenants_only_see_their_own_videos(api, http, clips):
    video_id = upload(http, clips["small"]).json()["id"]
    with api.client(key=OTHER_KEY) as other:
        assert other.get(f"/v1/videos/{video_id}").status_code == 404
        assert other.delete(f"/v1/videos/{video_id}").status_code == 404
        assert other.get("/v1/videos").json()["items"] == []
    assert http.get(f"/v1/videos/{video_id}").status_code == 200


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_delete_a_queued_video_cancels_it_and_removes_files(http, clips, farm):
    video_id = upload(http, clips["small"]).json()["id"]
    assert farm.storage.keys(video_id) == [source_key(video_id)]
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204
    assert http.get(f"/v1/videos/{video_id}").json()["status"] == "canceled"
    assert farm.storage.keys(video_id) == []
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204  # idempotent


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_delete_stops_a_running_transcode(http, farm, start_worker, tmp_path, settings):
    long_clip = tmp_path / "long.mp4"
    from tests.conftest import make_clip

    make_clip(long_clip, "testsrc2=size=1920x1080:rate=30:duration=40", True, [])
    start_worker()
    video_id = upload(http, long_clip).json()["id"]
    wait_for(http, video_id, statuses=("processing",), timeout_s=30)
    assert http.delete(f"/v1/videos/{video_id}").status_code == 204
    wait_until(lambda: [w["state"] for w in http.get("/v1/farm").json()["workers"]] == ["idle"], 15,
               "the worker to stop transcoding the deleted video", every_s=0.2)
    assert http.get(f"/v1/videos/{video_id}").json()["status"] == "canceled"
    assert farm.storage.keys(video_id) == []
    wait_until(lambda: not local_files(settings.scratch), 10, "the canceled job's scratch removed")


def test_farm_view_shows_queues_and_workers(http, worker):
    def with_workers() -> dict | None:
        view = http.get("/v1/farm").json()
        return view if view["workers"] else None

    farm_view = wait_until(with_workers, 20, "the worker to show up")
    assert farm_view["queues"]["cpu"] == {"queued": 0, "running": 0, "failed": 0}
    (only,) = farm_view["workers"]
    assert only["name"] == worker.name and only["state"] == "idle" and only["encoder"] == "x264"
    assert only["pid"] == worker.proc.pid


def test_the_uploader_never_imports_transcoding_code():
    import subprocess
    import sys

    check = ("import sys, uploader.app; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('ffmpeg', 'transcoder', 'autoscaler', 'kubernetes')); print(bad); assert not bad")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_events_stream_survives_redis_going_away(settings, clips, tmp_path):
    """SSE falls back to the catalog when pub/sub is gone: the client still learns the outcome."""
    import threading
    from dataclasses import replace

    from tests.conftest import ApiServer
    from vidfarm.farm import Farm
    from vidfarm.localredis import LocalRedis

    own = LocalRedis(tmp_path / "redis", persistent=False).start()
    farm = Farm(replace(settings, redis_url=own.url))
    farm.settings.home.mkdir(parents=True, exist_ok=True)
    server = ApiServer(farm).start()
    lines: list[str] = []
    try:
        with server.client() as http:
            video_id = upload(http, clips["small"]).json()["id"]

            def listen() -> None:
                with server.client() as stream_client, stream_client.stream(
                        "GET", f"/v1/videos/{video_id}/events", timeout=30) as response:
                    lines.extend(line for line in response.iter_lines() if line.startswith("data: "))

            reader = threading.Thread(target=listen)
            reader.start()
            wait_until(lambda: lines, 10, "the first event", every_s=0.05)
            own.stop()  # Redis gone while the client listens
            farm.catalog.update(video_id, status="ready", progress=100.0)
            reader.join(timeout=20)
        assert not reader.is_alive(), "the event stream never ended"
        assert '"ready"' in lines[-1]
    finally:
        server.stop()
        own.stop()


def test_an_upload_can_pick_its_queue(http, clips, farm):
    video = upload(http, clips["small"], queue="gpu").json()
    # Every job of its graph but finalize (which waits for them, deferred) is on the gpu queue.
    runnable = [t.job_id for t in farm.catalog.tasks(video["id"]) if t.kind != "finalize"]
    assert sorted(queued_ids(farm, "gpu")) == sorted(runnable)
    assert queued_ids(farm, "cpu") == []
    refused = upload(http, clips["small"], queue="nope")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_queue"


def test_a_client_that_hangs_up_or_stalls_mid_upload_leaves_nothing_behind(settings, farm):
    """A peer that closes early is not always reported as a disconnect; the idle timeout catches it,
    and a client that stops sending without closing, too."""
    import socket
    from dataclasses import replace

    from tests.conftest import ApiServer
    from vidfarm.farm import Farm

    server = ApiServer(Farm(replace(settings, upload_idle_timeout_s=2.0))).start()
    storage = FileStorage(farm.settings.storage.path)
    head = (f"POST /v1/videos?filename=a.mp4 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: video/mp4\r\nContent-Length: 50000000\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as hangs_up:
            hangs_up.sendall(head + b"\0" * 2_000_000)
        with socket.create_connection(("127.0.0.1", server.port)) as stalls:
            stalls.sendall(head + b"\0" * 100_000)
            stalls.settimeout(15)
            answer = ""
            while '"upload_timeout"' not in answer and (data := stalls.recv(65536)):
                answer += data.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408") and '"upload_timeout"' in answer
        wait_until(lambda: not any(storage.incoming.iterdir()), 15, "the partial uploads to be removed")
        assert list(storage.videos.iterdir()) == []
        with server.client() as http:
            assert http.get("/v1/videos").json()["items"] == []
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()
