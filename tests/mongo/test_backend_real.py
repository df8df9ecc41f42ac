"""hotcache.backends.mongo's contract, run on the in-process stand-in AND on a real server (``mongo_store``).

Every operation hotcache's features use, with the semantics they rely on. Where the two stores differ the
test says so and pins the real server's behaviour (the stand-in's is noted, not relied upon).
"""

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hotcache import metering, reports
from hotcache.backends import mongo
from hotcache.exceptions import DuplicateKey, MongoUnavailable, MongoWriteError
from hotcache.testing import count_redis
from tests.support.secantus import free_port

pytestmark = pytest.mark.django_db(databases=[])


def _coll(name: str = "things") -> mongo.Collection:
    return mongo.collection(name, feature="contract")


# --- single-document operations -------------------------------------------------------------------


def test_insert_find_update_delete_round_trip(mongo_store):
    coll = _coll()
    assert coll.insert_one({"_id": "a", "n": 1, "tags": ["x"]}) == "a"
    assert coll.find_one({"_id": "a"}) == {"_id": "a", "n": 1, "tags": ["x"]}
    assert coll.find_one({"_id": "a"}, {"n": 1, "_id": 0}) == {"n": 1}
    assert coll.find_one({"_id": "missing"}) is None
    assert coll.update_one({"_id": "a"}, {"$inc": {"n": 2}, "$push": {"tags": "y"}}) == 1
    assert coll.update_one({"_id": "a"}, {"$set": {"n": 3}}) == 1, "matched, even though nothing changed"
    assert coll.update_one({"_id": "nope"}, {"$inc": {"n": 1}}) == 0
    assert coll.find_one({"_id": "a"}) == {"_id": "a", "n": 3, "tags": ["x", "y"]}
    assert coll.delete_one({"_id": "a"}) == 1
    assert coll.delete_one({"_id": "a"}) == 0
    assert mongo_store.db()["things"].count_documents({}) == 0



def test_a_shared_read_made_while_the_same_query_is_in_flight_waits_for_its_answer(mongo_store, monkeypatch):
    """find_one(shared=True): 8 threads asking for one document at once send one query (a cold start's herd
    of misses for one key takes one pooled connection, not 8); each gets the answer, counted as not sent."""
    coll = _coll()
    coll.insert_one({"_id": "k", "n": 1})
    sent, joined, release = [], threading.Semaphore(0), threading.Event()
    real_find_one, real_event = mongo.Collection.find_one, metering.event

    def find_one(self, filter, projection=None, **options):
        if not options.get("shared"):
            sent.append(filter)
            assert release.wait(30)  # in flight until every other thread has joined it
        return real_find_one(self, filter, projection, **options)

    def event(feature, name, n=1):
        real_event(feature, name, n)
        if name == "mongo_read_shared":
            joined.release()

    monkeypatch.setattr(mongo.Collection, "find_one", find_one)
    monkeypatch.setattr(metering, "event", event)
    before = metering.snapshot()
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(coll.find_one, {"_id": "k"}, shared=True) for _ in range(8)]
        for _ in range(7):
            assert joined.acquire(timeout=30)
        release.set()
        assert [a.result() for a in answers] == [{"_id": "k", "n": 1}] * 8
    assert sent == [{"_id": "k"}]
    delta = metering.snapshot()
    delta.subtract(before)
    assert delta["mongo:contract"] == 1 and delta["ev:contract:mongo_read_shared"] == 7
    # Nothing stays in flight: the next shared read is sent again.
    assert coll.find_one({"_id": "k"}, shared=True) == {"_id": "k", "n": 1}
    assert len(sent) == 2

def test_upsert_copies_only_equality_conditions_and_set_on_insert_applies_once(mongo_store):
    """The analytics/apikeys idiom: filter {_id, field: {$ne: x}} + $inc + $setOnInsert, upsert."""
    coll = _coll()
    update = {"$inc": {"count": 5}, "$setOnInsert": {"created": "first"}, "$push": {"batches": "b1"}}
    assert coll.update_one({"_id": "h", "kind": "hour", "batches": {"$ne": "b1"}}, update, upsert=True) == 1
    doc = mongo_store.db()["things"].find_one({"_id": "h"})
    assert doc == {"_id": "h", "kind": "hour", "count": 5, "created": "first", "batches": ["b1"]}
    # Replayed: the $ne condition excludes the document, so the upsert tries to insert its _id again.
    with pytest.raises(DuplicateKey):
        coll.update_one({"_id": "h", "kind": "hour", "batches": {"$ne": "b1"}}, update, upsert=True)
    second = {"$inc": {"count": 1}, "$setOnInsert": {"created": "again"}, "$push": {"batches": "b2"}}
    assert coll.update_one({"_id": "h", "batches": {"$ne": "b2"}}, second, upsert=True) == 1
    assert mongo_store.db()["things"].find_one({"_id": "h"})["created"] == "first"
    assert mongo_store.db()["things"].find_one({"_id": "h"})["count"] == 6


