"""Django's session-store contract (the behaviours of Django's SessionTestsMixin that apply to a database-backed
store) on hotcache.sessions, against the real Redis: the data a user relies on survives, in both stores."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.contrib.sessions.models import Session
from django.core import signing as django_signing
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hotcache.backends import redis as redis_backend
from hotcache.sessions import SessionStore, cache
from hotcache.sessions.entries import decode, entry_key, version_key
from hotcache.testing import count_redis, frozen_clock


def new_session(**data) -> SessionStore:
    s = SessionStore()
    for k, v in data.items():
        s[k] = v
    s.save()
    return s


def test_new_session_is_empty_unmodified_and_keyless():
    s = SessionStore()
    assert s.session_key is None
    assert not s.modified and not s.accessed
    assert s.is_empty()
    assert s.get("cat") is None
    assert s.accessed


def test_store_and_get_sets_modified():
    s = SessionStore()
    s["cat"] = "dog"
    assert s.modified
    assert s.pop("cat") == "dog"
    assert s.pop("some key", "does not exist") == "does not exist"


def test_save_then_load_in_another_store_reads_redis_only():
    s = new_session(cat="dog", n=[1, 2])
    fresh = SessionStore(s.session_key)
    redis_backend.lean_call("warm", lambda r: r.execute_command("PING"))  # the reads' connection (its handshake)
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        assert fresh["cat"] == "dog"
        assert fresh["n"] == [1, 2]
    assert len(queries) == 0
    assert redis.round_trips == 1 and redis.commands == 1  # one MGET (entry + version)
    assert redis.events["sessions:hit"] == 1


def test_save_writes_the_database_row_that_djangos_db_engine_reads():
    s = new_session(cat="dog")
    assert DBStore(s.session_key)["cat"] == "dog"
    row = Session.objects.get(session_key=s.session_key)
    assert s.decode(row.session_data) == {"cat": "dog"}


def test_redis_entry_is_sealed_bound_to_its_key_and_holds_the_database_encoding(raw_redis):
    s = new_session(cat="dog")
    raw = raw_redis.get(entry_key(s.session_key))
    entry = decode(s.session_key, raw)
    assert entry is not None
    assert entry.data == Session.objects.get(session_key=s.session_key).session_data
    other = new_session(cat="mouse")
    # Copied under another session's key, it is not trusted (a miss, served from that session's own row).
    raw_redis.set(entry_key(other.session_key), raw)
    with count_redis() as redis:
        assert SessionStore(other.session_key)["cat"] == "mouse"
    assert redis.events["sessions:tampered"] == 1


def test_ttl_is_the_session_expiry_age(raw_redis):
    s = SessionStore()
    s["a"] = 1
    s.set_expiry(600)
    s.save()
    ttl = raw_redis.ttl(entry_key(s.session_key))
    assert 590 <= ttl <= 600
    assert SessionStore(s.session_key).get_expiry_age() == 600


def test_miss_loads_from_the_database_and_fills_redis(raw_redis):
    s = new_session(cat="dog")
    raw_redis.delete(entry_key(s.session_key))
    with CaptureQueriesContext(connection) as queries:
        assert SessionStore(s.session_key)["cat"] == "dog"
    assert len(queries) == 1
    assert raw_redis.exists(entry_key(s.session_key))
    with CaptureQueriesContext(connection) as queries:
        assert SessionStore(s.session_key)["cat"] == "dog"
    assert len(queries) == 0


def test_update_is_visible_to_the_next_load():
    s = new_session(cat="dog")
    s["cat"] = "lion"
    s.save()
    assert SessionStore(s.session_key)["cat"] == "lion"
    assert DBStore(s.session_key)["cat"] == "lion"


def test_delete_removes_both_copies(raw_redis):
    s = new_session(cat="dog")
    key = s.session_key
    s.delete()
    assert not raw_redis.exists(entry_key(key))
    assert not Session.objects.filter(session_key=key).exists()
    assert not SessionStore(key).exists(key)
    assert SessionStore(key).load() == {}


def test_flush_empties_and_forgets_the_key(raw_redis):
    s = new_session(foo="bar")
    key = s.session_key
    s.flush()
    assert s.session_key is None and s.is_empty() and s.modified
    assert not raw_redis.exists(entry_key(key))
    assert SessionStore(key).load() == {}


def test_cycle_key_keeps_data_and_drops_the_old_key(raw_redis):
    s = new_session(a="c", b="d")
    old = s.session_key
    s.cycle_key()
    assert s.session_key != old
    assert dict(s.items()) == {"a": "c", "b": "d"}
    assert not raw_redis.exists(entry_key(old))
    assert SessionStore(old).load() == {}
    s.save()
    assert SessionStore(s.session_key)["a"] == "c"


def test_cycle_key_of_unsaved_session_keeps_data():
    s = SessionStore()
    s["a"], s["b"] = "c", "d"
    s.cycle_key()
    assert dict(s.items()) == {"a": "c", "b": "d"}


@pytest.mark.parametrize(
    "key",
    [
        "short",
        "x" * 41,
        "hc:{sessions:abc}:s-injected",
        "abc def ghi jkl",
        "abcdefgh\r\nFLUSHALL",
        "../../etc/passwd",
        "ab*cdefgh?",
    ],
)
def test_invalid_keys_never_reach_redis_or_the_database(key):
    with CaptureQueriesContext(connection) as queries, count_redis() as redis:
        s = SessionStore(key)
        assert s.load() == {}
        assert s.get("x") is None
    assert redis.commands == 0
    assert len(queries) == 0
    assert s.session_key is None


def test_unknown_valid_key_is_an_empty_session_and_save_makes_a_new_key():
    s = SessionStore("a" * 32)
    assert s.load() == {}
    assert s.session_key is None
    s["x"] = 1
    s.save()
    assert s.session_key != "a" * 32
    assert SessionStore(s.session_key)["x"] == 1


def test_save_of_a_deleted_session_raises_update_error_like_djangos():
    s = new_session(x=1)
    SessionStore(s.session_key).delete()
    s["x"] = 2
    with pytest.raises(UpdateError):
        s.save()


def test_corrupt_database_data_decodes_to_an_empty_session(raw_redis):
    s = new_session(x=1)
    Session.objects.filter(session_key=s.session_key).update(session_data="bad:data")
    raw_redis.delete(entry_key(s.session_key))
    assert SessionStore(s.session_key).load() == {}


def test_forged_redis_entry_is_a_miss_served_from_the_database(raw_redis):
    s = new_session(is_admin=False)
    forged = django_signing.dumps({"is_admin": True}, salt=s.key_salt, compress=True)
    raw_redis.set(entry_key(s.session_key), "0" * 64 + "." + '{"f":1,"u":null,"x":9999999999999,"d":"' + forged + '"}')
    with count_redis() as redis:
        assert SessionStore(s.session_key)["is_admin"] is False
    assert redis.events["sessions:tampered"] == 1


def test_expired_session_is_absent_in_both_stores(raw_redis):
    s = SessionStore()
    s["x"] = 1
    s.set_expiry(-10)
    s.save()
    assert not raw_redis.exists(entry_key(s.session_key))  # nothing to cache for a session already over
    assert SessionStore(s.session_key).load() == {}


def test_entry_replayed_after_its_expiry_is_refused(raw_redis):
    s = new_session(x=1)
    raw = raw_redis.get(entry_key(s.session_key))
    with frozen_clock(timezone.now().timestamp() + 15 * 86400):
        assert decode(s.session_key, raw) is None


def test_clear_expired_delegates_to_the_database():
    live = new_session(x=1)
    old = SessionStore()
    old["x"] = 2
    old.set_expiry(timezone.now() - timedelta(days=1))
    old.save()
    SessionStore.clear_expired()
    assert Session.objects.filter(session_key=live.session_key).exists()
    assert not Session.objects.filter(session_key=old.session_key).exists()


def test_a_fill_from_before_a_save_cannot_overwrite_it(raw_redis):
    """A reader misses, loads the old row; a save commits and publishes; the reader's write-back is refused."""
    s = new_session(v="old")
    key = s.session_key
    raw_redis.delete(entry_key(key))
    lookup = cache.read(key)
    assert lookup is not None and lookup.entry is None
    old_data = Session.objects.get(session_key=key).session_data
    s["v"] = "new"
    s.save()
    assert not cache.fill(key, lookup.version, old_data, 9_999_999_999_999, None, 600)
    assert SessionStore(key)["v"] == "new"


