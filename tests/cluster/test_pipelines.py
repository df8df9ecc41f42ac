"""Pipelines on the cluster: redis-py's cluster pipeline blocks its evalsha(), mget() and pfcount() methods, so
hotcache queues those commands by name (routed by their keys, which share a slot). Each caller below failed on
the cluster before (issue 18 survey) and falls back no more."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from hotcache import analytics, apikeys
from hotcache import clock as hc_clock
from hotcache.backends import redis as redis_backend
from hotcache.backends.health import redis_gate
from hotcache.testing import count_redis


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
