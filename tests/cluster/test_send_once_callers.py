"""No command re-sent after a lost reply on the cluster (issue 18).

redis-py's cluster pipeline re-sends every command of a node whose connection failed or whose reply timed out,
whatever the client's Retry: a script or counter that had already run runs twice. Each caller whose batch a
double run would change sends it through hotcache.backends.redis.send_commands / run_scripts (cluster.send_once on
a cluster). Each test loses the reply of one node's batch after the node ran it (ClusterLostReplyProxies, "apply")
and counts the effect on the real cluster: once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.sessions import cache as sessions_cache
from hotcache.sessions import entries as session_entries
from hotcache.users import cache as users_cache
from hotcache.users import entries as user_entries
from tests.support.redis_cluster import ClusterLostReplyProxies, RedisClusterNodes


@pytest.fixture
def lost(settings: Any, redis_cluster: RedisClusterNodes, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """hotcache reaches every node of the session's cluster through a proxy that can lose a reply."""
    proxies = ClusterLostReplyProxies(redis_cluster)
    proxies.install(monkeypatch)
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": proxies.url, "REDIS_CLUSTER": True}
    yield proxies
    proxies.close()


@pytest.fixture
def direct(redis_cluster: RedisClusterNodes) -> Iterator[RedisCluster]:
    """The cluster without the proxies: where the tests count what ran."""
    client = RedisCluster.from_url(redis_cluster.url)
    yield client
    client.close()


@pytest.fixture
def incr_script(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis_backend.Script]:
    lua = tmp_path / "once_incr.lua"
    lua.write_text("-- test_send_once_callers\nreturn redis.call('INCR', KEYS[1])")
    monkeypatch.setattr(redis_backend, "_LUA_DIR", tmp_path)
    redis_backend.Script._cache.pop("once_incr", None)
    yield redis_backend.Script("once_incr")
    redis_backend.Script._cache.pop("once_incr", None)


def _keys(key_prefix: str, name: str, n: int = 9) -> list[str]:
    """``n`` keys over the three masters; the first one's name is the needle the proxies wait for."""
    return [f"{key_prefix}:{{{name}{i}}}:c" for i in range(n)]


def test_redis_pys_own_cluster_pipeline_runs_a_command_twice_after_a_lost_reply(lost, direct, key_prefix):
    """The hazard itself (why the callers below do not use r.pipeline() for such batches on a cluster)."""
    needle = f"twice-{uuid.uuid4().hex}"
    key = f"{key_prefix}:{{{needle}}}:c"
    client = redis_backend.get_client()
    assert isinstance(client, RedisCluster)
    lost.arm(needle.encode(), "apply")
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("INCR", key)
    try:
        pipe.execute(raise_on_error=False)
    except redis.RedisError:
        pass
    assert lost.lost == ["apply"]
    assert int(direct.get(key) or 0) == 2


def test_send_commands_sends_a_counter_once_after_a_lost_reply(lost, direct, key_prefix):
    needle = f"once-{uuid.uuid4().hex}"
    keys = _keys(key_prefix, needle)
    lost.arm(keys[0].encode(), "apply")
    replies = redis_backend.call("status", lambda r: redis_backend.send_commands(r, [("INCR", k) for k in keys]))
    assert lost.lost == ["apply"]
    assert [int(direct.get(k) or 0) for k in keys] == [1] * len(keys)  # ran once each, the lost node's too
    lost_node = direct.get_node_from_key(keys[0]).name
    for k, reply in zip(keys, replies, strict=True):
        if direct.get_node_from_key(k).name == lost_node:
            assert isinstance(reply, Exception)  # outcome unknown: reported, never re-sent
        else:
            assert reply == 1


def test_run_scripts_sends_each_script_once_after_a_lost_reply(lost, direct, key_prefix, incr_script):
    """The jobs' script batches (workbench persister, analytics sync, reconcile) go through run_scripts."""
    needle = f"scripts-{uuid.uuid4().hex}"
    keys = _keys(key_prefix, needle)
    redis_backend.call("status", lambda r: redis_backend.run_scripts(r, [(incr_script, [k], []) for k in keys]))
    lost.arm(keys[0].encode(), "apply")
    with pytest.raises(RedisUnavailable):
        redis_backend.call("status", lambda r: redis_backend.run_scripts(r, [(incr_script, [k], []) for k in keys]))
    assert lost.lost == ["apply"]
    assert [int(direct.get(k) or 0) for k in keys] == [2] * len(keys)


def test_an_eval_batch_is_sent_once_after_a_lost_reply(lost, direct, key_prefix, incr_script):
    """EVAL batches (the workbench's reconcile) through send_commands."""
    needle = f"eval-{uuid.uuid4().hex}"
    keys = _keys(key_prefix, needle)
    lost.arm(keys[0].encode(), "apply")
    redis_backend.call(
        "status",
        lambda r: redis_backend.send_commands(r, [("EVAL", incr_script.body, 1, k) for k in keys]),
    )
    assert lost.lost == ["apply"]
    assert [int(direct.get(k) or 0) for k in keys] == [1] * len(keys)


def test_the_users_invalidation_replay_bumps_each_version_once(lost, direct):
    ids = [f"once-{uuid.uuid4().hex}" for _ in range(12)]
    needle = ids[5]  # in a pipelined batch (the first id goes alone)
    assert redis_backend.call("users", lambda r: users_cache._invalidate(r, ids)) == []  # every node knows it
    lost.arm(needle.encode(), "apply")
    with pytest.raises(RedisUnavailable):
        redis_backend.call("users", lambda r: users_cache._invalidate(r, ids))
    assert lost.lost == ["apply"]
    assert [int(direct.get(user_entries.version_key(uid)) or 0) for uid in ids] == [2] * len(ids)


def test_the_sessions_invalidation_replay_bumps_each_version_once(lost, direct):
    session_keys = [f"once{uuid.uuid4().hex}" for _ in range(12)]
    needle = session_keys[7]
    redis_backend.call("sessions", lambda r: sessions_cache._invalidate_all(r, session_keys))  # every node knows it
    lost.arm(needle.encode(), "apply")
    with pytest.raises(RedisUnavailable):
        redis_backend.call("sessions", lambda r: sessions_cache._invalidate_all(r, session_keys))
    assert lost.lost == ["apply"]
    versions = [int(direct.get(session_entries.version_key(k)) or 0) for k in session_keys]
    assert versions == [2] * len(session_keys)  # the lost node's batch ran once, the other nodes' too