def test_a_fill_from_before_a_delete_cannot_resurrect_it(raw_redis):
    s = new_session(v="x")
    key = s.session_key
    raw_redis.delete(entry_key(key))
    lookup = cache.read(key)
    data = Session.objects.get(session_key=key).session_data
    SessionStore(key).delete()
    assert not cache.fill(key, lookup.version, data, 9_999_999_999_999, None, 600)
    assert not raw_redis.exists(entry_key(key))


def test_only_the_newest_reservation_publishes(raw_redis):
    """Two saves whose Redis writes arrive in the opposite order of their database writes: the older loses."""
    s = new_session(v=0)
    key = s.session_key
    first = cache.reserve(key, 600)
    second = cache.reserve(key, 600)
    assert second > first
    assert cache.publish(key, second, encode_data("b"), 9_999_999_999_999, None, 600)
    assert not cache.publish(key, first, encode_data("a"), 9_999_999_999_999, None, 600)
    assert decode(key, raw_redis.get(entry_key(key))).data == encode_data("b")


def encode_data(v):
    return SessionStore().encode({"v": v})


def test_concurrent_saves_leave_redis_equal_to_the_database(transactional_db):
    s = new_session(n=-1)
    key = s.session_key
    errors = []

    def worker(i):
        try:
            for j in range(5):
                for _ in range(200):  # SQLite's shared in-memory database refuses a write while another holds it
                    try:
                        mine = SessionStore(key)
                        mine["n"] = i * 10 + j
                        mine.save()
                        break
                    except (UpdateError, OperationalError):
                        continue
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    from_db = DBStore(key)["n"]
    assert SessionStore(key)["n"] == from_db


