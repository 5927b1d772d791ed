"""The reconciler against real Redis and catalog: what it re-queues, what it leaves alone."""

from __future__ import annotations

import os
import time

from vidfarm.reconciler import Reconciler


def test_partial_uploads_of_a_dead_api_are_swept_and_live_ones_kept(farm):
    incoming = farm.storage.incoming
    dead = incoming / ("a" * 32 + ".part")
    live = incoming / ("b" * 32 + ".part")
    dead.write_bytes(b"x" * 10)
    live.write_bytes(b"x" * 10)
    long_ago = time.time() - (2 * farm.settings.upload_idle_timeout_s + 120)
    os.utime(dead, (long_ago, long_ago))
    Reconciler(farm).step()
    assert not dead.exists()
    assert live.exists()
