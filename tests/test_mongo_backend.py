"""The MongoDB module: operations on the stand-in, and real pymongo behaviour against a mockupdb server."""

import pytest
from mockupdb import MockupDB, OpMsg, going

from hotcache.backends import mongo
from hotcache.exceptions import DuplicateKey, MongoUnavailable
from hotcache.testing import count_redis, mongo_down


def test_operations_on_the_stand_in():
    coll = mongo.collection("things", feature="t")
    coll.insert_one({"_id": 1, "n": 1})
    assert coll.update_one({"_id": 1}, {"$inc": {"n": 2}}) == 1
    assert coll.find_one({"_id": 1})["n"] == 3
    doc = coll.find_one_and_update({"_id": 2}, {"$inc": {"n": 1}}, upsert=True)
    assert doc == {"_id": 2, "n": 1}
    assert [d["_id"] for d in coll.find({}, sort=[("_id", mongo.DESCENDING)])] == [2, 1]
    assert coll.find_one_and_delete({"_id": 2})["n"] == 1
    assert coll.count({}) == 1


def test_duplicate_insert_is_duplicate_key():
    coll = mongo.collection("things", feature="t")
    coll.insert_one({"_id": "x"})
    with pytest.raises(DuplicateKey):
        coll.insert_one({"_id": "x"})


def test_bulk_reports_duplicates_instead_of_raising():
    coll = mongo.collection("things", feature="t")
    coll.insert_one({"_id": 2})
    ops = [mongo.Insert({"_id": i}) for i in range(4)]
    result = coll.bulk([*ops, mongo.Update({"_id": 9}, {"$inc": {"n": 1}}, upsert=True)])
    assert result.inserted == 3 and result.upserted == 1
    assert result.duplicates == [2]


def test_operations_are_counted_per_feature():
    coll = mongo.collection("things", feature="alpha")
    with count_redis() as c:
        coll.insert_one({"_id": 1})
        coll.find_one({"_id": 1})
    assert c.mongo_ops == 2


def test_fault_injection_maps_to_unavailable():
    coll = mongo.collection("things", feature="t")
    with mongo_down(), pytest.raises(MongoUnavailable):
        coll.insert_one({"_id": 1})
    coll.insert_one({"_id": 1})


def test_client_is_recreated_after_fork(monkeypatch):
    first = mongo._current()
    monkeypatch.setattr(mongo.os, "getpid", lambda: first.pid + 1)
    assert mongo._current() is not first


def test_unset_url_is_unavailable(hotcache_config):
    hotcache_config(MONGO_URL=None)
    with pytest.raises(MongoUnavailable, match="MONGO_URL"):
        mongo.collection("x", feature="t").find_one({})


def test_database_name_from_url(hotcache_config):
    hotcache_config(MONGO_URL="mongodb://u:p@h:27017/appdb?retryWrites=true")
    assert mongo.database_name() == "appdb"
    hotcache_config(MONGO_URL="mongodb+srv://u:p@cluster0.example.net/")
    assert mongo.database_name() == "hotcache"
    hotcache_config(MONGO_DATABASE="explicit")
    assert mongo.database_name() == "explicit"


# --- real pymongo against a scripted server ---------------------------------------------------------

HELLO = {
    "ismaster": True, "isWritablePrimary": True, "helloOk": True, "minWireVersion": 0, "maxWireVersion": 21,
    "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000,
}


@pytest.fixture
def mock_server(hotcache_config):
    server = MockupDB(request_timeout=5)
    server.autoresponds("ismaster", HELLO)
    server.autoresponds("hello", HELLO)
    server.autoresponds(lambda r: r.command_name == "endSessions" and r.ok())
    server.run()
    hotcache_config(MONGO_URL=server.uri + "/hc", MONGO_SERVER_SELECTION_TIMEOUT_MS=700,
                    MONGO_SOCKET_TIMEOUT_MS=3000, MONGO_MAX_POOL_SIZE=3)
    yield server
    mongo.reset()
    server.stop()


def test_not_primary_is_unavailable(mock_server):
    coll = mongo.collection("c", feature="t")
    with pytest.raises(MongoUnavailable), going(coll.insert_one, {"_id": 1}):
        mock_server.receives(OpMsg("insert", "c")).command_err(code=10107, errmsg="not primary")


def test_server_duplicate_key_is_duplicate_key(mock_server):
    coll = mongo.collection("c", feature="t")
    with pytest.raises(DuplicateKey), going(coll.insert_one, {"_id": 1}):
        mock_server.receives(OpMsg("insert", "c")).ok(
            n=0, writeErrors=[{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}]
        )


def test_pool_listener_counts_connections(mock_server):
    coll = mongo.collection("c", feature="t")
    with going(coll.insert_one, {"_id": 1}):
        mock_server.receives(OpMsg("insert", "c")).ok(n=1)
    stats = mongo.pool_stats()
    assert stats.monitored and stats.max_pool_size == 3
    assert stats.open >= 1 and stats.peak_checked_out == 1 and stats.checked_out == 0


# mockupdb's accept thread prints a harmless EBADF after stop() (see shared/research/mongo-options.md).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_server_gone_is_unavailable_within_selection_timeout(mock_server):
    mock_server.stop()
    with pytest.raises(MongoUnavailable):
        mongo.collection("c", feature="t").find_one({"_id": 1})


@pytest.mark.parametrize(
    ("url", "database"),
    [("mongomock://site1", "site1"), ("mongomock://localhost/site2", "site2"), ("mongomock://localhost", "localhost"),
     ("mongodb://db.example:27017/app?retryWrites=true", "app"), ("mongodb://db.example:27017", "hotcache")],
)
def test_the_database_comes_from_the_url_as_mongodb_reads_it(hotcache_config, url, database):
    hotcache_config(MONGO_URL=url, MONGO_DATABASE=None)
    assert mongo.database_name() == database


def test_the_stand_in_without_its_extra_says_what_to_install(hotcache_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mongomock", None)  # as if hotcache[embedded] were not installed
    hotcache_config(MONGO_URL="mongomock://missing_extra")
    with pytest.raises(MongoUnavailable, match=r"pip install 'hotcache\[embedded\]'"):
        mongo.collection("x", feature="test").find_one({})