def test_push_each_slice_keeps_the_newest(mongo_store):
    coll = _coll()
    coll.insert_one({"_id": 1, "batches": []})
    for i in range(7):
        coll.update_one({"_id": 1}, {"$push": {"batches": {"$each": [f"b{i}"], "$slice": -3}}})
    assert coll.find_one({"_id": 1})["batches"] == ["b4", "b5", "b6"]


def test_max_min_unset_and_dates_round_trip_as_aware_utc_milliseconds(mongo_store):
    coll = _coll()
    t = dt.datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=dt.UTC)
    coll.insert_one({"_id": 1, "at": t, "gone": 1, "hi": 5, "lo": 5})
    coll.update_one({"_id": 1}, {"$max": {"hi": 9, "at": t + dt.timedelta(hours=1)}, "$min": {"lo": 2},
                                 "$unset": {"gone": ""}})
    doc = coll.find_one({"_id": 1})
    assert doc == {"_id": 1, "at": dt.datetime(2026, 1, 2, 4, 4, 5, 678_000, tzinfo=dt.UTC), "hi": 9, "lo": 2}
    assert doc["at"].tzinfo is not None
    # BSON dates are milliseconds: a filter on the microsecond value hotcache holds in memory is truncated
    # the same way, so it matches the stored value.
    assert coll.find_one({"_id": 1, "at": t + dt.timedelta(hours=1)}) == doc
    assert coll.count({"at": {"$gt": t + dt.timedelta(hours=1)}}) == 0


def test_find_sort_limit_projection_count_and_aggregate(mongo_store):
    coll = _coll()
    for i in range(6):
        coll.insert_one({"_id": i, "owner": "a" if i % 2 else "b", "at": i * 10})
    coll.insert_one({"_id": 99, "owner": "a"})  # no "at": sorts first ascending (missing = null)
    found = coll.find({"owner": "a"}, sort=[("at", mongo.DESCENDING)], limit=2, projection={"at": 1})
    assert found == [{"_id": 5, "at": 50}, {"_id": 3, "at": 30}]
    assert [d["_id"] for d in coll.find({"owner": "a"}, sort=[("at", mongo.ASCENDING)])] == [99, 1, 3, 5]
    assert [d["_id"] for d in coll.find({}, sort=[("owner", 1), ("_id", -1)], limit=3)] == [99, 5, 3]
    assert coll.count({"owner": "a"}) == 4
    assert coll.count({"at": {"$exists": False}}) == 1
    totals = coll.aggregate([
        {"$match": {"at": {"$gte": 0}}},
        {"$group": {"_id": "$owner", "total": {"$sum": "$at"}, "n": {"$sum": 1}, "top": {"$max": "$at"}}},
        {"$sort": {"_id": 1}},
    ])
    assert totals == [{"_id": "a", "total": 90, "n": 3, "top": 50}, {"_id": "b", "total": 60, "n": 3, "top": 40}]
    assert coll.delete_many({"owner": "a"}) == 4
    assert coll.count({}) == 3


def test_find_one_and_update_returns_after_or_before_and_upserts(mongo_store):
    coll = _coll()
    assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}) is None
    assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, upsert=True) == {"_id": 1, "n": 1}
    assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, return_new=False) == {"_id": 1, "n": 1}
    assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, projection={"_id": 0}) == {"n": 3}
    coll.insert_one({"_id": 2, "q": "x", "rank": 5})
    coll.insert_one({"_id": 3, "q": "x", "rank": 1})
    first = coll.find_one_and_update({"q": "x"}, {"$set": {"took": True}}, sort=[("rank", mongo.ASCENDING)])
    assert first["_id"] == 3 and first["took"] is True
    assert coll.find_one_and_delete({"_id": 2}) == {"_id": 2, "q": "x", "rank": 5}
    assert coll.find_one_and_delete({"_id": 2}) is None


