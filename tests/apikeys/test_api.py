"""API keys on the real Redis: hashed at rest, one round trip per warm check, exact limits, revocation, sync."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hotcache import apikeys
from hotcache import clock as hotcache_clock
from hotcache.apikeys import _documents, _hot, _records
from hotcache.backends import mongo
from hotcache.testing import count_redis
from tests.support.targets import warm_every_master


def _all_mongo_docs():
    docs = []
    for name in (apikeys.KEYS_COLLECTION, apikeys.USAGE_COLLECTION):
        docs += mongo.collection(name, feature="test").find({})
    return docs


def test_created_key_has_prefix_dot_secret_with_at_least_128_bits():
    new = apikeys.create("alice", name="ci")
    prefix, secret = new.raw_key.split(".")
    assert len(prefix) == 8 and len(secret) >= 43  # 43 urlsafe characters = 256 bits
    assert new.raw_key not in repr(new)
    info = apikeys.get(new.key_id)
    assert info.prefix == prefix and info.owner == "alice" and info.name == "ci" and info.revoked_at is None


def test_only_the_sha256_is_stored_and_no_store_holds_the_raw_key(raw_redis, key_prefix):
    new = apikeys.create("alice", daily_limit=5)
    apikeys.check(new.raw_key)
    apikeys.sync_usage()
    secret = new.raw_key.split(".")[1]
    for doc in _all_mongo_docs():
        assert secret not in repr(doc) and new.raw_key not in repr(doc)
    redis_keys = list(raw_redis.scan_iter(match=f"{key_prefix}:*"))
    assert redis_keys
    for k in redis_keys:  # every key of this run, whatever feature wrote it
        assert secret.encode() not in k and secret.encode() not in _redis_value(raw_redis, k)


def _redis_value(r, key):
    kind = r.type(key).decode()
    readers = {"string": r.get, "hash": r.hgetall, "set": r.smembers, "list": lambda k: r.lrange(k, 0, -1),
               "zset": lambda k: r.zrange(k, 0, -1, withscores=True)}
    value = readers.get(kind, r.dump)(key)
    return value if isinstance(value, bytes) else repr(value).encode()


def test_warm_check_is_one_round_trip_and_no_mongo_operation():
    new = apikeys.create("alice", daily_limit=10)
    apikeys.check(new.raw_key)  # cold: loads the record, caches it, counts
    with count_redis() as c:
        usage = apikeys.check(new.raw_key)
    assert usage.allowed and usage.used_today == 2 and usage.remaining == 8
    assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)


@pytest.mark.mongo_contract
def test_cold_check_is_one_indexed_mongo_query():
    apikeys.check(apikeys.create("warm-up").raw_key)  # connection handshake and script load
    warm_every_master(_hot._CHECK, _hot._FIX)  # the same on every master of a cluster
    new = apikeys.create("alice")
    with count_redis() as c:
        usage = apikeys.check(new.raw_key)
    assert usage.allowed and usage.limit is None and usage.remaining is None
    # miss, fill + count, and (first use of the day only) SADD + EXPIRE into the day's touched index
    assert c.mongo_ops == 1 and (c.round_trips, c.commands) == (3, 4)


def test_usage_reports_owner_limit_and_next_utc_midnight(clock):
    new = apikeys.create("bob", daily_limit=3)
    usage = apikeys.check(new.raw_key)
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    assert (usage.key_id, usage.owner, usage.limit, usage.used_today) == (new.key_id, "bob", 3, 1)
    assert usage.reset_at == dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def test_300_concurrent_checks_against_a_limit_of_100_allow_exactly_100(raw_redis):
    new = apikeys.create("alice", daily_limit=100)
    apikeys.check(new.raw_key)  # warm the record; this is use 1
    barrier = threading.Barrier(30)

    def burst(_):
        barrier.wait()
        return [apikeys.check(new.raw_key).allowed for _ in range(10)]

    with ThreadPoolExecutor(30) as pool:
        results = [a for batch in pool.map(burst, range(30)) for a in batch]
    assert len(results) == 300
    assert sum(results) == 99  # plus the warming call: exactly 100
    assert apikeys.usage(new.key_id, days=1)[0][1] == 100


def test_over_limit_is_a_result_not_an_error_and_does_not_count():
    new = apikeys.create("alice", daily_limit=2)
    assert [apikeys.check(new.raw_key).allowed for _ in range(4)] == [True, True, False, False]
    denied = apikeys.check(new.raw_key)
    assert denied.used_today == 2 and denied.remaining == 0


def test_revoked_key_fails_on_the_next_call():
    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    assert apikeys.revoke(new.key_id) is True
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)
    assert apikeys.revoke(new.key_id) is False
    assert apikeys.get(new.key_id).revoked_at is not None


def test_revocation_survives_a_concurrent_recache_of_the_old_record():
    """A cold load that read MongoDB before the revocation cannot cache the key as valid again."""
    new = apikeys.create("alice")
    digest, _ = _records.parse(new.raw_key)
    stale = _documents.load_record(digest)  # read before the revocation lands
    apikeys.revoke(new.key_id)
    now = hotcache_clock.utcnow()
    reply = _hot.run_check(_records.tag_of(digest), now.date(), now, fill=stale)
    assert reply[0] == "revoked"
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)


@pytest.mark.mongo_contract
def test_revoke_racing_cold_loads_in_other_threads_leaves_no_check_succeeding(monkeypatch):
    """Checks in other threads read the key's record from MongoDB before revoke() and try to cache it only
    after revoke() returned: from then on no check in any thread succeeds, and none is counted. (The threads'
    cold loads share one query: the threads that miss while it is in flight get its pre-revoke record.)"""
    new = apikeys.create("alice")
    threads, main = 8, threading.current_thread()
    loaded = threading.Barrier(2, timeout=30)
    revoked = threading.Event()
    real_find_one = mongo.Collection.find_one

    def find_one(self, filter, projection=None, **options):
        doc = real_find_one(self, filter, projection, **options)
        sent = not options.get("shared")  # the query itself (a shared call waits for it)
        if sent and "key_sha256" in filter and threading.current_thread() is not main and not revoked.is_set():
            loaded.wait()  # the cold load has read the record, not yet revoked...
            assert revoked.wait(30)  # ...and every thread caches it only once revoke() has returned
        return doc

    monkeypatch.setattr(mongo.Collection, "find_one", find_one)

    def client(_):
        outcomes = []
        for _ in range(5):
            try:
                outcomes.append(apikeys.check(new.raw_key).allowed)
            except apikeys.InvalidKey:
                outcomes.append("invalid")
        return outcomes

    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(client, range(threads))
        loaded.wait()
        assert apikeys.revoke(new.key_id) is True
        revoked.set()
        outcomes = [o for batch in results for o in batch]
    assert outcomes == ["invalid"] * threads * 5
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)
    assert apikeys.usage(new.key_id, days=1)[0][1] == 0


def test_expired_key_fails_on_the_next_call(clock):
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    new = apikeys.create("alice", expires_at=now + dt.timedelta(seconds=30))
    assert apikeys.check(new.raw_key).allowed
    clock.advance(31)
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(new.raw_key)


@pytest.mark.parametrize(
    "raw", ["", "short", "abcdefgh." + "a" * 42, "ABCDEFGH." + "a" * 43, "x" * 10_000, "abcdefgh.é" + "a" * 42, None]
)
def test_malformed_keys_are_invalid_without_touching_a_store(raw):
    with count_redis() as c, pytest.raises(apikeys.InvalidKey) as info:
        apikeys.check(raw)
    assert str(info.value) == "invalid API key"
    assert (c.commands, c.mongo_ops) == (0, 0)


def test_unknown_and_revoked_and_expired_keys_raise_the_same_message(clock, caplog):
    caplog.set_level("INFO", logger="hotcache.apikeys")
    now = dt.datetime.fromtimestamp(clock.time(), tz=dt.UTC)
    revoked = apikeys.create("a")
    apikeys.revoke(revoked.key_id)
    expired = apikeys.create("a", expires_at=now - dt.timedelta(seconds=1))
    unknown = "abcdefgh." + "A" * 43
    messages = set()
    for raw in (revoked.raw_key, expired.raw_key, unknown):
        with pytest.raises(apikeys.InvalidKey) as info:
            apikeys.check(raw)
        messages.add(str(info.value))
    assert messages == {"invalid API key"}
    logged = caplog.text
    assert "revoked" in logged and "expired" in logged and "unknown" in logged
    for raw in (revoked.raw_key, expired.raw_key, unknown):
        assert raw.split(".")[1] not in logged and raw.split(".")[0] in logged


@pytest.mark.mongo_contract
def test_unknown_key_is_remembered_briefly_so_repeats_skip_mongo(raw_redis):
    unknown = "abcdefgh." + "B" * 43
    with pytest.raises(apikeys.InvalidKey):
        apikeys.check(unknown)
    with count_redis() as c, pytest.raises(apikeys.InvalidKey):
        apikeys.check(unknown)
    assert (c.round_trips, c.mongo_ops) == (1, 0)


def test_counters_and_cached_records_have_ttls(raw_redis, key_prefix, hotcache_config):
    hotcache_config(APIKEY_USAGE_RETENTION_DAYS=7, APIKEY_CACHE_TTL=120)
    new = apikeys.create("alice", daily_limit=10)
    apikeys.check(new.raw_key)
    tag = _records.tag_of(_records.digest_of(new.raw_key))
    found = list(raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:{tag}}}:*"))
    assert len(found) == 3  # record, today's count, this writer's last-counted sequence
    ttls = {k.decode().split("}:", 1)[1].split(":", 1)[0]: raw_redis.ttl(k) for k in found}
    assert 0 < ttls["n"] <= 7 * 86400 and ttls["n"] > 6 * 86400
    assert 0 < ttls["meta"] <= 120
    assert 0 < ttls["w"] <= _records.TOKEN_TTL


def test_a_key_counted_under_the_previous_layout_keeps_its_uses_today(raw_redis, key_prefix):
    """An upgrade mid-day: the previous check script's counter (this Redis's uses only), its base, writer hash
    and touched-index entry; the new layout starts today's count from them, so the limit and the history
    still see every use of the day."""
    from hotcache.apikeys import _index
    from hotcache.backends import redis as redis_backend

    new = apikeys.create("alice", daily_limit=7)
    tag, now = _records.tag_of(_records.digest_of(new.raw_key)), hotcache_clock.utcnow()
    day, ttl = now.date(), _records.counter_ttl()
    assert _documents.add_use(new.key_id, day, "fallback", None, now) == (True, 1)  # counted on MongoDB
    raw_redis.set(_records.base_key(tag, day), 1, ex=ttl)
    raw_redis.set(_records.use_key(tag, day), 3, ex=ttl)
    raw_redis.hset(_records.token_key(tag), "previous-process:1", f"3:{int(now.timestamp())}")
    raw_redis.expire(_records.token_key(tag), _records.TOKEN_TTL)
    redis_backend.call("t", lambda r: _index.write_index(r, [], [(day, f"{new.key_id}:{tag}")]))
    assert apikeys.usage(new.key_id, days=1)[0][1] == 4  # read before any check of the new layout

    usage = apikeys.check(new.raw_key)
    assert usage.allowed and usage.used_today == 5
    assert raw_redis.get(_records.use_key(tag, day)) is None  # folded into the new count
    assert int(raw_redis.get(_records.count_key(tag, day))) == 5  # 3 + 1 on Redis, the base 1
    assert [apikeys.check(new.raw_key).allowed for _ in range(3)] == [True, True, False]
    assert apikeys.list_keys("alice")[0].used_today == 7
    apikeys.sync_usage()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 7
    for k in raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:{tag}}}:*"):
        assert raw_redis.ttl(k) > 0, k


def test_uses_written_by_a_process_still_on_the_previous_layout_are_counted_in_the_history(raw_redis):
    """During a rolling upgrade a process running the previous version may still count on the previous
    counter after the new layout started the day's count: the reads and the sync add it."""
    new = apikeys.create("alice")
    tag, day = _records.tag_of(_records.digest_of(new.raw_key)), hotcache_clock.utcnow().date()
    apikeys.check(new.raw_key)
    raw_redis.set(_records.use_key(tag, day), 2, ex=_records.counter_ttl())
    assert apikeys.usage(new.key_id, days=1)[0][1] == 3
    assert apikeys.sync_usage().written == 1 and apikeys.usage(new.key_id, days=1)[0][1] == 3