def test_the_entry_names_the_logged_in_user_for_a_combined_read(raw_redis, django_user_model):
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY

    from hotcache.users.entries import entry_key as user_entry_key

    user = django_user_model.objects.create_user("carol", password="pw")
    s = new_session(**{SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend"})
    entry = decode(s.session_key, raw_redis.get(entry_key(s.session_key)))
    assert entry.user == str(user.pk)
    assert user_entry_key(entry.user).endswith(f"{{users:{user.pk}}}:u")


def test_async_methods():
    async def run():
        s = SessionStore()
        await s.aset("cat", "dog")
        await s.asave()
        other = SessionStore(s.session_key)
        assert await other.aget("cat") == "dog"
        old = s.session_key
        await s.acycle_key()
        assert await s.aget("cat") == "dog"
        assert await SessionStore(old).aload() == {}
        assert await SessionStore().aexists(s.session_key)
        await s.aflush()
        assert s.session_key is None
        await SessionStore.aclear_expired()

    async_to_sync(run)()


def test_version_counter_outlives_the_entry(raw_redis):
    s = new_session(x=1)
    assert raw_redis.ttl(version_key(s.session_key)) > raw_redis.ttl(entry_key(s.session_key))


def test_sessions_feature_disabled_is_djangos_db_engine(hotcache_config):
    hotcache_config(FEATURES=["users"])
    with count_redis() as redis:
        s = new_session(x=1)
        assert SessionStore(s.session_key)["x"] == 1
        s.delete()
    assert redis.commands == 0


def test_a_save_inside_an_outer_transaction_publishes_on_commit(raw_redis):
    from django.db import transaction

    s = new_session(v="old")
    with transaction.atomic():
        s["v"] = "new"
        s.save()
        assert not raw_redis.exists(entry_key(s.session_key))  # reserved: nothing served until the commit
    row = Session.objects.get(session_key=s.session_key)
    assert decode(s.session_key, raw_redis.get(entry_key(s.session_key))).data == row.session_data
    assert SessionStore(s.session_key)["v"] == "new"


def test_a_rolled_back_save_is_never_served(raw_redis):
    from django.db import transaction

    s = new_session(v="old")
    with pytest.raises(RuntimeError), transaction.atomic():
        s["v"] = "rolled back"
        s.save()
        raise RuntimeError
    assert not raw_redis.exists(entry_key(s.session_key))
    assert SessionStore(s.session_key)["v"] == "old"


@pytest.mark.parametrize("user_id", [["1"], {"a": 1}, "x" * 300, "\x00", 1.5, None])
def test_any_value_under_the_auth_key_is_stored_without_a_user_part(user_id, raw_redis):
    from django.contrib.auth import SESSION_KEY

    s = new_session(**{SESSION_KEY: user_id})
    assert decode(s.session_key, raw_redis.get(entry_key(s.session_key))).user is None
    assert SessionStore(s.session_key)[SESSION_KEY] == user_id


def test_commands_are_metered_as_sessions():
    with count_redis() as redis:
        s = new_session(x=1)
        SessionStore(s.session_key).load()
        s.delete()
    assert set(redis.by_feature) == {"sessions"}
    assert redis.events["sessions:saved"] == 1 and redis.events["sessions:invalidated"] == 1


def test_deleting_another_session_by_key_removes_both_copies(raw_redis):
    victim = new_session(x=1)
    SessionStore().delete(victim.session_key)
    assert not raw_redis.exists(entry_key(victim.session_key))
    assert not Session.objects.filter(session_key=victim.session_key).exists()
    assert SessionStore(victim.session_key).load() == {}