def test_find_one_and_update_with_expr_guard_on_the_sum_of_fields(mongo_store):
    """apikeys' limit guard: {$expr: {$lt: [{$add: [{$ifNull: ["$f", 0]}, ...]}, limit]}} with $inc."""
    coll = _coll("usage")
    total = {"$add": [{"$ifNull": [f"${f}", 0]} for f in ("fallback", "redis", "doubt")]}
    coll.insert_one({"_id": "k:d", "redis": 3})  # fallback and doubt missing: $ifNull makes them 0
    under = {"_id": "k:d", "$expr": {"$lt": [total, 5]}}
    assert coll.find_one_and_update(under, {"$inc": {"fallback": 1}})["fallback"] == 1
    assert coll.find_one_and_update(under, {"$inc": {"doubt": 1}})["doubt"] == 1
    assert coll.find_one_and_update(under, {"$inc": {"fallback": 1}}) is None, "3 + 1 + 1 = 5 is not < 5"
    assert coll.find_one({"_id": "k:d"}) == {"_id": "k:d", "redis": 3, "fallback": 1, "doubt": 1}


def test_duplicate_id_and_unique_index_are_duplicate_key(mongo_store):
    coll = mongo.ensure_indexes(
        "keys", feature="contract",
        create=lambda c: c.create_index([("digest", mongo.ASCENDING)], unique=True, name="digest_unique"),
    )
    coll.insert_one({"_id": 1, "digest": "d1"})
    with pytest.raises(DuplicateKey) as by_id:
        coll.insert_one({"_id": 1, "digest": "other"})
    with pytest.raises(DuplicateKey) as by_index:
        coll.insert_one({"_id": 2, "digest": "d1"})
    assert by_id.value.code == by_index.value.code == 11000
    with pytest.raises(DuplicateKey):
        coll.update_one({"_id": 3}, {"$set": {"digest": "d1"}}, upsert=True)
    with pytest.raises(DuplicateKey):
        coll.find_one_and_update({"_id": 4}, {"$set": {"digest": "d1"}}, upsert=True)
    assert coll.count({}) == 1


def test_a_refused_update_is_a_write_error_with_the_server_code(mongo_store):
    coll = _coll()
    coll.insert_one({"_id": 1, "n": "text"})
    if mongo_store.kind == "standin":
        # Disagreement: mongomock fails in Python (a TypeError escapes the backend's error mapping).
        with pytest.raises(TypeError):
            coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
        return
    with pytest.raises(MongoWriteError) as exc:
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
    assert not isinstance(exc.value, DuplicateKey)
    assert exc.value.code == 14  # TypeMismatch
    assert coll.find_one({"_id": 1})["n"] == "text"


def test_changing_id_is_refused(mongo_store):
    coll = _coll()
    coll.insert_one({"_id": 1, "n": 1})
    with pytest.raises(MongoWriteError) as exc:
        coll.update_one({"_id": 1}, {"$set": {"_id": 2}})
    # Disagreement: the stand-in's error carries no code; the server's is ImmutableField (66).
    assert exc.value.code == (None if mongo_store.kind == "standin" else 66)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "n": 1}


# --- bulk writes ------------------------------------------------------------------------------------


def test_unordered_bulk_reports_duplicate_rows_by_index_and_applies_the_rest(mongo_store):
    coll = _coll()
    coll.insert_one({"_id": 2})
    coll.insert_one({"_id": "h", "batches": ["b1"], "count": 1})
    ops = [
        mongo.Insert({"_id": 1}),
        mongo.Insert({"_id": 2}),  # E11000
        mongo.Update({"_id": "h", "batches": {"$ne": "b1"}}, {"$inc": {"count": 1}}, upsert=True),  # E11000
        mongo.Update({"_id": "new"}, {"$inc": {"count": 1}}, upsert=True),
        mongo.Update({"_id": "h"}, {"$set": {"seen": True}}),
        mongo.Insert({"_id": 3}),
    ]
    result = coll.bulk(ops)
    assert result.duplicates == [1, 2]
    assert (result.inserted, result.upserted, result.matched, result.modified) == (2, 1, 1, 1)
    ids = [d["_id"] for d in mongo_store.db()["things"].find({}, {"_id": 1})]
    assert sorted(ids, key=str) == [1, 2, 3, "h", "new"]
    assert coll.find_one({"_id": "h"}) == {"_id": "h", "batches": ["b1"], "count": 1, "seen": True}


