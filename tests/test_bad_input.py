"""Bad input: a corpus of broken and hostile uploads and requests, built here by the tests.

Every case gets a 4xx answer with the JSON error shape `{"error": {"code", "message"}}` (or, for
an input that passes probing but that ffmpeg cannot decode, a `failed` video with a message);
never a 5xx. Rejected uploads leave nothing in storage, no file is ever written outside storage,
and the worker that ran the bad jobs is still alive and taking work afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, ROOT, ffprobe, settings_env, upload, wait_for, wait_serving
from vidfarm.localredis import free_port
from vidfarm.storage import MARKER_NAME, is_video_id, stream_key
from vidfarm.storage_file import FileStorage

LIMIT_BYTES = 2_000_000
LIMIT_DURATION_S = 60.0
LIMIT_PIXELS = 1280 * 720


@pytest.fixture
def settings(settings):
    """Small limits so each one can be crossed with a small file."""
    return replace(settings, max_upload_bytes=LIMIT_BYTES, max_duration_s=LIMIT_DURATION_S,
                   max_pixels=LIMIT_PIXELS)


# -- the corpus -------------------------------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def top_level_boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """MP4 top-level boxes: type -> (offset, size)."""
    boxes, offset = {}, 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        boxes[data[offset + 4:offset + 8]] = (offset, size)
        offset += size
    return boxes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(5)
    lavfi_clip = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15:duration=2",
                  "-f", "lavfi", "-i", "sine=frequency=330:duration=2",
                  "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"]
    ffmpeg(*lavfi_clip, str(d / "good.mp4"))                              # mdat before moov
    ffmpeg(*lavfi_clip, "-movflags", "+faststart", str(d / "faststart.mp4"))  # moov first
    files = {"good": d / "good.mp4"}

    def put(name: str, data: bytes, suffix: str = ".mp4") -> None:
        files[name] = d / f"{name}{suffix}"
        files[name].write_bytes(data)

    put("empty", b"")
    put("random_bytes", rng.randbytes(200_000))
    put("text_as_mp4", b"this is not a video, just some text\n" * 2000)
    ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac", str(d / "audio_only.mp4"))
    files["audio_only"] = d / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=red:s=320x240", "-frames:v", "1", str(d / "still_image.png"))
    files["still_image"] = d / "still_image.png"
    # A faststart file cut in half: headers intact (ffprobe reports the full 2 s), half the data gone.
    fast = (d / "faststart.mp4").read_bytes()
    put("truncated", fast[: len(fast) // 2])
    # mdat first, cut before the moov box: no index at all.
    good = files["good"].read_bytes()
    assert top_level_boxes(good)[b"mdat"][0] < top_level_boxes(good)[b"moov"][0]
    put("moov_missing", good[: top_level_boxes(good)[b"moov"][0] - 1000])
    put("over_size_limit", rng.randbytes(LIMIT_BYTES + 50_000))
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=64x64:r=1:d=90", "-c:v", "libx264", "-preset", "ultrafast",
           str(d / "over_duration.mp4"))
    files["over_duration"] = d / "over_duration.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=1920x1080:r=5:d=0.4", "-c:v", "libx264", "-preset",
           "ultrafast", str(d / "over_pixels.mp4"))
    files["over_pixels"] = d / "over_pixels.mp4"
    # Decompression-bomb-like: a few KB that declare 10 hours (360 frames, one every 100 s), and
    # one 8192x8192 frame of flat colour.
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=16x16:r=1/100:d=36000", "-c:v", "libx264", "-preset",
           "ultrafast", str(d / "duration_bomb.mp4"))
    files["duration_bomb"] = d / "duration_bomb.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=8192x8192:r=1:d=1", "-frames:v", "1", "-c:v", "libx264",
           "-preset", "ultrafast", str(d / "pixel_bomb.mp4"))
    files["pixel_bomb"] = d / "pixel_bomb.mp4"
    assert files["duration_bomb"].stat().st_size < 20_000 and files["pixel_bomb"].stat().st_size < 300_000
    # Poison: a valid moov (probes as 2 s of 320x240 H.264) over an mdat full of garbage.
    offset, size = top_level_boxes(fast)[b"mdat"]
    put("poison", fast[: offset + 8] + rng.randbytes(size - 8) + fast[offset + size:])
    return files


# What each rejected file must answer, multipart and raw alike: (HTTP status, error code).
REJECTED = {
    "empty": (422, "empty_file"),
    "random_bytes": (422, "unreadable"),
    "text_as_mp4": (422, "unreadable"),
    "audio_only": (422, "no_video_stream"),
    "still_image": (422, "not_a_video"),
    "truncated": (422, "truncated"),
    "moov_missing": (422, "unreadable"),
    "over_size_limit": (413, "too_large"),
    "over_duration": (422, "too_long"),
    "over_pixels": (422, "too_many_pixels"),
    "duration_bomb": (422, "too_long"),
    "pixel_bomb": (422, "too_many_pixels"),
}


# -- helpers ----------------------------------------------------------------------------------------


def assert_json_error(response: httpx.Response, status: int | None = None, code: str | None = None) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def stored_files(settings) -> list[Path]:
    """Every file in storage but the marker at its root that names its catalog (`vidfarm.ownership`)."""
    root = settings.storage.path
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return [p for p in files if p != root / MARKER_NAME]


def files_outside_storage(tmp_path: Path, settings) -> list[Path]:
    """Every file under the test's tmp dir must be in storage or the vidfarm home (catalog.db)."""
    allowed = (settings.storage.path, settings.home)
    return [p for p in tmp_path.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"vidfarm-test-boundary") -> tuple[bytes, str]:
    """A hand-made multipart body, so headers can hold bytes httpx would never send."""
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n" for headers, data in parts)
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def file_part(filename: bytes, data: bytes, name: bytes = b"file") -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
            b"Content-Type: video/mp4", data)


