"""The lost-reply contract, one suite for every feature that counts through hotcache.recovery's protocol.

Redis receives a feature's script and then the reply is lost: either Redis ran it ("apply") or the command never
arrived ("drop"). The caller cannot know which. Whatever happened, once Redis answers again and the feature has
settled its doubt, the durable count equals the number of calls made: never one more, never one less.
Each feature is driven through its public API only; the script whose reply is lost is named by its Lua file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hotcache import analytics, apikeys, metering, workbench
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = pytest.mark.mongo_contract


@dataclass(frozen=True)
class Counted:
    """A feature under the contract: ``call(ctx)`` counts one, ``total(ctx, clock)`` reads the settled count."""

    name: str
    script: str  # backends/lua/<script>.lua: the command whose reply the proxy loses
    setup: Callable[[], Any]
    call: Callable[[Any], None]
    total: Callable[[Any, Any], int]


def _analytics_total(ctx: Any, clock: Any) -> int:
    analytics.flush_fallback()
    clock.advance(2 * 3600)  # past the hour and the sync grace
    assert not analytics.sync().error
    coll = mongo.collection(analytics.HOURLY, feature="test")
    return sum(d["count"] for d in coll.find({"event": "contract"}))


def _apikeys_total(ctx: Any, clock: Any) -> int:
    apikeys.sync_usage()
    return sum(n for _, n in apikeys.usage(ctx.key_id, days=2))


def _workbench_call(ctx: dict[str, int]) -> None:
    # A read-modify-write save; a save whose reply was lost has happened at most once, at its version.
    ctx["saves"] += 1
    workbench.save("contract", {"n": ctx["saves"]}, owner="alice")


def _workbench_total(ctx: dict[str, int], clock: Any) -> int:
    loaded = workbench.load("contract")
    assert loaded is not None
    workbench.end("contract")
    workbench.persist()
    history = list(mongo.collection(workbench.HISTORY, feature="test").find({"session_id": "contract"}))
    assert len(history) == 1  # one session reaches history exactly once
    return int(loaded.state["n"]) if loaded.state.get("n") == ctx["saves"] else -1


FEATURES = [
    Counted(
        "analytics",
        "analytics_track",
        setup=lambda: None,
        call=lambda ctx: analytics.track("contract", path="/contract"),
        total=_analytics_total,
    ),
    Counted(
        "apikeys",
        "apikey_check",
        setup=lambda: apikeys.create("contract-owner"),
        call=lambda ctx: apikeys.check(ctx.raw_key),
        total=_apikeys_total,
    ),
    Counted("workbench", "wb_save", setup=lambda: {"saves": 0}, call=_workbench_call, total=_workbench_total),
]


def _reopen_gate(clock: Any) -> None:
    """The lost reply opened the health gate; let it probe again on a fresh connection."""
    clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)
    redis_backend.call("test", lambda r: r.ping())


@pytest.mark.parametrize("mode", ["apply", "drop"])
@pytest.mark.parametrize("feature", FEATURES, ids=[f.name for f in FEATURES])
def test_a_call_whose_reply_was_lost_counts_exactly_once(feature, mode, lost_reply_proxy, raw_redis, clock):
    ctx = feature.setup()
    feature.call(ctx)
    feature.call(ctx)
    script = redis_backend.Script(feature.script)
    raw_redis.script_load(script.body)  # EVALSHA is then the one command that carries the script
    lost_reply_proxy.arm(script.sha.encode(), mode)
    feature.call(ctx)  # Redis ran it or never saw it; the caller cannot tell
    assert lost_reply_proxy.lost == [mode]
    feature.call(ctx)  # gate open: the outage path
    _reopen_gate(clock)
    feature.call(ctx)  # settles this writer's doubt before anything else
    assert feature.total(ctx, clock) == 5


def _stored(field: str) -> int:
    """``field``'s count for today as the meter's store holds it (this process's unflushed counts aside)."""
    pending = sum(n for (_, f), n in metering.meter.pending().items() if f == field)
    return metering.usage(days=1)[0].fields[field] - pending


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_a_meter_flush_whose_reply_was_lost_counts_exactly_once(mode, lost_reply_proxy, raw_redis, clock):
    metering.event("contract", "metered", 1)
    assert metering.flush() is True
    before = _stored("ev:contract:metered")
    script = redis_backend.Script("meter_flush")
    raw_redis.script_load(script.body)
    lost_reply_proxy.arm(script.sha.encode(), mode)
    metering.event("contract", "metered", 5)
    assert metering.flush() is False  # Redis added the batch or never saw it; the meter cannot tell
    assert lost_reply_proxy.lost == [mode]
    metering.event("contract", "metered", 7)  # metered while the flush is in doubt
    _reopen_gate(clock)
    assert metering.flush() is True  # re-sends the flush in doubt first, then this one
    assert metering.flush() is True  # nothing in doubt any more: nothing is sent twice
    assert _stored("ev:contract:metered") - before == 12
    replayed = "ev:meter:in_doubt_replayed" if mode == "apply" else "ev:meter:in_doubt_applied"
    assert metering.snapshot()[replayed] == 1
