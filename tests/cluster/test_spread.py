"""The spread figure of issue 18, measured on the real 6-node cluster (3 masters): the keys of 10,000 users,
10,000 API keys, 10,000 workbench sessions and a day of analytics split across the masters, each master holding
33% +- 10% of each feature's keys (the API keys' touched index: of its members, which are what it holds per key).

The 10,000 of each are written through the key builders the public APIs use (10,000 API calls per feature would
make the test minutes long); a smaller sample through the public APIs first proves those builders name exactly
the keys the APIs write. The measured shares are printed (``-s``) and recorded in docs/operations/redis-cluster.md.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable

import pytest

from hotcache import analytics, apikeys, keys, recovery, workbench
from hotcache import clock as hc_clock
from hotcache.analytics import _keys as analytics_keys
from hotcache.analytics import _send
from hotcache.analytics import _write as analytics_write
from hotcache.apikeys import _records as apikey_records
from hotcache.users import get_cached_user
from hotcache.users.entries import entry_key
from hotcache.workbench import _layout as wb_layout

N = 10_000
TOLERANCE = 10.0  # percentage points around an even share


@pytest.fixture
def spread_prefix(cluster_redis, hotcache_config, key_prefix):
    """This test's own key prefix on the session's cluster (its keys are counted alone), deleted afterwards."""
    prefix = f"{key_prefix}.spread{uuid.uuid4().hex[:6]}"
    hotcache_config(KEY_PREFIX=prefix)
    yield prefix
    for node in _masters(cluster_redis):
        client = node.client()
        batch = list(client.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(batch), 500):
            # One slot per DEL: a master holds many slots, so delete key by key in a pipeline.
            pipe = client.pipeline(transaction=False)
            for k in batch[i : i + 500]:
                pipe.delete(k)
            pipe.execute()


def _masters(cluster):
    return [cluster.node(info.port) for info in cluster.masters_info()]


def _count(cluster, pattern: str) -> dict[int, int]:
    """Keys matching ``pattern`` on each master (SCAN of that master only)."""
    return {node.port: sum(1 for _ in node.client().scan_iter(match=pattern, count=5000)) for node in _masters(cluster)}


def _members(cluster, pattern: str) -> dict[int, int]:
    """Set members of the keys matching ``pattern`` on each master."""
    out = {}
    for node in _masters(cluster):
        client = node.client()
        out[node.port] = sum(client.scard(k) for k in client.scan_iter(match=pattern, count=5000))
    return out


def _shares(counts: dict[int, int]) -> list[float]:
    total = sum(counts.values())
    assert total > 0
    return [round(100.0 * n / total, 1) for n in counts.values()]


def _write_all(cluster_client, items: Iterable[Callable[[object], None]]) -> None:
    pipe = cluster_client.pipeline(transaction=False)
    for i, queue in enumerate(items, 1):
        queue(pipe)
        if i % 2000 == 0:
            pipe.execute()
            pipe = cluster_client.pipeline(transaction=False)
    pipe.execute()


def _present(cluster_client, names: list[str]) -> list[bool]:
    pipe = cluster_client.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return [bool(n) for n in pipe.execute()]


@pytest.mark.django_db
def test_every_feature_spreads_evenly_over_the_masters(
    cluster_redis, spread_prefix, django_user_model, hotcache_config
):
    from hotcache.backends.redis import get_client

    hotcache_config(ANALYTICS_BATCH_SECONDS=0, WORKBENCH_DURABLE_SAVES=False)
    client = get_client()
    assert keys.bucket_count() == 64  # the default on a cluster
    day = hc_clock.utcnow().date()

    # --- the public APIs write exactly the keys the builders name (a sample of each) ---------------------
    users = [django_user_model.objects.create_user(f"spread{i}", password="x") for i in range(40)]
    for u in users:
        assert get_cached_user(u.pk) is not None
    assert all(_present(client, [entry_key(keys.part(str(u.pk))) for u in users]))

    sample_keys = [apikeys.create(f"owner{i}") for i in range(40)]
    for new in sample_keys:
        assert apikeys.check(new.raw_key).allowed
    tags = [apikey_records.tag_of(apikey_records.digest_of(k.raw_key)) for k in sample_keys]
    assert all(_present(client, [apikey_records.count_key(t, day) for t in tags]))
    indexed = sum(client.scard(k) for k in apikey_records.touched_keys(day))
    assert indexed == len(sample_keys)
    for k, t in zip(sample_keys, tags, strict=True):
        # Each key's member is in its own bucket's set (members are signed: "<signature>.<key_id>:<tag>").
        assert any(f"{k.key_id}:{t}".encode() in m for m in client.smembers(apikey_records.touched_key(day, t)))

    sids = [uuid.uuid4().hex for _ in range(40)]
    for sid in sids:
        workbench.save(sid, {"n": 1}, owner="o")
    assert all(_present(client, [wb_layout._data_key(sid) for sid in sids]))
    assert all(client.zscore(wb_layout._index_key(wb_layout._bucket(sid)), sid) is not None for sid in sids)

    events = [f"ev{i}" for i in range(40)]
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    for e in events:
        assert analytics.track(e, path="/p", visitor_id="v1") == "redis"
    assert all(_present(client, [analytics_keys.hour_key(hour, analytics_keys.bucket(e)) for e in events]))
    label = day.strftime("%Y%m%d")
    assert all(_present(client, [analytics_keys.hll_key(label, e, analytics_keys.bucket(e)) for e in events]))

    # --- 10,000 of each through the same builders ------------------------------------------------------
    _write_all(client, (lambda p, i=i: p.set(entry_key(str(10**6 + i)), "x", ex=600) for i in range(N)))
    digests = [uuid.uuid4().hex for _ in range(N)]  # a key's tag is 32 hex digits of its SHA-256
    _write_all(client, (lambda p, t=t: p.set(apikey_records.count_key(t, day), 1, ex=600) for t in digests))
    _write_all(
        client,
        (
            lambda p, i=i, t=t: p.sadd(apikey_records.touched_key(day, t), f"ak_{i}:{t}")
            for i, t in enumerate(digests)
        ),
    )
    sessions = [uuid.uuid4().hex for _ in range(N)]
    _write_all(client, (lambda p, s=s: p.hset(wb_layout._data_key(s), "s", "{}") for s in sessions))
    _write_all(client, (lambda p, s=s: p.zadd(wb_layout._index_key(wb_layout._bucket(s)), {s: 1}) for s in sessions))

    # A day of analytics: 24 hours x 300 events x 4 paths, a visitor per (hour, event), sent by the track script
    # exactly as a batch flush sends it (one call per bucket).
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    writer = recovery.writer()
    for h in range(24):
        label = (start + dt.timedelta(hours=h)).strftime("%Y%m%d%H")
        counters = {(label, f"event{e}", f"/path{p}"): 1 for e in range(300) for p in range(4)}
        visitors = {(label, f"event{e}"): [f"{e:032x}"] for e in range(300)}
        for w_name, w, _part in analytics_write.build_split(writer, counters, visitors, label="spread"):
            assert _send.send(w_name, w).outcome == "redis"

    prefix = spread_prefix
    figures = {
        "users (cached user keys)": _count(cluster_redis, f"{prefix}:{{users:*"),
        "apikeys (per-key counters)": _count(cluster_redis, f"{prefix}:{{apikeys:[0-9a-f]*"),
        "apikeys touched index (members)": _members(cluster_redis, f"{prefix}:{{apikeys:touched*"),
        "workbench (sessions)": _count(cluster_redis, f"{prefix}:{{workbench:*}}:d:*"),
        "workbench (every key)": _count(cluster_redis, f"{prefix}:{{workbench:*"),
        "analytics (every key)": _count(cluster_redis, f"{prefix}:{{analytics:*"),
    }
    for name, counts in figures.items():
        shares = _shares(counts)
        print(f"{name}: {sum(counts.values())} keys, shares {shares} %")
    for name, counts in figures.items():
        for share in _shares(counts):
            assert abs(share - 100.0 / 3) <= TOLERANCE, (name, counts)