def test_bulk_of_a_thousand_upserts_is_one_operation(mongo_store):
    """(Ids from 1: the stand-in counts an upsert of ``_id: 0`` as matched, not upserted; hotcache's ids are
    strings, so that mongomock quirk never reaches a feature.)"""
    coll = _coll()
    ops = [mongo.Update({"_id": i}, {"$inc": {"n": 1}}, upsert=True) for i in range(1, 1001)]
    with count_redis() as counted:
        first = coll.bulk(ops)
        again = coll.bulk(ops)
    assert counted.mongo_ops == 2
    assert (first.upserted, first.matched) == (1000, 0)
    assert (again.upserted, again.matched, again.modified) == (0, 1000, 1000)
    assert coll.aggregate([{"$group": {"_id": None, "n": {"$sum": "$n"}}}]) == [{"_id": None, "n": 2000}]


def test_bulk_with_a_non_duplicate_error_raises_it_after_applying_the_other_rows(mongo_store):
    coll = _coll()
    coll.insert_one({"_id": 1, "n": "text"})
    ops = [mongo.Update({"_id": 1}, {"$inc": {"n": 1}}), mongo.Insert({"_id": 2})]
    if mongo_store.kind == "standin":
        with pytest.raises(TypeError):  # disagreement: see test_a_refused_update_is_a_write_error_...
            coll.bulk(ops)
        return
    with pytest.raises(MongoWriteError) as exc:
        coll.bulk(ops)
    assert exc.value.code == 14 and not isinstance(exc.value, DuplicateKey)
    assert coll.find_one({"_id": 2}) == {"_id": 2}, "unordered: the other row was applied"


def test_ordered_bulk_stops_at_the_first_duplicate(mongo_store):
    coll = _coll()
    coll.insert_one({"_id": 2})
    result = coll.bulk([mongo.Insert({"_id": 1}), mongo.Insert({"_id": 2}), mongo.Insert({"_id": 3})], ordered=True)
    assert result.duplicates == [1] and result.inserted == 1
    assert coll.find_one({"_id": 3}) is None


def test_empty_bulk_sends_nothing(mongo_store):
    with count_redis() as counted:
        assert _coll().bulk([]) == mongo.BulkResult()
    assert counted.mongo_ops == 0


# --- indexes ----------------------------------------------------------------------------------------


def test_ttl_and_unique_indexes_are_created_once_per_process_and_reported(mongo_store):
    def create(c: mongo.Collection) -> None:
        c.create_index([("purge_at", mongo.ASCENDING)], expire_after_seconds=0, name="purge_at")
        c.create_index([("key_id", mongo.ASCENDING), ("day", mongo.ASCENDING)], unique=True, name="key_day")
        c.create_index([("token", mongo.ASCENDING)], unique=True, expire_after_seconds=3600, name="token_ttl")

    with count_redis() as counted:
        coll = mongo.ensure_indexes("indexed", feature="contract", create=create)
        mongo.ensure_indexes("indexed", feature="contract", create=create)
    assert counted.mongo_ops == 3, "index creation runs once per process, database and collection"
    info = coll.index_information()
    assert info["purge_at"]["expireAfterSeconds"] == 0
    assert info["key_day"]["unique"] is True and info["key_day"]["key"] == [("key_id", 1), ("day", 1)]
    assert info["token_ttl"]["unique"] is True and info["token_ttl"]["expireAfterSeconds"] == 3600
    # Creating the same index again (another process, a restart) is accepted.
    assert coll.create_index([("key_id", mongo.ASCENDING), ("day", mongo.ASCENDING)], unique=True,
                             name="key_day") == "key_day"
    coll.insert_one({"key_id": "k", "day": "20260101", "token": "t1"})
    with pytest.raises(DuplicateKey):
        coll.insert_one({"key_id": "k", "day": "20260101", "token": "t2"})
    with pytest.raises(DuplicateKey):
        coll.insert_one({"key_id": "k", "day": "20260102", "token": "t1"})


def test_index_creation_is_single_flight_across_threads(mongo_store):
    """A process starting under load: its threads wait for one index creation instead of each sending it."""
    import threading

    calls = []
    gate = threading.Barrier(8)

    def create(c: mongo.Collection) -> None:
        calls.append(1)
        c.create_index([("k", mongo.ASCENDING)], name="k")

    def first_use() -> None:
        gate.wait()
        mongo.ensure_indexes("burst", feature="contract", create=create).find_one({"_id": 1})

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_an_expired_document_may_still_be_read_so_features_filter_on_their_own_expiry(mongo_store):
    """TTL indexes only collect garbage: the stand-in drops an expired document on the next read, a real
    server's TTL monitor only every minute or so. hotcache's reads filter on their own expiry fields."""
    coll = mongo.ensure_indexes(
        "ttl", feature="contract",
        create=lambda c: c.create_index([("purge_at", mongo.ASCENDING)], expire_after_seconds=0, name="purge_at"),
    )
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    coll.insert_one({"_id": 1, "purge_at": past, "expires_at": past})
    seen = coll.find_one({"_id": 1})
    if mongo_store.kind == "standin":
        assert seen is None  # mongomock enforces TTL lazily, at once
    else:
        assert seen is not None  # the server has not swept it yet
    assert coll.find_one({"_id": 1, "expires_at": {"$gt": dt.datetime.now(dt.UTC)}}) is None


