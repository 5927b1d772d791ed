"""What one tenant, or anyone holding a public page, may learn: the farm view names only the caller's
videos, playback tokens do not carry the tenant id (a plain hash of its API key), and with
VIDFARM_PUBLIC_URL set no URL the API hands out follows a forged Host header."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import API_KEY, OTHER_KEY, ApiServer, make_clip, upload, wait_for, wait_until
from uploader import playback
from uploader.auth import tenant_of
from vidfarm import presence
from vidfarm.farm import Farm

PUBLIC = "https://videos.example.com/vf"
FORGED = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}


def urls_in(document: object) -> list[str]:
    """Every URL anywhere in a JSON document."""
    if isinstance(document, dict):
        return [url for value in document.values() for url in urls_in(value)]
    if isinstance(document, list):
        return [url for value in document for url in urls_in(value)]
    return [document] if isinstance(document, str) and "://" in document else []


def token_of(video: dict) -> str:
    return video["playback"]["hls"].split(playback.PREFIX)[1].split("/")[0]


def decoded(token: str) -> str:
    encoded = token.split(".")[0]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


@pytest.fixture
def public(settings) -> Iterator[ApiServer]:
    farm = Farm(replace(settings, public_url=PUBLIC))
    farm.settings.home.mkdir(parents=True, exist_ok=True)
    server = ApiServer(farm).start()
    yield server
    server.stop()


def test_with_a_public_url_no_url_follows_the_host_header(public, clips, worker):
    with public.client() as http:
        http.headers.update(FORGED)
        created = upload(http, clips["small"])
        assert created.status_code == 201, created.text
        video = wait_for(http, created.json()["id"])
        assert video["status"] == "ready", video["error"]
        listed = http.get("/v1/videos").json()
        tus = http.post("/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
        assert tus.status_code == 201, tus.text
        redirect = http.get("/v1/videos/", follow_redirects=False)

        assert redirect.is_redirect  # Starlette's own: `/v1/videos/` to `/v1/videos`
        handed_out = [*urls_in(created.json()), *urls_in(video), *urls_in(listed), tus.headers["location"],
                      redirect.headers["location"]]
        assert video["playback"] and video["renditions"] and video["poster_url"]  # there are URLs to check
        assert [url for url in handed_out if not url.startswith(PUBLIC + "/v1/")] == []

        # Behind a proxy that strips the prefix, the URLs lead where they say.
        local = public.url
        assert http.get(video["playback"]["hls"].replace(PUBLIC, local)).status_code == 200
        assert http.get(video["renditions"][0]["url"].replace(PUBLIC, local)).status_code == 200
        resumed = http.head(tus.headers["location"].replace(PUBLIC, local), headers={"Tus-Resumable": "1.0.0"})
        assert resumed.status_code == 200


def test_playback_tokens_do_not_carry_the_tenant_id(api, http, farm, clips, worker):
    video = wait_for(http, upload(http, clips["small"]).json()["id"])
    assert video["status"] == "ready", video["error"]
    token = token_of(video)
    tenant = tenant_of(API_KEY)
    assert farm.catalog.get(video["id"])["tenant"] == tenant  # what the catalog keeps is unchanged
    assert tenant not in decoded(token) and tenant not in token
    assert http.get(video["playback"]["hls"]).status_code == 200

    key = playback.signing_key(farm.settings)
    expires = int(time.time()) + 60
    # Tokens handed out before tenant tags (raw tenant id) keep playing until they expire.
    legacy = f"{video['id']}.{tenant}.{expires}"
    legacy_token = f"{playback._b64(legacy.encode())}.{playback._mac(key, legacy)}"
    assert http.get(f"{playback.PREFIX}{legacy_token}/master.m3u8").status_code == 200
    # A token naming another tenant, either way, finds no video.
    for other in (playback.sign(key, video["id"], tenant_of(OTHER_KEY), expires),
                  playback.sign(key, video["id"], "", expires)):
        assert http.get(f"{playback.PREFIX}{other}/master.m3u8").status_code == 404


@pytest.fixture(scope="module")
def busy_clip(tmp_path_factory) -> Path:
    """Long enough to keep a worker busy while the test looks (each test deletes its video)."""
    return make_clip(tmp_path_factory.mktemp("leaks") / "busy.mp4", "testsrc2=size=1280x720:rate=30:duration=40",
                     False, [])


def test_a_tenants_farm_view_names_only_its_own_videos(api, http, farm, busy_clip, start_worker):
    start_worker()
    start_worker()
    with api.client(key=OTHER_KEY) as other:
        mine = upload(http, busy_clip).json()["id"]
        theirs = upload(other, busy_clip).json()["id"]
        try:
            wait_until(lambda: {w.video_id for w in presence.all_workers(farm.redis)} >= {mine, theirs}, 60,
                       "both workers to transcode, one video of each tenant")
            for client, own, foreign in ((http, mine, theirs), (other, theirs, mine)):
                view = client.get("/v1/farm")
                assert view.status_code == 200
                assert foreign not in view.text
                workers = view.json()["workers"]
                assert [w["video_id"] for w in workers if w["video_id"]] == [own]
                assert [w["state"] for w in workers] == ["busy", "busy"]  # the farm's numbers stay whole
        finally:
            http.delete(f"/v1/videos/{mine}")
            other.delete(f"/v1/videos/{theirs}")


def test_the_cli_status_and_top_still_show_the_farm(api, farm, worker, tmp_path):
    import os
    import sys

    env = {**os.environ, "VIDFARM_API_KEY": API_KEY}
    wait_until(lambda: presence.all_workers(farm.redis), 20, "the worker to show up")
    for command in (["status"], ["top", "--once"]):
        shown = subprocess.run([sys.executable, "-m", "vidfarm", *command, "--url", api.url], env=env,
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert worker.name[:27] in shown.stdout
