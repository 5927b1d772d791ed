"""A real Prometheus scrapes a running local farm through the targets file `vidfarm up` writes;
every query of every Grafana panel must return data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, FarmUp, upload, wait_for, wait_until
from vidfarm.localredis import free_port

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vidfarm.json"
SCRAPE_S = 1

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary")


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$pool", ".*").replace("$queue", ".*")
            expr = expr.replace("$namespace", ".*")  # the dashboard variable (deploy: one farm per namespace)
            queries.append((panel["title"], expr))
    return queries


def start_prometheus(home: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n"
        "scrape_configs:\n  - job_name: vidfarm\n    file_sd_configs:\n"
        f"      - files: ['{home / 'prometheus' / 'targets.json'}']\n        refresh_interval: 1s\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def query(url: str, expr: str) -> list:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_every_dashboard_panel_has_data(settings, clips, tmp_path):
    farm = FarmUp(settings, "--max-workers", "1", "--scale-down-after", "600")
    prometheus, prom_url = start_prometheus(settings.home, tmp_path)
    try:
        client = farm.client
        ids = [upload(client, clips[name]).json()["id"] for name in ("small", "noaudio", "small")]
        bad = client.post("/v1/videos", files={"file": ("x.mp4", b"not a video", "video/mp4")})
        assert bad.status_code == 422
        assert all(wait_for(client, video_id)["status"] == "ready" for video_id in ids)
        # Prometheus needs two scrapes of a series inside a rate() window; it starts slowly on a busy
        # machine, so poll instead of guessing a sleep.
        def empty_panels() -> list[tuple[str, str]]:
            return [(title, expr) for title, expr in panel_queries() if not query(prom_url, expr)]

        try:
            wait_until(lambda: not empty_panels(), 60, "data in every panel", every_s=SCRAPE_S)
        except AssertionError:
            raise AssertionError(f"panels without data: {empty_panels()}") from None
        up = query(prom_url, "up")
        assert len(up) >= 3 and all(s["value"][1] == "1" for s in up), up
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        farm.stop()