def test_changing_an_existing_index_is_a_write_error(mongo_store):
    """An index recreated under its name with other options (an upgrade adding a TTL) is refused: a feature
    that changes an index must give it a new name. The server names the conflict; the stand-in gives no code."""
    coll = _coll("reindexed")
    coll.create_index([("day", mongo.ASCENDING)], name="day")
    with pytest.raises(MongoWriteError) as exc:
        coll.create_index([("day", mongo.ASCENDING)], name="day", expire_after_seconds=60)
    assert exc.value.code in ((None,) if mongo_store.kind == "standin" else (85, 86))  # IndexOptionsConflict


# --- connections, pool and the status report ----------------------------------------------------------


def test_every_call_counts_one_operation_for_its_feature(mongo_store):
    coll = mongo.collection("metered", feature="alpha")
    before = metering.snapshot()
    coll.insert_one({"_id": 1})
    coll.find_one({"_id": 1})
    coll.bulk([mongo.Insert({"_id": 2}), mongo.Insert({"_id": 3})])
    after = metering.snapshot()
    assert after["mongo:alpha"] - before["mongo:alpha"] == 3


def test_pool_stats_are_the_drivers_on_a_real_server(mongo_store, hotcache_config):
    hotcache_config(MONGO_MAX_POOL_SIZE=3)
    coll = _coll()
    coll.insert_one({"_id": 1})
    coll.find_one({"_id": 1})
    stats = mongo.pool_stats()
    if mongo_store.kind == "standin":
        assert not stats.monitored
        assert mongo.local_pool_stats() is None
        return
    assert stats.monitored and stats.max_pool_size == 3
    assert 1 <= stats.open <= 3 and stats.peak_open >= 1
    assert stats.checked_out == 0 and stats.peak_checked_out == 1
    assert stats.failed_checkouts == 0
    assert mongo.local_pool_stats() is stats


def test_server_status_connections_reach_the_status_report(mongo_store):
    _coll().insert_one({"_id": 1})
    status = mongo.server_status_connections()
    overview = reports.overview()
    if mongo_store.kind == "standin":
        assert status is None
        assert overview.mongo.server_source == "unknown"
        return
    assert status is not None and status["current"] >= 1 and status["totalCreated"] >= status["current"]
    assert overview.mongo.server_source == "serverStatus"
    assert overview.mongo.server_status["current"] >= 1
    assert overview.mongo.server_limit.value == overview.mongo.server_status["current"]
    assert overview.mongo.pool_limit.value is not None and overview.mongo.pool_limit.value >= 1


def test_ping_measures_a_round_trip(mongo_store):
    assert 0 <= mongo.ping() < 5


def test_unreachable_server_is_unavailable_within_the_selection_timeout(real_mongo, hotcache_config):
    """A network outage is a real server's matter (the stand-in has no network; its outages are injected)."""
    import time

    hotcache_config(MONGO_URL=f"mongodb://127.0.0.1:{free_port()}/x", MONGO_SERVER_SELECTION_TIMEOUT_MS=300)
    started = time.monotonic()
    with pytest.raises(MongoUnavailable):
        _coll().find_one({"_id": 1})
    assert time.monotonic() - started < 3
    assert mongo.server_status_connections() is None


# --- connections --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "query", "mode"),
    [("poll", "", "poll"), ("stream", "", "stream"), ("poll", "?serverMonitoringMode=stream", "stream")],
)
def test_monitoring_mode_comes_from_the_setting_unless_the_url_names_one(real_mongo, hotcache_config, setting,
                                                                       query, mode):
    """MONGO_SERVER_MONITORING_MODE ('poll' by default: one monitoring connection per process, not two) is what
    hotcache's client uses; a serverMonitoringMode written in MONGO_URL wins."""
    hotcache_config(MONGO_URL=real_mongo.url + query, MONGO_SERVER_MONITORING_MODE=setting)
    mongo.reset()
    assert mongo.ping() >= 0
    assert mongo._current().client.options.server_monitoring_mode == mode
