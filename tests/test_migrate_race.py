"""First boot of a cluster: every app pod runs the schema migration at once against one PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import PG_URL, pg_available
from vidfarm.catalog import Catalog

# Two autoscalers, two API replicas and a couple of workers start together.
PODS = 6


@pytest.fixture
def empty_database() -> Iterator[str]:
    if not pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"vidfarm_race_{uuid.uuid4().hex[:8]}"
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_pods_migrating_at_once_all_start(empty_database: str) -> None:
    catalogs = [Catalog(empty_database) for _ in range(PODS)]
    start = threading.Barrier(PODS)
    errors: list[BaseException] = []

    def boot(catalog: Catalog) -> None:
        start.wait()
        try:
            catalog.migrate()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(c,)) for c in catalogs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Without serialization, CREATE TABLE races end in duplicate-key errors: that pod crash-loops.
    assert errors == []
    catalogs[0].migrate()  # and a later start finds nothing to do
    for catalog in catalogs:
        catalog.engine.dispose()