def field_part(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name + b'"', value


def post_multipart(http: httpx.Client, parts, *, chunked: bool = False, **kwargs) -> httpx.Response:
    body, content_type = multipart(parts)
    content = chunks(body) if chunked else body
    return http.post("/v1/videos", content=content, headers={"Content-Type": content_type}, **kwargs)


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


# -- rejected files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_file_gets_a_json_error_and_leaves_nothing(case, corpus, http, settings, tmp_path):
    status, code = REJECTED[case]
    data = corpus[case].read_bytes()
    answers = {
        "multipart": upload(http, corpus[case]),
        "raw": http.post("/v1/videos", content=data, params={"filename": corpus[case].name},
                         headers={"Content-Type": "video/mp4"}),
        # Chunked, no Content-Length: the size limit must hold while streaming, not only up front.
        "raw-chunked": http.post("/v1/videos", content=chunks(data),
                                 headers={"Content-Type": "application/octet-stream"}),
    }
    for form, response in answers.items():
        error = assert_json_error(response, status, code)
        assert len(error["message"]) < 2000, form
    assert http.get("/v1/videos").json()["items"] == []
    assert stored_files(settings) == []
    assert files_outside_storage(tmp_path, settings) == []


# -- malformed requests -----------------------------------------------------------------------------


def test_upload_protocol_errors(corpus, api, http, settings, tmp_path):
    good = corpus["good"].read_bytes()
    cases = {
        "text/plain body": (http.post("/v1/videos", content=good, headers={"Content-Type": "text/plain"}),
                            415, "unsupported_media_type"),
        "json body": (http.post("/v1/videos", json={"file": "x"}), 415, "unsupported_media_type"),
        "no content type": (http.post("/v1/videos", content=good, headers={"Content-Type": ""}),
                            415, "unsupported_media_type"),
        "image/png body": (http.post("/v1/videos", content=good, headers={"Content-Type": "image/png"}),
                           415, "unsupported_media_type"),
        "form-urlencoded": (http.post("/v1/videos", data={"file": "x"}), 415, "unsupported_media_type"),
        "multipart without boundary": (
            http.post("/v1/videos", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
            400, None),
        "multipart without a file": (post_multipart(http, [field_part(b"renditions", b"720p")]),
                                     400, "missing_file"),
        "multipart, file under another name": (post_multipart(http, [file_part(b"a.mp4", good, b"video")]),
                                               400, "missing_file"),
        "empty multipart": (http.post("/v1/videos", content=b"",
                                      headers={"Content-Type": "multipart/form-data; boundary=abc"}),
                            400, "missing_file"),
        "multipart garbage": (http.post("/v1/videos", content=os.urandom(5000),
                                        headers={"Content-Type": "multipart/form-data; boundary=abc"}),
                              400, None),
        "unknown rendition": (upload(http, corpus["good"], renditions="4320p"), 422, "unknown_rendition"),
        "rendition path": (upload(http, corpus["good"], renditions="../../etc/passwd"), 422, "unknown_rendition"),
        "rendition list": (upload(http, corpus["good"], renditions="720p,,1080x"), 422, "unknown_rendition"),
        "rendition in query": (http.post("/v1/videos", content=good, params={"renditions": "999p"},
                                         headers={"Content-Type": "video/mp4"}), 422, "unknown_rendition"),
        "huge form field": (post_multipart(http, [field_part(b"renditions", b"7" * 200_000),
                                                  file_part(b"a.mp4", good)]), 400, "field_too_large"),
        # Many small fields, each under the per-field limit: their total must be bounded too.
        "many form fields": (post_multipart(http, [field_part(b"f%d" % i, b"x" * 60_000) for i in range(40)]
                                            + [file_part(b"a.mp4", good)], chunked=True),
                             400, "field_too_large"),
        "part header over python-multipart's limit": (post_multipart(http, [file_part(b"a" * 5000, good)]),
                                                      400, "bad_multipart"),
        # A part header the size of a movie, streamed chunked so no Content-Length stops it early.
        "huge part header": (http.post(
            "/v1/videos",
            content=chunks(b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + b"a" * 3_000_000),
            headers={"Content-Type": "multipart/form-data; boundary=abc"}), 400, None),
    }
    for name, (response, status, code) in cases.items():
        try:
            assert_json_error(response, status, code)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    # A Content-Length over the limit is refused before the body is read (httpx will not lie).
    lying = raw_request(api.port, b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Type: video/mp4\r\n"
                        b"Content-Length: %d\r\n\r\n" % (LIMIT_BYTES * 10) + good)
    status, error = parse_raw_response(lying)
    assert status == 413 and error["error"]["code"] == "too_large", lying[:300]
    assert http.get("/v1/videos").json()["items"] == []
    assert stored_files(settings) == []
    assert files_outside_storage(tmp_path, settings) == []


BAD_IDS = [
    "not-an-id",
    "0" * 31,
    "0" * 33,
    "G" * 32,
    "A" * 32,                    # ids are lower-case hex
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "x%00y",
    "%F0%9F%92%A9",
    "a" * 65,                    # over the path's max_length
    "a" * 5000,
    "1;DROP TABLE videos",
    "' OR '1'='1",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_malformed_ids_get_404_or_422_json(bad_id, http):
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/renditions/720p"), ("GET", "/poster.jpg"),
                           ("GET", "/events")]:
        response = http.request(method, f"/v1/videos/{bad_id}{suffix}")
        error = assert_json_error(response)
        assert response.status_code in (404, 422), (method, suffix, response.status_code)
        assert error["code"] in ("not_found", "invalid_request")


def test_malformed_query_and_routes(http):
    checks = [
        (http.get("/v1/videos", params={"cursor": "!!!not-a-cursor"}), 400, "invalid_cursor"),
        (http.get("/v1/videos", params={"cursor": "eA"}), 400, "invalid_cursor"),
        (http.get("/v1/videos", params={"cursor": "x" * 500}), 422, "invalid_request"),
        (http.get("/v1/videos", params={"status": "exploded"}), 400, "invalid_status"),
        (http.get("/v1/videos", params={"limit": "0"}), 422, "invalid_request"),
        (http.get("/v1/videos", params={"limit": "10000"}), 422, "invalid_request"),
        (http.get("/v1/videos", params={"limit": "ten"}), 422, "invalid_request"),
        (http.get("/v1/nothing-here"), 404, "not_found"),
        (http.put("/v1/videos", content=b"x"), 405, "method_not_allowed"),
        (http.patch(f"/v1/videos/{uuid.uuid4().hex}", content=b"x"), 405, "method_not_allowed"),
    ]
    for response, status, code in checks:
        assert_json_error(response, status, code)


# -- auth -------------------------------------------------------------------------------------------


def test_missing_or_bad_auth_is_401_json_on_every_route(api):
    vid = uuid.uuid4().hex
    routes = [("GET", "/v1/videos"), ("POST", "/v1/videos"), ("GET", f"/v1/videos/{vid}"),
              ("DELETE", f"/v1/videos/{vid}"), ("GET", f"/v1/videos/{vid}/renditions/720p"),
              ("GET", f"/v1/videos/{vid}/poster.jpg"), ("GET", f"/v1/videos/{vid}/events"), ("GET", "/v1/farm")]
    headers = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": API_KEY},                            # no scheme
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"Authorization": "Bearer " + "k" * 8000},
        {"Authorization": b"Bearer \xff\xfe\xfd"},
        {"X-Api-Key": API_KEY},
    ]
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for method, path in routes:
            for header in headers:
                response = client.request(method, path, headers=header,
                                          content=b"x" if method == "POST" else None)
                assert_json_error(response, 401, "unauthorized")
                assert response.headers.get("www-authenticate") == "Bearer"