def test_counters_are_per_utc_day(clock):
    new = apikeys.create("alice", daily_limit=1)
    assert apikeys.check(new.raw_key).allowed
    assert not apikeys.check(new.raw_key).allowed
    clock.advance(86400)
    assert apikeys.check(new.raw_key).allowed
    history = apikeys.usage(new.key_id, days=3)
    assert [n for _, n in history] == [1, 1, 0]
    assert history[0][0] - history[1][0] == dt.timedelta(days=1)


@pytest.mark.mongo_contract
def test_sync_usage_is_idempotent_and_history_outlives_redis(raw_redis, key_prefix):
    a = apikeys.create("alice")
    b = apikeys.create("bob", daily_limit=2)
    for _ in range(3):
        apikeys.check(a.raw_key)
        apikeys.check(b.raw_key)
    first = apikeys.sync_usage()
    docs1 = sorted((d["key_id"], d["day"], d["redis"], d["fallback"]) for d in _usage_docs())
    second = apikeys.sync_usage()
    docs2 = sorted((d["key_id"], d["day"], d["redis"], d["fallback"]) for d in _usage_docs())
    assert first.written == second.written == 2
    assert docs1 == docs2 and {d[2] for d in docs1} == {2, 3}
    # Redis loses the counters (expiry): the history still has the day.
    tag = _records.tag_of(_records.digest_of(a.raw_key))
    for k in raw_redis.scan_iter(match=f"{key_prefix}:{{apikeys:{tag}}}:*"):
        raw_redis.delete(k)
    assert apikeys.usage(a.key_id, days=1)[0][1] == 3


def _usage_docs():
    return mongo.collection(apikeys.USAGE_COLLECTION, feature="test").find({})


@pytest.mark.mongo_contract
def test_list_keys_by_owner_and_all(clock):
    a = apikeys.create("alice")
    clock.advance(1)
    b = apikeys.create("bob")
    apikeys.check(b.raw_key)
    assert [k.key_id for k in apikeys.list_keys("alice")] == [a.key_id]
    listed = apikeys.list_keys()
    assert [k.key_id for k in listed] == [b.key_id, a.key_id]
    assert [k.used_today for k in listed] == [1, 0]


def test_create_rejects_bad_limits():
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError):
            apikeys.create("alice", daily_limit=bad)


def test_revoke_and_usage_of_an_unknown_id_raise_key_not_found():
    with pytest.raises(apikeys.KeyNotFound):
        apikeys.revoke("ak_nope")
    with pytest.raises(apikeys.KeyNotFound):
        apikeys.usage("ak_nope")
    assert apikeys.get("ak_nope") is None
