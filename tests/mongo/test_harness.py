"""The real-server harness itself (tests/support/secantus.py and the fixtures in tests/conftest.py)."""

import socket

import pytest

from hotcache.backends import mongo
from hotcache.exceptions import MongoUnavailable
from tests.support.secantus import RealMongo, SecantusServer, SecantusStartError, new_database_name, with_database

pytestmark = pytest.mark.django_db(databases=[])


def test_a_server_that_cannot_start_is_an_error_naming_the_reason():
    """The fixtures fail, never skip, when the server cannot run: here its port is taken."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    server = SecantusServer(port=taken.getsockname()[1])
    try:
        with pytest.raises(SecantusStartError, match="Address already in use"):
            server.start(timeout=30)
    finally:
        taken.close()
        server.close()


def test_real_mongo_points_hotcache_at_its_own_database(real_mongo, settings):
    assert settings.HOTCACHE["MONGO_URL"] == real_mongo.url
    assert settings.HOTCACHE["MONGO_DATABASE"] == real_mongo.database == mongo.database_name()
    mongo.collection("c", feature="t").insert_one({"_id": 1})
    assert real_mongo.db()["c"].find_one({"_id": 1}) == {"_id": 1}
    assert real_mongo.client().admin.command("hello")["maxWireVersion"] >= 17


def test_each_test_database_is_dropped_afterwards(secantus_server):
    if secantus_server is None:
        pytest.skip("HOTCACHE_TEST_MONGO_URL: the fixture does not own the server")
    name = new_database_name()
    handle = RealMongo(with_database(secantus_server.url, name), name, secantus_server)
    handle.db()["c"].insert_one({"_id": 1})
    assert name in handle.client().list_database_names()
    handle.close()
    other = RealMongo(secantus_server.url, "admin", secantus_server)
    assert name not in other.client().list_database_names()
    other.close(drop=False)


def test_fail_points_hit_hotcache_only_and_end_with_the_block(real_mongo):
    coll = mongo.collection("c", feature="t")
    coll.insert_one({"_id": 1})
    with real_mongo.fail_point(["find"], times=None, close_connection=True):
        with pytest.raises(MongoUnavailable):
            coll.find_one({"_id": 1})
        assert real_mongo.db()["c"].find_one({"_id": 1}) == {"_id": 1}, "the test's own client is not failed"
    assert coll.find_one({"_id": 1}) == {"_id": 1}


def test_mongo_store_gives_one_interface_over_both_stores(mongo_store):
    mongo.collection("c", feature="t").insert_one({"_id": "x", "n": 1})
    assert mongo_store.db()["c"].find_one({"_id": "x"}) == {"_id": "x", "n": 1}
    assert mongo_store.kind in ("standin", "real")
    assert mongo.url_scheme(mongo_store.url) == ("mongomock" if mongo_store.kind == "standin" else "mongodb")
