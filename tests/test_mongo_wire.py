"""hotcache's MongoDB module through real pymongo against the mongomock-backed wire server (used by end-to-end runs)."""

import pytest

from hotcache.backends import mongo
from hotcache.exceptions import DuplicateKey
from tests.support.mongo_wire import MongoWireServer


@pytest.fixture
def wire(hotcache_config):
    server = MongoWireServer()
    uri = server.run()
    hotcache_config(MONGO_URL=f"{uri}/wiretest", MONGO_SERVER_SELECTION_TIMEOUT_MS=2000, MONGO_MAX_POOL_SIZE=4)
    yield server
    mongo.reset()
    server.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_operations_round_trip_through_the_driver(wire):
    coll = mongo.ensure_indexes(
        "docs", feature="t", create=lambda c: c.create_index([("email", mongo.ASCENDING)], unique=True)
    )
    coll.insert_one({"_id": 1, "email": "a@x", "n": 1})
    with pytest.raises(DuplicateKey):
        coll.insert_one({"_id": 2, "email": "a@x"})
    assert coll.update_one({"_id": 3}, {"$inc": {"n": 5}, "$setOnInsert": {"email": "c@x"}}, upsert=True) == 1
    assert coll.find_one({"_id": 3}) == {"_id": 3, "n": 5, "email": "c@x"}
    assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})["n"] == 2
    assert coll.find_one_and_update({"_id": 9}, {"$set": {"email": "z@x"}}, upsert=True)["_id"] == 9
    assert [d["_id"] for d in coll.find({}, sort=[("_id", mongo.DESCENDING)], limit=2)] == [9, 3]
    assert coll.count({"n": {"$gte": 2}}) == 2
    result = coll.bulk([mongo.Insert({"_id": 1}), mongo.Update({"_id": 10}, {"$inc": {"n": 1}}, upsert=True)])
    assert result.duplicates == [0] and result.upserted == 1
    assert coll.find_one_and_delete({"_id": 10})["n"] == 1
    assert coll.aggregate([{"$group": {"_id": None, "total": {"$sum": "$n"}}}])[0]["total"] == 2 + 5
    assert "email_1" in coll.index_information()
    stats = mongo.pool_stats()
    assert stats.monitored and stats.peak_checked_out >= 1 and stats.max_pool_size == 4
