"""Security: tenants see only their own videos, keys can come from a file, every download and the
live events need the key, Redis with a password and TLS works end to end, and no secret reaches
the logs (or any file the farm writes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import API_KEY, OTHER_KEY, ROOT, settings_env, upload, wait_for, wait_serving, wait_until
from vidfarm.localredis import free_port

# -- tenant isolation -------------------------------------------------------------------------------


def test_a_tenant_sees_and_deletes_only_its_own_videos(clips, api, http, worker):
    mine = upload(http, clips["small"]).json()["id"]
    ready = wait_for(http, mine)
    assert ready["status"] == "ready"
    rendition = ready["renditions"][0]["name"]
    with api.client(OTHER_KEY) as other:
        theirs = upload(other, clips["small"]).json()["id"]
        missing = uuid.uuid4().hex
        for path in ("", f"/renditions/{rendition}", "/poster.jpg", "/events"):
            foreign = other.get(f"/v1/videos/{mine}{path}")
            absent = other.get(f"/v1/videos/{missing}{path}")
            assert foreign.status_code == absent.status_code == 404, (path, foreign.text)
            # Indistinguishable from an id that does not exist: nothing tells that the video exists.
            assert foreign.json()["error"]["code"] == absent.json()["error"]["code"] == "not_found"
            assert foreign.json()["error"]["message"].replace(mine, missing) == absent.json()["error"]["message"]
        deleted = other.delete(f"/v1/videos/{mine}")
        assert deleted.status_code == 404 and deleted.json()["error"]["code"] == "not_found"
        assert [v["id"] for v in other.get("/v1/videos").json()["items"]] == [theirs]
        assert [v["id"] for v in other.get("/v1/videos", params={"status": "ready"}).json()["items"]] in ([], [theirs])
        # The owner's video is untouched by the other tenant's delete.
        assert http.get(f"/v1/videos/{mine}").json()["status"] == "ready"
        assert http.get(f"/v1/videos/{mine}/renditions/{rendition}").status_code == 200
        assert http.get(f"/v1/videos/{theirs}").status_code == 404
        assert http.delete(f"/v1/videos/{theirs}").status_code == 404
        assert other.get(f"/v1/videos/{theirs}").status_code == 200
    assert [v["id"] for v in http.get("/v1/videos").json()["items"]] == [mine]


def test_downloads_and_live_events_need_the_key(clips, api, http, worker):
    ready = wait_for(http, upload(http, clips["small"]).json()["id"])
    assert ready["status"] == "ready"
    urls = [r["url"] for r in ready["renditions"]] + [ready["poster_url"],
                                                      f"{api.url}/v1/videos/{ready['id']}/events"]
    for url in urls:
        assert http.get(url).status_code == 200
        for headers in ({}, {"Range": "bytes=0-99"}, {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Bearer {OTHER_KEY}", "Range": "bytes=0-99"}):
            response = httpx.get(url, headers=headers, timeout=30)
            assert response.status_code in (401, 404), (url, headers, response.status_code)
            assert response.status_code == (404 if OTHER_KEY in headers.get("Authorization", "") else 401)
            assert response.json()["error"]["code"] in ("unauthorized", "not_found")
            assert not response.content.startswith(b"\x00\x00\x00")  # no MP4 bytes leaked


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    """Timing must not tell which key (or how much of one) matched: every configured key is
    compared with hmac.compare_digest, whatever the presented key, with no early exit."""
    from uploader import auth

    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    ring = auth.KeyRing(["key-a", "key-b", "key-c"])
    for presented, tenant in (("key-a", auth.tenant_of("key-a")), ("key-c", auth.tenant_of("key-c")),
                              ("key-", None), ("nope", None)):
        calls.clear()
        if tenant is None:
            with pytest.raises(auth.ApiError):
                ring.tenant(f"Bearer {presented}")
        else:
            assert ring.tenant(f"Bearer {presented}") == tenant
        assert sorted(key for _, key in calls) == [b"key-a", b"key-b", b"key-c"], presented


# -- keys from a file ------------------------------------------------------------------------------


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def test_keys_from_a_file_work_and_each_is_a_tenant(settings, tmp_path):
    """What a mounted Kubernetes Secret looks like: one key per line, maybe comments, a final newline."""
    keys = tmp_path / "secret" / "api-keys"
    keys.parent.mkdir()
    keys.write_text("# vidfarm API keys\n\nfile-key-one\n   file-key-two  \n")
    env = settings_env(settings)
    env.pop("VIDFARM_API_KEYS")
    env["VIDFARM_API_KEYS_FILE"] = str(keys)
    settings.home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vidfarm", "api", "--port", str(port)], env=env, cwd=ROOT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url + "/readyz", proc)

        def get(key: str, path: str = "/v1/videos") -> httpx.Response:
            return httpx.get(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        assert get("file-key-one").status_code == 200
        assert get("file-key-two").status_code == 200
        for wrong in ("# vidfarm API keys", "file-key", API_KEY, "file-key-onex"):
            assert get(wrong).status_code == 401, wrong
        created = httpx.post(url + "/v1/videos", content=b"x" * 10, timeout=30,
                             headers={"Authorization": "Bearer file-key-one", "Content-Type": "video/mp4"})
        assert created.status_code == 422  # the key works for writes; the body is no video
    finally:
        stop(proc)


# -- the whole farm: password and TLS Redis, no secret in logs -------------------------------------


REDIS_PASSWORD = "redis-pw-" + uuid.uuid4().hex
FARM_KEY = "farm-key-" + uuid.uuid4().hex


def make_certs(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=vidfarm test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt")
    return {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}


@pytest.fixture(params=["password", "tls+password"])
def secured_redis(request, tmp_path) -> Iterator[str]:
    """A redis-server that wants a password, and in the TLS case speaks only TLS. Yields REDIS_URL."""
    port = free_port()
    args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", REDIS_PASSWORD, "--dir", str(tmp_path)]
    if request.param == "tls+password":
        certs = make_certs(tmp_path / "certs")
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs["cert"]),
                 "--tls-key-file", str(certs["key"]), "--tls-ca-cert-file", str(certs["ca"]),
                 "--tls-auth-clients", "no"]
        url = f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}"
    else:
        args += ["--port", str(port)]
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis.from_url(url)

    def answering() -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace")
                pytest.skip(f"this redis-server cannot serve {request.param}: {output[-300:]}")
            return False

    wait_until(answering, 10, f"redis-server ({request.param}) to answer", every_s=0.05)
    if request.param == "tls+password":
        # Proof that the port speaks only TLS: a plain client gets nowhere.
        with pytest.raises(redis.RedisError):
            redis.Redis(port=port, password=REDIS_PASSWORD, socket_timeout=2).ping()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_farm_over_secured_redis_end_to_end_and_no_secret_in_logs(secured_redis, clips, tmp_path):
    home = tmp_path / "farm"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDFARM_") and k not in ("REDIS_URL",
                                                                                             "DATABASE_URL")}
    env.update({"VIDFARM_HOME": str(home), "REDIS_URL": secured_redis, "VIDFARM_API_KEYS": FARM_KEY})
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vidfarm", "-v", "up", "--port", str(port), "--min-workers", "1",
             "--max-workers", "1"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url + "/readyz", proc)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {FARM_KEY}"}, timeout=60) as http:
            created = upload(http, clips["small"])
            assert created.status_code == 201, created.text
            video_id = created.json()["id"]
            # Live events come through Redis pub/sub over the same secured connection.
            with http.stream("GET", f"/v1/videos/{video_id}/events", timeout=120) as events:
                assert events.status_code == 200
                statuses = []
                for line in events.iter_lines():
                    if line.startswith("data:") and '"status"' in line:
                        statuses.append(line)
            assert any('"ready"' in s for s in statuses), statuses
            ready = wait_for(http, video_id)
            assert ready["status"] == "ready"
            assert http.get(ready["renditions"][0]["url"]).status_code == 200
            assert [w["state"] for w in http.get("/v1/farm").json()["workers"]] == ["idle"]
            # Failed logins and a bad upload give log lines too; none may echo what was sent.
            near_miss = FARM_KEY[:-1] + "x"
            assert httpx.get(url + "/v1/videos", headers={"Authorization": f"Bearer {near_miss}"}).status_code == 401
            assert http.post("/v1/videos", content=b"junk", headers={"Content-Type": "video/mp4"}).status_code == 422
    finally:
        code = stop(proc, timeout_s=60)
    assert code == 0, log_path.read_text()[-3000:]
    logs = log_path.read_text(errors="replace")
    assert "worker" in logs and "ready" in logs, logs[-2000:]  # the logs are there, and verbose
    for secret in (REDIS_PASSWORD, FARM_KEY, FARM_KEY[:-1]):
        assert secret not in logs, f"a secret is in the logs: ...{logs[max(0, logs.find(secret) - 200):][:300]}"
    # Nor at rest in anything the farm wrote (catalog, Prometheus targets, Redis data).
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert REDIS_PASSWORD.encode() not in data and FARM_KEY.encode() not in data, path
