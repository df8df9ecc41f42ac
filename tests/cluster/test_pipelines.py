"""Pipelines on the cluster: redis-py's cluster pipeline blocks its evalsha(), mget() and pfcount() methods, so
hotcache queues those commands by name (routed by their keys, which share a slot). Each caller below failed on
the cluster before (issue 18 survey) and falls back no more."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import pytest

from hotcache import analytics, apikeys
from hotcache import clock as hc_clock
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.testing import count_redis
from tests.support.targets import warm_every_master


@pytest.fixture(autouse=True)
def _on_the_cluster(cluster_redis):
    return cluster_redis


def test_scripts_queued_in_one_pipeline_run_on_the_nodes_of_their_keys(tmp_path, monkeypatch, key_prefix):
    client = redis_backend.get_client()
    keys = [f"{key_prefix}:{{t{i}}}:k" for i in range(12)]
    assert len({client.get_node_from_key(k).name for k in keys}) == 3
    lua = tmp_path / "cluster_incr.lua"
    lua.write_text("return redis.call('INCR', KEYS[1])")
    monkeypatch.setattr(redis_backend, "_LUA_DIR", tmp_path)
    redis_backend.Script._cache.pop("cluster_incr", None)
    script = redis_backend.Script("cluster_incr")

    def pipelined(r, load):
        pipe = r.pipeline(transaction=False)
        for key in keys:
            script.queue(pipe, [key], load=load)
        return pipe.execute(raise_on_error=False)

    first = redis_backend.call("status", lambda r: pipelined(r, False))
    assert all(type(reply).__name__ == "NoScriptError" for reply in first)  # the callers' reload path
    loaded = redis_backend.call("status", lambda r: pipelined(r, True))
    assert [script.reply(raw) for raw in loaded] == [1] * 12
    with count_redis() as counted:
        again = redis_backend.call("status", lambda r: pipelined(r, False))
    assert [script.reply(raw) for raw in again] == [2] * 12
    assert counted.round_trips == 3  # one per master
    redis_backend.Script._cache.pop("cluster_incr", None)


def test_api_key_usage_is_read_from_the_cluster(real_mongo):
    new = apikeys.create("cluster-owner", daily_limit=100)
    for _ in range(3):
        assert apikeys.check(new.raw_key).allowed
    assert redis_gate.allow()
    assert apikeys.usage(new.key_id, days=1) == [(dt.datetime.now(dt.UTC).date(), 3)]
    result = apikeys.sync_usage()
    assert not getattr(result, "error", None), result
    assert apikeys.usage(new.key_id, days=1) == [(dt.datetime.now(dt.UTC).date(), 3)]


def test_analytics_visitors_are_counted_on_the_cluster(clock):
    visitor, event = uuid.uuid4().hex[:12], f"signup_{uuid.uuid4().hex[:8]}"  # the session's cluster is shared
    analytics.track(event, path="/pricing", visitor_id=visitor)
    analytics.track(event, path="/pricing", visitor_id=visitor)
    now = hc_clock.utcnow()
    rep = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert [v for v in rep.visitors if v[0] == event] == [(event, now.date(), 1)]
    assert redis_gate.allow()


def test_users_replay_loads_the_script_on_masters_that_do_not_know_it(monkeypatch):
    """The replay's first script loads it on one master; the batches reach all three. Before: the other masters'
    NOSCRIPT failed the whole replay (and the read with it) until some other call loaded the script there, as
    after a failover (a promoted replica knows no script). Now those replies load it everywhere, sent again once."""
    from hotcache.users import cache
    from hotcache.users.entries import version_key

    fresh = redis_backend.Script("user_invalidate")  # the same script under a SHA no node has cached
    fresh.body = f"{fresh.body}\n-- {uuid.uuid4().hex}\n"
    fresh.sha = hashlib.sha1(fresh.body.encode()).hexdigest()
    monkeypatch.setattr(cache, "_INVALIDATE", fresh)
    ids = [f"noscript-{uuid.uuid4().hex[:8]}-{i}" for i in range(60)]
    cache.pending_invalidations.update(ids)
    warm_every_master()  # connections open (their handshakes are not the replay's)
    with count_redis() as counted:
        assert cache.read("424242") == (None, None)  # replays first, then reads: no fallback
    assert not cache.pending_invalidations
    client = redis_backend.get_client()
    assert all(client.exists(version_key(uid)) for uid in ids)
    # The first script (NOSCRIPT, then EVAL), the batch (one per master), SCRIPT LOAD (one per master), the
    # NOSCRIPT ones again (the masters the first script did not reach), the read; a meter flush at most.
    assert counted.round_trips <= 2 + 3 + 3 + 3 + 1 + 3  # measured 11, and a meter flush (one per master) at most
    assert redis_gate.allow()
