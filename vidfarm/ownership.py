"""Which catalog a storage belongs to, and what in it no catalog row speaks for.

Only a catalog row can say that media is no longer needed, and only the catalog that wrote it. A
farm pointed at another farm's storage (a mistyped `DATABASE_URL`, a new `VIDFARM_HOME`, a re-created
database volume) has a catalog that knows none of that media; if it judged the media by its own
catalog it would find all of it unknown. So the storage carries its catalog's id in a marker at its
root (`.vidfarm-catalog`), written on first use, and a farm whose catalog has another id refuses to
start (`claim`) until an operator adopts the storage deliberately (`adopt`). And media whose id no
row of the catalog names is never removed by the farm: it is only reported (`orphans`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from vidfarm.catalog import IN_BATCH, Catalog
from vidfarm.storage import Storage

log = logging.getLogger(__name__)

ADOPT_HINT = ("point VIDFARM_STORAGE_URL and DATABASE_URL at the pair that belongs together, or, if this storage "
              "is now this catalog's, run `vidfarm storage adopt`")


class ForeignStorage(Exception):
    """The storage belongs to another catalog (or looks like it does): the process must not start."""


def claim(storage: Storage, catalog: Catalog) -> str:
    """Start-up: this catalog's id, once the storage says it belongs to it. An unmarked storage is
    marked now, unless it holds videos this catalog does not know (another farm's, from before markers).
    Raises ForeignStorage with one line naming both catalogs."""
    mine = catalog.catalog_id()
    found = owner(storage)
    if found is None:
        _refuse_unknown_media(storage, catalog, mine)
        storage.write_marker(_marker_text(mine))
        # Read back: of two catalogs marking one storage at the same moment, the last write wins
        # and the other farm refuses here.
        found = owner(storage)
        log.info("storage %s now belongs to catalog %s", storage.location(), mine)
    if found != mine:
        raise ForeignStorage(f"storage {storage.location()} belongs to another catalog (id {found}); this "
                             f"farm's catalog is {mine}: {ADOPT_HINT}")
    return mine


def adopt(storage: Storage, catalog: Catalog) -> str | None:
    """Mark the storage as this catalog's, whoever had it; returns the previous owner's id. What the
    other catalog knew of becomes orphaned here: reported, never removed by the farm."""
    previous = owner(storage)
    storage.write_marker(_marker_text(catalog.catalog_id()))
    return previous


def owner(storage: Storage) -> str | None:
    """The catalog id the storage's marker names; None without a marker."""
    text = storage.read_marker()
    if text is None:
        return None
    try:
        return str(json.loads(text)["catalog_id"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable marker {text[:40]!r}"  # never equal to a catalog id: the farm refuses


def orphans(storage: Storage, catalog: Catalog) -> list[str]:
    """Ids with media or an unfinished upload in storage and no row in the catalog, sorted. The
    operator decides about them (`vidfarm storage orphans`); the farm only reports them."""
    unknown: set[str] = set()
    for batch in _batches(itertools.chain(storage.stored_videos(), storage.partial_uploads())):
        unknown |= set(batch) - catalog.known(batch)
    return sorted(unknown)


def _refuse_unknown_media(storage: Storage, catalog: Catalog, mine: str) -> None:
    first = list(itertools.islice(storage.stored_videos(), IN_BATCH))
    if first and not catalog.known(first):
        raise ForeignStorage(f"storage {storage.location()} has no catalog marker and holds videos this farm's "
                             f"catalog ({mine}) does not know (e.g. {first[0]}): {ADOPT_HINT}")


def _batches(ids: Iterator[str]) -> Iterator[list[str]]:
    while batch := sorted(set(itertools.islice(ids, IN_BATCH))):
        yield batch


def _marker_text(catalog_id: str) -> str:
    return json.dumps({"catalog_id": catalog_id, "written_at": datetime.now(UTC).isoformat()}) + "\n"
