"""What "media is removed only on its own catalog's word" (issue 17, section 1) costs.

1. Per POST: the row written before the first byte (`receiving`), then filled in by admission, against
   the single insert of before; and a refused upload's insert + delete. Catalog calls as the API makes
   them, on SQLite (a file in a temp dir) and on PostgreSQL (a throwaway database at --pg).
2. At start-up: claiming the storage (the catalog's id, then reading the marker), on a directory.
3. Once an hour: the orphan report over N stored video folders (a directory; all known but one).

    python bench/storage_ownership.py --runs 300 --folders 2000 --pg postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, table, temp_dir  # noqa: E402
from vidfarm import ownership  # noqa: E402
from vidfarm.catalog import Catalog  # noqa: E402
from vidfarm.states import VideoStatus  # noqa: E402
from vidfarm.storage import new_video_id  # noqa: E402
from vidfarm.storage_file import FileStorage  # noqa: E402

PLACEHOLDERS = {"tenant": "t", "progress": 0.0, "attempts": 0, "filename": "upload", "size_bytes": 0,
                "queue": "cpu", "has_poster": 0, "duration_s": 0.0, "width": 0, "height": 0, "fps": 0.0,
                "video_codec": ""}
PROBED = {"filename": "a.mp4", "size_bytes": 1000, "duration_s": 2.0, "width": 320, "height": 240, "fps": 25.0,
          "video_codec": "h264", "status": VideoStatus.QUEUED}


def ms_per_call(runs: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def interleaved(runs: int, catalog: Catalog) -> list[float]:
    """Median ms of each path, the three taking turns (a shared machine's noise hits them alike)."""
    paths = (before, intent_then_fill, intent_then_refused)
    for path in paths:  # warm up: connections, statement caches
        path(catalog)
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(runs):
        for spent, path in zip(times, paths, strict=True):
            started = time.perf_counter()
            path(catalog)
            spent.append((time.perf_counter() - started) * 1000)
    return [statistics.median(spent) for spent in times]


def before(catalog: Catalog) -> None:
    catalog.create(id=new_video_id(), **{**PLACEHOLDERS, **PROBED})


def intent_then_fill(catalog: Catalog) -> None:
    video_id = new_video_id()
    catalog.create(id=video_id, status=VideoStatus.RECEIVING, **PLACEHOLDERS)
    catalog.fill(video_id, was=VideoStatus.RECEIVING, **PROBED)


def intent_then_refused(catalog: Catalog) -> None:
    video_id = new_video_id()
    catalog.create(id=video_id, status=VideoStatus.RECEIVING, **PLACEHOLDERS)
    catalog.forget(video_id, was=VideoStatus.RECEIVING)


@contextmanager
def databases(folder: Path, pg: str | None) -> Iterator[list[tuple[str, Catalog]]]:
    found = [("SQLite", Catalog(f"sqlite:///{folder / 'catalog.db'}"))]
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT") if pg else None
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        found.append(("PostgreSQL", Catalog(pg.rsplit("/", 1)[0] + "/" + name)))
    try:
        for _, catalog in found:
            catalog.migrate()
        yield found
    finally:
        for _, catalog in found:
            catalog.engine.dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE {name}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--folders", type=int, default=2000)
    parser.add_argument("--pg", default=None, help="PostgreSQL URL to create a throwaway database on")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    with temp_dir("vidfarm-bench-owner-") as folder, databases(folder, args.pg) as catalogs:
        rows = [(name, *interleaved(args.runs, catalog)) for name, catalog in catalogs]
        print(table(["catalog", "insert queued (before), ms", "receiving + fill, ms", "receiving + forget, ms"],
                    rows))
        sqlite = catalogs[0][1]
        storage = FileStorage(folder / "storage")
        storage.ensure()
        ids = [new_video_id() for _ in range(args.folders)]
        for video_id in ids:
            (storage.video_dir(video_id)).mkdir(parents=True)
            sqlite.create(id=video_id, **{**PLACEHOLDERS, **PROBED})
        storage.video_dir(new_video_id()).mkdir()  # one orphan
        claim_ms = ms_per_call(20, lambda: ownership.claim(storage, sqlite))
        orphan_ms = ms_per_call(5, lambda: ownership.orphans(storage, sqlite))
        print()
        print(table(["storage (directory)", "stored videos", "ms"],
                    [("claim at start-up (marker present)", args.folders + 1, claim_ms),
                     ("orphan report (SQLite)", args.folders + 1, orphan_ms)]))


if __name__ == "__main__":
    main()