# -- oversized headers ------------------------------------------------------------------------------


def raw_request(port: int, request: bytes, timeout_s: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        return data


def parse_raw_response(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body)


def big_header_request(size: int, key: str = API_KEY) -> bytes:
    return (b"GET /v1/videos HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\nX-Padding: " + b"p" * size + b"\r\n\r\n")


def test_oversized_headers_in_the_app_are_431_json(http):
    for size in (40_000, 1_000_000):
        response = http.get("/v1/videos", headers={"X-Padding": "p" * size})
        assert_json_error(response, 431, "headers_too_large")
        # Open routes too: the health check must not be a way around the limit.
        assert_json_error(http.get("/healthz", headers={"X-Padding": "p" * size}), 431, "headers_too_large")
    assert http.get("/v1/videos").status_code == 200


def test_vidfarm_api_bounds_header_size_before_buffering(settings):
    """`vidfarm api` (what a cluster runs) must stop a header flood at the HTTP parser: with
    httptools uvicorn buffers any amount of header bytes before the app sees the request."""
    settings.home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vidfarm", "api", "--port", str(port)],
                            env=settings_env(settings), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_serving(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=30)
        for size in (40_000, 20_000_000):
            answer = raw_request(port, big_header_request(size))
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500, answer[:200]
        ok = httpx.get(f"http://127.0.0.1:{port}/v1/videos", headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- inputs that are accepted: hostile names, poison data -------------------------------------------


def test_hostile_names_and_poison_data_with_a_real_worker(corpus, http, worker, settings, tmp_path):
    tag = uuid.uuid4().hex[:10]
    planted = f"vidfarm-pwned-{tag}"
    good = corpus["good"].read_bytes()
    names: list[bytes] = [
        f"../../../../../../../tmp/{planted}.mp4".encode(),
        f"..\\..\\..\\..\\tmp\\{planted}.mp4".encode(),
        f"$(touch /tmp/{planted}).mp4".encode(),
        f"`touch /tmp/{planted}`; rm -rf ~ | cat & echo >{planted}.mp4".encode(),
        b"-i /etc/passwd -f null .mp4",
        b"\xff\xfe\xc3\x28 not utf-8 \xe9t\xe9.mp4",
        "\u202ereversed\u0000nul\u0007bell.mp4".encode(),
        b"%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"a" * 4000 + b".mp4",
        b"",
        b"/",
    ]
    created = []
    for name in names:
        response = post_multipart(http, [file_part(name, good)])
        assert response.status_code == 201, (name, response.text)
        created.append(response.json())
    raw = http.post("/v1/videos", content=good, params={"filename": f"../../../tmp/{planted}\r\nX: y.mp4"},
                    headers={"Content-Type": "video/mp4"})
    assert raw.status_code == 201, raw.text
    created.append(raw.json())
    poison = upload(http, corpus["poison"])
    assert poison.status_code == 201, poison.text

    for video in created:
        filename = video["source"]["filename"]
        assert filename and len(filename) <= 255
        assert "/" not in filename and "\\" not in filename
        assert filename.isprintable(), repr(filename)

    finished = [wait_for(http, v["id"], timeout_s=180) for v in created]
    for video in finished:
        assert video["status"] == "ready", video
        rendition = video["renditions"][0]
        download = http.get(rendition["url"])
        assert download.status_code == 200
        disposition = download.headers["content-disposition"]
        assert video["id"] in disposition and planted not in disposition
        # Unknown rendition names and path tricks on a ready video: 404 JSON, nothing served.
        for name in ("4320p", "source", "..%2Fsource", "poster.jpg", "720p.mp4", "%2e%2e"):
            assert_json_error(http.get(f"/v1/videos/{video['id']}/renditions/{name}"), 404)

    failed = wait_for(http, poison.json()["id"], timeout_s=120)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "media_error" and failed["error"]["message"]
    assert failed["attempts"] == 1 and failed["renditions"] == []

    # Nothing planted anywhere a path trick could reach; nothing written outside storage.
    for base in {Path("/"), Path("/tmp"), ROOT, Path.cwd(), *settings.storage.path.parents}:
        assert not list(base.glob(f"*{planted}*")), base
    assert not list(tmp_path.parent.parent.rglob(f"*{planted}*"))
    assert files_outside_storage(tmp_path, settings) == []
    # Only server-named files in storage: no client name ever became a path; no temp leftovers.
    allowed = {"source", "poster.jpg"} | {r["name"] + ".mp4" for v in finished for r in v["renditions"]}
    for path in stored_files(settings):
        video_id, *inside = path.relative_to(settings.storage.path / "videos").parts
        assert is_video_id(video_id), path
        if inside[0] == "stream":  # the HLS/DASH package: only names the player routes accept
            assert FileStorage(settings.storage.path).path(stream_key(video_id, "/".join(inside[1:]))) == path, path
        else:
            assert inside in ([name] for name in allowed), path
    assert not any((settings.storage.path / "incoming").iterdir())

    # The worker survived all of it and still takes work.
    assert worker.proc.poll() is None
    after = upload(http, corpus["good"])
    assert wait_for(http, after.json()["id"])["status"] == "ready"
    workers = http.get("/v1/farm").json()["workers"]
    assert [w["name"] for w in workers] == [worker.name]
    rendition = http.get(wait_for(http, after.json()["id"])["renditions"][0]["url"])
    out = tmp_path / "after.mp4"
    out.write_bytes(rendition.content)
    assert ffprobe(out, "-show_format")["format"]["duration"]
