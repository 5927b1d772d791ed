"""The S3-compatible backend (AWS S3, GCS interoperability, Cloudflare R2, MinIO): `s3://bucket/prefix`.

Endpoint, region and credentials come from boto3's standard chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
keys in the environment, web identity / IRSA): nothing of our own. Faults are retried by botocore's
standard retry mode (bounded attempts with jittered backoff, `AWS_MAX_ATTEMPTS`, default 3); what is
left becomes StorageUnavailable. Workers write on local scratch and upload; readers get presigned URLs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from vidfarm.storage import (
    BYTE_RANGE_RE,
    CONTENT_TYPES,
    MARKER_NAME,
    WORK_FILE_RE,
    RangeNotSatisfiable,
    Reading,
    SourceHandle,
    Storage,
    StorageLocation,
    StorageUnavailable,
    StoredFile,
    is_video_id,
    poster_key,
    rendition_key,
    source_key,
    upload_key,
    video_prefix,
    work_key,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 8 * MIB          # S3's floor is 5 MiB; 8 MiB matches boto3's own default
MAX_PARTS = 10_000          # S3's ceiling on parts of one upload
PARTS_IN_FLIGHT = 3         # per upload: bounds the API's memory at about (3 + 1) parts (6 measured no faster)
# ffmpeg reads the source through this URL for a whole job; SigV4 allows at most 7 days.
SOURCE_URL_TTL_S = 7 * 24 * 3600
# ffmpeg's own words when the HTTP layer (not the media) failed.
HTTP_TROUBLE = re.compile(r"Server returned [45]|HTTP error|Connection refused|Connection reset|timed out|"
                          r"Failed to resolve|Broken pipe|Network is unreachable")
URL_RE = re.compile(r"https?://\S+")
T = TypeVar("T")


def _client() -> Any:
    # Standard mode: retries throttling (SlowDown, 503) and transient errors with backoff, bounded.
    # Checksums only where S3 requires them: the newer default (a CRC32 on every request) is refused
    # by several S3-compatible stores (GCS interoperability, older MinIO), and costs CPU per byte.
    config = Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=60, max_pool_connections=32,
                    signature_version="s3v4", request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", config=config)


def part_size(max_upload_bytes: int) -> int:
    """The smallest whole-MiB part (at least 8 MiB) that fits the largest upload in 10,000 parts."""
    return max(MIN_PART, math.ceil(max_upload_bytes / MAX_PARTS / MIB) * MIB)


class S3Storage(Storage):
    def __init__(self, where: StorageLocation, scratch: Path, *, max_upload_bytes: int,
                 checksums: bool = False) -> None:
        self.where = where
        self.bucket = where.bucket
        self.prefix = where.prefix
        self.scratch = Path(scratch)
        self.part_size = part_size(max_upload_bytes)
        self.client = _client()
        self.pool = ThreadPoolExecutor(16, thread_name_prefix="s3")
        self.transfer = TransferConfig(multipart_chunksize=self.part_size, max_concurrency=8)
        # Declared on the multipart upload and sent with each part (botocore computes it). Without
        # one, completing an upload may cost the store a second pass over the whole object.
        self.checksum_args = {"ChecksumAlgorithm": "CRC32"} if checksums else {}

    def _key(self, key: str) -> str:
        return self.prefix + key

    def call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """One S3 call; what is left of a fault after botocore's retries is StorageUnavailable."""
        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: {what}: {exc}") from exc

    def call_or_none(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T | None:
        """`call`, with None for an object that is not there."""
        try:
            return self.call(what, fn, **kwargs)
        except StorageUnavailable as exc:
            if isinstance(exc.__cause__, ClientError) and _missing(exc.__cause__):
                return None
            raise

    # -- health -----------------------------------------------------------------------------------

    def check(self) -> None:
        self.call("head_bucket", self.client.head_bucket, Bucket=self.bucket)
        self.scratch.mkdir(parents=True, exist_ok=True)

    def status(self) -> str:
        try:
            self.call("head_bucket", self.client.head_bucket, Bucket=self.bucket)
            return "ok"
        except StorageUnavailable as exc:
            return f"error: {exc}"

    # -- uploads ----------------------------------------------------------------------------------

    def begin_upload(self, video_id: str) -> _MultipartUpload:
        return _MultipartUpload(self, self._key(source_key(video_id)))

    def promote_upload(self, video_id: str) -> None:
        """The body was uploaded to the source key itself: the catalog row is what makes it count."""

    # -- resumable uploads: one multipart upload, its state beside it (docs/design.md) ------------

    def start_resumable(self, video_id: str) -> None:
        answer = self.create_upload(self._key(source_key(video_id)))
        self.put_state(video_id, _UploadState(answer["UploadId"], self.part_size))

    def resumable_offset(self, video_id: str) -> int | None:
        state = self.upload_state(video_id)
        return state.received if state is not None else self._size(source_key(video_id))

    def open_resumable(self, video_id: str, commit_parts: Callable[[], bool] | None) -> _ResumableUpload:
        state = self.upload_state(video_id)
        if state is None:  # completed by a request that died before the catalog heard of it
            size = self._size(source_key(video_id))
            if size is None:
                raise FileNotFoundError(video_id)
            state = _UploadState("", self.part_size, received=size, complete=True)
        return _ResumableUpload(self, video_id, state, commit_parts)

    def upload_state(self, video_id: str) -> _UploadState | None:
        answer = self.call_or_none("read upload state", self.client.get_object, Bucket=self.bucket,
                                   Key=self._key(upload_key(video_id, STATE)))
        return _UploadState(**json.loads(answer["Body"].read())) if answer is not None else None

    def create_upload(self, key: str) -> dict[str, Any]:
        return self.call("create_multipart_upload", self.client.create_multipart_upload, Bucket=self.bucket, Key=key,
                         ContentType="application/octet-stream", **self.checksum_args)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytearray) -> dict[str, Any]:
        answer = self.call("upload_part", self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=upload_id,
                           PartNumber=number, Body=data, **self.checksum_args)
        return _part_ref({"PartNumber": number, **answer})

    def complete_upload(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        self.call("complete_multipart_upload", self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                  UploadId=upload_id, MultipartUpload={"Parts": parts})

    def put_state(self, video_id: str, state: _UploadState) -> None:
        self.put(upload_key(video_id, STATE), json.dumps(asdict(state)).encode())

    def put(self, key: str, body: bytes | bytearray) -> None:
        self.call("put_object", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=body,
                  **self.checksum_args)

    def get(self, key: str) -> bytes:
        return self.call("get_object", self.client.get_object, Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def _size(self, key: str) -> int | None:
        answer = self.call_or_none("head", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(answer["ContentLength"]) if answer is not None else None

    def source_location(self, video_id: str) -> str:
        return self._source_url(self._key(source_key(video_id)))

    def _source_url(self, key: str) -> str:
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=SOURCE_URL_TTL_S)

    def _handle(self, key: str, size: int) -> SourceHandle:
        return SourceHandle(self._source_url(key), size, lambda: cast(BinaryIO, _RangeReader(self, key, size)))

    # -- attempts ---------------------------------------------------------------------------------

    def attempt_folder(self, video_id: str, attempt: str) -> Path:
        work_key(video_id, attempt)  # validates both ids
        return self.scratch / attempt

    def keep_attempt(self, video_id: str, attempt: str) -> None:
        folder = self.attempt_folder(video_id, attempt)
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        self._upload_all({work_key(video_id, attempt, n): folder / n for n in names if WORK_FILE_RE.match(n)})
        shutil.rmtree(folder, ignore_errors=True)

    def keep_attempt_file(self, video_id: str, attempt: str, name: str) -> None:
        self._upload(work_key(video_id, attempt, name), self.attempt_folder(video_id, attempt) / name)

    def attempt_file(self, video_id: str, attempt: str, name: str, into: Path) -> Path:
        target = into / attempt / name
        target.parent.mkdir(parents=True, exist_ok=True)
        self.call("download", self.client.download_file, Bucket=self.bucket,
                  Key=self._key(work_key(video_id, attempt, name)), Filename=str(target), Config=self.transfer)
        return target

    def drop_attempt(self, video_id: str, attempt: str) -> None:
        shutil.rmtree(self.attempt_folder(video_id, attempt), ignore_errors=True)
        self._delete_prefix(work_key(video_id, attempt))

    def drop_work(self, video_id: str) -> None:
        self._delete_prefix(video_prefix(video_id) + "work/")

    def publish(self, video_id: str, renditions: dict[str, Path], poster: Path | None, stream: Path) -> None:
        files = {rendition_key(video_id, name): path for name, path in renditions.items()}
        if poster is not None:
            files[poster_key(video_id)] = poster
        prefix = video_prefix(video_id) + "stream/"
        files.update({prefix + str(p.relative_to(stream)): p for p in stream.rglob("*") if p.is_file()})
        self._upload_all(files)

    def _upload_all(self, files: dict[str, Path]) -> None:
        """In parallel (a package is hundreds of small segments); each object appears whole."""
        futures = [self.pool.submit(self._upload, key, path) for key, path in files.items()]
        for future in futures:
            future.result()

    def _upload(self, key: str, path: Path) -> None:
        extra = {"ContentType": CONTENT_TYPES.get(path.suffix, "application/octet-stream"), **self.checksum_args}
        self.call("upload", self.client.upload_file, Filename=str(path), Bucket=self.bucket, Key=self._key(key),
                  ExtraArgs=extra, Config=self.transfer)

    # -- removal ----------------------------------------------------------------------------------

    def delete_video(self, video_id: str) -> None:
        prefix = video_prefix(video_id)
        self._delete_prefix(prefix)
        for upload in self._multipart_uploads(prefix):
            self._abort(upload["Key"], upload["UploadId"])

    def _listed(self, prefix: str, **options: str) -> Iterator[dict[str, Any]]:
        """Pages of a ListObjectsV2 under `prefix`; a store that fails it is StorageUnavailable."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix),
                                                                      **options)
        try:
            yield from pages
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: list objects: {exc}") from exc

    def stored_videos(self) -> Iterator[str]:
        # One entry per video folder (S3 groups the keys at the delimiter), 1,000 to a request.
        for page in self._listed("videos/", Delimiter="/"):
            for folder in page.get("CommonPrefixes", []):
                video_id = folder["Prefix"].removeprefix(self._key("videos/")).rstrip("/")
                if is_video_id(video_id):
                    yield video_id

    def partial_uploads(self) -> Iterator[str]:
        for upload in self._multipart_uploads("videos/"):
            video_id = upload["Key"].removeprefix(self._key("videos/")).split("/", 1)[0]
            if is_video_id(video_id):
                yield video_id

    def last_written(self, video_id: str) -> float | None:
        """Objects by their LastModified, a multipart upload by its start and its newest part."""
        times = [o["LastModified"].timestamp() for page in self._listed(video_prefix(video_id))
                 for o in page.get("Contents", [])]
        for upload in self._multipart_uploads(video_prefix(video_id)):
            times += [upload["Initiated"].timestamp(), self._last_part(upload)]
        return max(times, default=None)

    def location(self) -> str:
        return self.where.url

    def read_marker(self) -> str | None:
        answer = self.call_or_none("read the catalog marker", self.client.get_object, Bucket=self.bucket,
                                   Key=self._key(MARKER_NAME))
        return answer["Body"].read().decode() if answer is not None else None

    def write_marker(self, text: str) -> None:
        self.put(MARKER_NAME, text.encode())

    def _delete_prefix(self, prefix: str) -> None:
        try:
            for page in self._listed(prefix):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:  # at most 1,000 per page, as delete_objects takes
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: delete {prefix}: {exc}") from exc

    def _multipart_uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                             Prefix=self._key(prefix))
        try:
            for page in pages:
                yield from page.get("Uploads", [])
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: list uploads: {exc}") from exc

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError:
            pass  # NoSuchUpload: completed or aborted meanwhile
        except BotoCoreError as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: abort upload: {exc}") from exc

    def listed_parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
        try:
            return [part for page in pages for part in page.get("Parts", [])]
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: list parts: {exc}") from exc

    def delete(self, key: str) -> None:
        self.call("delete_object", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def _last_part(self, upload: dict[str, Any]) -> float:
        """When its newest part landed; 0 for an upload completed or aborted since it was listed (its
        writer finished or gave up meanwhile: nothing of it is being written)."""
        try:
            parts = self.listed_parts(upload["Key"], upload["UploadId"])
        except StorageUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return 0.0
            raise
        return max((p["LastModified"].timestamp() for p in parts), default=0.0)

    # -- reading ----------------------------------------------------------------------------------

    def stored(self, key: str) -> StoredFile | None:
        # No HEAD: the catalog said the file is there; a missing object is the store's own 404.
        return StoredFile(key)

    def presign(self, key: str, *, ttl_s: int, filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)

    def media_origin(self) -> str | None:
        # Presigning is local (no request), and shows the addressing style boto3 picked for the bucket.
        url = urlsplit(self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "x"}))
        return f"{url.scheme}://{url.netloc}"

    def read(self, key: str, byte_range: str | None) -> Reading:
        # The header goes to S3 as is: it serves single ranges (suffixes too) and ignores others.
        extra = {"Range": byte_range} if byte_range and BYTE_RANGE_RE.match(byte_range) else {}
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from exc
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                raise RangeNotSatisfiable(byte_range) from exc
            raise StorageUnavailable(f"bucket {self.bucket}: get {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"bucket {self.bucket}: get {key}: {exc}") from exc
        return Reading(answer["Body"].iter_chunks(256 * 1024), answer["ContentLength"], answer.get("ContentRange"))

    def redact(self, text: str) -> str:
        return URL_RE.sub("<storage>", text).replace(str(self.scratch), "<scratch>")

    def input_trouble(self, stderr: str) -> bool:
        return bool(HTTP_TROUBLE.search(stderr)) or self.status() != "ok"

    def keys(self, video_id: str) -> list[str]:
        pages = self._listed(video_prefix(video_id))
        return sorted(o["Key"].removeprefix(self.prefix) for page in pages for o in page.get("Contents", []))


def _part_ref(part: dict[str, Any]) -> dict[str, Any]:
    """What a completion names of a part (its checksum too, when the upload declared one)."""
    return {k: part[k] for k in ("PartNumber", "ETag", "ChecksumCRC32") if k in part}


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")


class _MultipartUpload:
    """An upload body into one S3 multipart upload: parts go out while the next one fills, at most
    PARTS_IN_FLIGHT at a time, so memory stays a few parts whatever the size. The object exists
    only once completed, whole; an aborted or abandoned upload leaves nothing readable."""

    def __init__(self, store: S3Storage, key: str) -> None:
        self.store, self.key = store, key
        answer = store.create_upload(key)
        self.upload_id: str = answer["UploadId"]
        self.buffer = bytearray()
        self.size = 0
        self.sent: list[Future[dict[str, Any]]] = []
        self.in_flight: list[Future[dict[str, Any]]] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= self.store.part_size:
            # The buffer itself becomes the part (a little over the part size; S3 takes any size
            # above its 5 MiB floor): no copy of 8 MiB per part.
            part, self.buffer = self.buffer, bytearray()
            self._send(part)

    def _send(self, data: bytearray) -> None:
        number = len(self.sent) + 1
        self.sent.append(self.store.pool.submit(self._part, number, data))
        self.in_flight.append(self.sent[-1])

    def _part(self, number: int, data: bytearray) -> dict[str, Any]:
        return self.store.upload_part(self.key, self.upload_id, number, data)

    def room(self) -> Future[object] | None:
        return _backlog(self.in_flight)

    def complete(self) -> SourceHandle:
        if self.buffer or not self.sent:  # the last part may be short (or empty, for an empty body)
            self._send(self.buffer)
            self.buffer = bytearray()
        self.store.complete_upload(self.key, self.upload_id, _results(self.sent))
        return self.store._handle(self.key, self.size)

    def abort(self) -> None:
        # In the background: the API's event loop must not wait on a store that may be down. If it
        # fails, the reconciler (or the bucket's lifecycle rule) aborts the upload later.
        self.buffer = bytearray()
        self.store.pool.submit(self.store._abort, self.key, self.upload_id)


STATE = "state.json"


@dataclass(frozen=True)
class _UploadState:
    """What a resumable upload holds durably: its multipart upload's first `parts` parts, each of
    `part_size`, then `received - parts * part_size` bytes in the `tail` object (S3 takes no part under
    5 MiB but the last, and a request may end anywhere). Written whole, one PUT, after the objects it
    names: a crash at any point leaves the previous state, naming objects that still exist. Parts past
    `parts` are leftovers of a request that did not commit them; the next writer uploads over them."""

    upload_id: str
    part_size: int
    parts: int = 0
    received: int = 0
    tail: str | None = None
    complete: bool = False  # every part is up: only the completion is left (or done, without an id)


class _ResumableUpload:
    """One request's appends to a resumable upload. The old tail starts the buffer, so the first new
    part carries it; whole parts go out as they fill, PARTS_IN_FLIGHT at most. With `commit_parts`,
    the parts that landed in order are committed as they land (an API that dies mid-request loses
    only the parts in flight); what is left under a part becomes a new tail when the request ends."""

    def __init__(self, store: S3Storage, video_id: str, state: _UploadState,
                 commit_parts: Callable[[], bool] | None) -> None:
        self.store, self.video_id, self.commit_parts = store, video_id, commit_parts
        self.key = store._key(source_key(video_id))
        self.opened = self.committed = state
        self.buffer = bytearray(store.get(upload_key(video_id, state.tail)) if state.tail else b"")
        self.received = state.received
        self.sent: list[Future[dict[str, Any]]] = []
        self.in_flight: list[Future[dict[str, Any]]] = []
        self.lock = threading.Lock()  # commits come from the pool's threads and from the request
        self.ended = False

    @property
    def offset(self) -> int:
        return self.received

    def append(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        size = self.opened.part_size
        while len(self.buffer) >= size:
            part = self.buffer[:size]
            del self.buffer[:size]
            self._send(part)

    def room(self) -> Future[object] | None:
        return _backlog(self.in_flight)

    def _send(self, data: bytearray) -> None:
        number = self.opened.parts + len(self.sent) + 1
        future = self.store.pool.submit(self.store.upload_part, self.key, self.opened.upload_id, number, data)
        self.sent.append(future)
        self.in_flight.append(future)
        if self.commit_parts is not None:
            future.add_done_callback(self._commit_landed)

    def _commit_landed(self, _: Future[dict[str, Any]]) -> None:
        landed = 0
        for future in list(self.sent):
            if not future.done() or future.exception() is not None:
                break
            landed += 1
        parts = self.opened.parts + landed
        with self.lock:
            # Not once the request ended (its own commit decides), nor without the lease.
            if self.ended or parts <= self.committed.parts or not (self.commit_parts and self.commit_parts()):
                return
            try:  # the first new part carried the previous tail, so the state names no tail
                self._commit(replace(self.opened, parts=parts, received=parts * self.opened.part_size, tail=None))
            except StorageUnavailable as exc:
                log.warning("upload %s: could not commit parts as they land: %s", self.video_id, exc)

    def _commit(self, state: _UploadState) -> None:
        self.store.put_state(self.video_id, state)
        self.committed = state

    def _end(self) -> None:
        with self.lock:
            self.ended = True

    def keep(self) -> None:
        self._end()
        if self.received == self.opened.received:
            return
        parts = len(_results(self.sent))
        tail = f"tail-{uuid.uuid4().hex[:12]}" if self.buffer else None
        if tail:
            self.store.put(upload_key(self.video_id, tail), self.buffer)
        with self.lock:
            self._commit(replace(self.opened, parts=self.opened.parts + parts, received=self.received, tail=tail))
        if self.opened.tail:  # carried by a new part, or by the new tail
            self.store.delete(upload_key(self.video_id, self.opened.tail))

    def discard(self) -> None:
        self._end()
        wait(self.sent)
        with self.lock:
            if self.committed != self.opened:
                self._commit(self.opened)
        self.received = self.opened.received

    def close(self) -> None:
        self._end()
        self.buffer = bytearray()

    def finish(self) -> SourceHandle:
        self._end()
        state = self.opened
        if not state.complete:
            if self.buffer or not (state.parts or self.sent):  # the last part may be short, even empty
                self._send(self.buffer)
                self.buffer = bytearray()
            state = replace(state, parts=state.parts + len(_results(self.sent)), received=self.received,
                            tail=None, complete=True)
            with self.lock:  # from here a retry only completes: the parts are all up
                self._commit(state)
        if state.upload_id:
            self._complete(state)
        return self.store._handle(self.key, state.received)

    def _complete(self, state: _UploadState) -> None:
        try:
            listed = self.store.listed_parts(self.key, state.upload_id)
            self.store.complete_upload(self.key, state.upload_id,
                                       [_part_ref(p) for p in listed if p["PartNumber"] <= state.parts])
        except StorageUnavailable:
            if self.store._size(source_key(self.video_id)) != state.received:
                raise  # not completed by an earlier try that died before it could say so
        self.store._delete_prefix(upload_key(self.video_id))


def _backlog(in_flight: list[Future[Any]]) -> Future[object] | None:
    """The oldest part in flight once PARTS_IN_FLIGHT are (the writer waits for it); a part that failed
    raises here, so the request stops early. Landed parts leave `in_flight` here: this runs before
    every chunk of a body, and must not look at every part sent so far (2,560 in a 20 GiB upload)."""
    for future in [f for f in in_flight if f.done()]:
        if future.exception() is not None:
            raise cast(BaseException, future.exception())
        in_flight.remove(future)
    return cast(Future[object], in_flight[0]) if len(in_flight) >= PARTS_IN_FLIGHT else None


def _results(sent: list[Future[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every part's answer, once all have landed; the first failure raises."""
    wait(sent)
    return [future.result() for future in sent]


class _RangeReader(io.RawIOBase):
    """Random access to an object by ranged GETs: the probe reads a few box headers this way. Each
    GET fetches a window of READ_AHEAD bytes, so the small boxes at the start (ftyp, moov, free) cost
    one request, not one each."""

    READ_AHEAD = 64 * 1024

    def __init__(self, store: S3Storage, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size, self.pos = store, key, size, 0
        self.window, self.window_at = b"", 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size or len(buffer) == 0:
            return 0
        offset = self.pos - self.window_at
        if not 0 <= offset < len(self.window) or offset + len(buffer) > len(self.window):
            self._fetch(len(buffer))
            offset = 0
        data = self.window[offset:offset + len(buffer)]
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def _fetch(self, wanted: int) -> None:
        end = min(self.size, self.pos + max(wanted, self.READ_AHEAD)) - 1
        answer = self.store.call("get_object", self.store.client.get_object, Bucket=self.store.bucket,
                                 Key=self.key, Range=f"bytes={self.pos}-{end}")
        self.window, self.window_at = answer["Body"].read(), self.pos
