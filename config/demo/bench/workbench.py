"""Workbench arms: save and load (target: one Redis round trip each), and persisting 10,000 ended sessions.

The persist figure is one run over a queue of 10,000 ended sessions, measured once (it does not fit the
runner's many-small-operations model) and printed before the save/load table. On the mongomock stand-in
the MongoDB time is in-process Python; the number of MongoDB operations is what carries over.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from config.demo.bench.runner import Arm
from hotcache import signing, workbench
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.testing import count_redis
from hotcache.workbench import _envelope, _layout

__all__ = ["arms", "persist_figures"]

_STATE = {"doc": {"title": "quarterly plan", "cells": [[i, i * 2, f"note {i}"] for i in range(20)]}, "cursor": [3, 7]}


def _queue_ended(n: int) -> None:
    """Queue n ended sessions as end() leaves them (sealed envelope, state, sealed end time), pipelined 500 at
    a time (setup, not measured)."""
    now = time.time()
    text = json.dumps(_STATE, separators=(",", ":"))
    digest = _envelope._digest(text)
    ttl = int(hotcache_settings.WORKBENCH_ENDED_TTL)

    def fill(r: Any, start: int, stop: int) -> None:
        pipe = r.pipeline(transaction=False)
        for i in range(start, stop):
            sid, token = f"bench-end-{i}", f"t{i}"
            key = _layout._ended_key(sid, token)
            envelope = _envelope._seal_envelope(
                sid, version=3, token=token, owner=f"user{i % 50}", created=now, updated=now, digest=digest
            )
            end = signing.seal_json(_envelope._ENDED_RECORD, key, {"e": now})
            pipe.hset(key, mapping={"s": text, "m": envelope.raw, "e": end})
            pipe.expire(key, ttl)
            pipe.zadd(_layout._ended_queue(), {f"{sid}:{token}": now})
        pipe.execute()

    for start in range(0, n, 500):
        redis_backend.call("bench-setup", lambda r, s=start: fill(r, s, min(n, s + 500)))


def persist_figures(n: int = 10_000) -> dict[str, Any]:
    _queue_ended(n)
    with count_redis() as c:
        t0 = time.perf_counter()
        result = workbench.persist()
        seconds = time.perf_counter() - t0
    return {
        "sessions": n,
        "persisted": result.persisted,
        "seconds": round(seconds, 2),
        "redis_round_trips": c.round_trips,
        "redis_commands": c.commands,
        "mongo_ops": c.mongo_ops,
        "bulk_writes": result.batches,
        "batch_size": int(hotcache_settings.WORKBENCH_PERSIST_BATCH),
        "errors": result.errors,
    }


def arms() -> dict[str, list[Arm]]:
    figures = persist_figures()
    sys.stderr.write(  # not stdout: --json's output must stay one JSON document
        f"\n== workbench: persist {figures['sessions']:,} ended sessions (one run)\n"
        f"persisted {figures['persisted']:,} in {figures['seconds']} s; MongoDB operations {figures['mongo_ops']} "
        f"({figures['bulk_writes']} bulk writes of {figures['batch_size']}); Redis round trips "
        f"{figures['redis_round_trips']}, commands {figures['redis_commands']}"
        f"{'; errors: ' + '; '.join(figures['errors']) if figures['errors'] else ''}\n"
    )
    versions: dict[str, int] = {}

    def setup() -> None:
        for i in range(100):
            versions[f"bench-v{i}"] = workbench.save(f"bench-v{i}", _STATE, owner="bench")

    def save_versioned(i: int) -> None:
        sid = f"bench-v{i % 100}"
        versions[sid] = workbench.save(sid, _STATE, expected_version=versions[sid])

    def save_redis_only(i: int) -> None:
        # WORKBENCH_DURABLE_SAVES=False for this call only (the runner interleaves arms).
        prior = hotcache_settings.WORKBENCH_DURABLE_SAVES
        _set_durable(False)
        try:
            workbench.save(f"bench-r{i % 100}", _STATE)
        finally:
            _set_durable(prior)

    return {
        "workbench: save and load (1.2 KB state)": [
            Arm("save (blind), durable", lambda i: workbench.save(f"bench-b{i % 100}", _STATE), setup=setup),
            Arm("save (blind), durable off", save_redis_only),
            Arm("save with expected_version, durable", save_versioned),
            Arm("load", lambda i: workbench.load(f"bench-v{i % 100}")),
        ]
    }


def _set_durable(value: bool) -> None:
    from django.conf import settings

    config = dict(getattr(settings, "HOTCACHE", {}) or {})
    config["WORKBENCH_DURABLE_SAVES"] = value
    settings.HOTCACHE = config
