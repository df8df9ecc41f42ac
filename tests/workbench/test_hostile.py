"""Workbench sessions under hostile input: through the public API and the demo's HTTP views, with Redis up
and with Redis down, every refusal is the documented error naming the field (InvalidInput, a ValueError; a JSON 4xx
over HTTP, never a 500) and leaves both stores exactly as they were."""

import hashlib
import json
import math

import pytest

from hotcache import clock as hotcache_clock
from hotcache import metering, signing, workbench
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName
from hotcache.testing import count_redis, new_process
from hotcache.workbench import _layout

pytestmark = pytest.mark.urls("config.demo.urls")


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)
    new_process()  # and without envelopes this process remembers from an earlier test


@pytest.fixture
def small_states(hotcache_config):
    """WORKBENCH_MAX_STATE_BYTES=1000 (request it before ``store``: changing settings resets the MongoDB stand-in)."""
    hotcache_config(WORKBENCH_MAX_STATE_BYTES=1000)


@pytest.fixture(params=["redis up", "redis down"])
def store(request):
    """Each case runs against Redis and against the MongoDB fallback; a session "s1" (owner alice) exists."""
    if request.param == "redis down":
        request.getfixturevalue("redis_down")
    workbench.save("s1", {"n": 1}, owner="alice")
    return request.param


def snapshot(raw_redis, key_prefix):
    """Everything the workbench keeps: its Redis keys with their contents, workbench_active and history."""
    redis_part = {}
    for key in sorted(raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*")):
        kind = raw_redis.type(key)
        if kind == b"hash":
            redis_part[key] = sorted(raw_redis.hgetall(key).items())
        elif kind == b"zset":
            redis_part[key] = raw_redis.zrange(key, 0, -1, withscores=True)
        else:
            redis_part[key] = raw_redis.get(key)
    docs = [mongo.collection(name, feature="test").find({}) for name in (workbench.ACTIVE, workbench.HISTORY)]
    return redis_part, docs


@pytest.fixture
def unchanged(raw_redis, key_prefix):
    """``with unchanged():`` asserts the block left Redis and MongoDB exactly as they were."""

    class Guard:
        def __enter__(self):
            self.before = snapshot(raw_redis, key_prefix)

        def __exit__(self, *exc):
            assert snapshot(raw_redis, key_prefix) == self.before

    return Guard


def nested(levels, leaf=1, kind=dict):
    """A state nested ``levels`` deep (the state itself is level 1), built without recursion."""
    value = leaf
    for _ in range(levels - 1):
        value = {"a": value} if kind is dict else [value]
    return {"a": value}


def cyclic():
    state = {"name": "loop"}
    state["self"] = state
    return state


# (arguments of save after the session id, field named, fragment of the message)
BAD_SAVES = {
    "state nested 1,000 deep (defect 4)": (dict(state=nested(1000)), "state", "WORKBENCH_MAX_DEPTH"),
    "state nested 100,000 deep in arrays": (dict(state=nested(100_000, kind=list)), "state", "WORKBENCH_MAX_DEPTH"),
    "state one level over the limit": (dict(state=nested(65)), "state", "65 levels deep"),
    "cyclic state": (dict(state=cyclic()), "state", "WORKBENCH_MAX_DEPTH"),
    "lone surrogate in a value": (dict(state={"t": "x\ud800"}), "state", "lone surrogate (U+D800)"),
    "lone surrogate in a key": (dict(state={"\udfff": 1}), "state", "lone surrogate (U+DFFF)"),
    "state None": (dict(state=None), "state", "must be a dict"),
    "state a list": (dict(state=[1, 2]), "state", "must be a dict"),
    "state JSON text": (dict(state='{"n": 1}'), "state", "must be a dict"),
    "bytes in the state": (dict(state={"b": b"\x00\xff"}), "state", "not JSON-serialisable"),
    "NaN in the state": (dict(state={"x": math.nan}), "state", "not JSON-serialisable"),
    "infinity in the state": (dict(state={"x": -math.inf}), "state", "not JSON-serialisable"),
    "an object in the state": (dict(state={"x": object()}), "state", "not JSON-serialisable"),
    "a tuple key": (dict(state={(1, 2): "x"}), "state", "not JSON-serialisable"),
    "an integer of 5,000 digits": (dict(state={"x": 10**5000}), "state", "not JSON-serialisable"),
    "state over the size limit": (dict(state={"blob": "x" * 1_000_001}), "state", "WORKBENCH_MAX_STATE_BYTES"),
    "owner with NUL": (dict(state={}, owner="al\x00ice"), "owner", "workbench owner"),
    "owner with a lone surrogate": (dict(state={}, owner="al\ud800"), "owner", "workbench owner"),
    "owner with a newline": (dict(state={}, owner="alice\n"), "owner", "workbench owner"),
    "owner of 129 characters": (dict(state={}, owner="a" * 129), "owner", "workbench owner"),
    "owner an int of 200 digits": (dict(state={}, owner=10**200), "owner", "128 digits"),
    "owner True": (dict(state={}, owner=True), "owner", "must be a string"),
    "owner a float": (dict(state={}, owner=1.5), "owner", "must be a string"),
    "owner a list": (dict(state={}, owner=["alice"]), "owner", "must be a string"),
    "owner empty": (dict(state={}, owner=""), "owner", "workbench owner"),
    "expected_version -1": (dict(state={}, expected_version=-1), "expected_version", "whole number"),
    "expected_version a string": (dict(state={}, expected_version="1"), "expected_version", "whole number"),
    "expected_version a float": (dict(state={}, expected_version=1.0), "expected_version", "whole number"),
    "expected_version True": (dict(state={}, expected_version=True), "expected_version", "whole number"),
    "expected_version past 2**53": (dict(state={}, expected_version=2**53), "expected_version", "whole number"),
    "expected_version 10**30": (dict(state={}, expected_version=10**30), "expected_version", "whole number"),
    "expected_version of 5,000 digits": (dict(state={}, expected_version=10**5000), "expected_version", "not int"),
    "expected_version a list": (dict(state={}, expected_version=[1]), "expected_version", "list"),
}

BAD_IDS = {
    "NUL": "s\x00",
    "lone surrogate": "s\ud800",
    "newline": "s\n1",
    "DEL": "s\x7f",
    "C1 control": "s\x85",
    "65 characters": "s" * 65,
    "empty": "",
    "a colon": "a:b",
    "a hash tag": "{workbench:s}",
    "a glob": "s*",
    "a path": "../etc",
    "non-ASCII": "séance",
    "an int": 7,
    "None": None,
    "bytes": b"s1",
}


@pytest.mark.parametrize("case", BAD_SAVES)
def test_bad_save_arguments_raise_invalid_input_naming_the_field_and_store_nothing(store, unchanged, case):
    kwargs, field, fragment = BAD_SAVES[case]
    with unchanged(), pytest.raises(workbench.InvalidInput) as info:
        workbench.save("s1", **kwargs)
    assert info.value.field == field and fragment in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InvalidName)
    assert workbench.load("s1").state == {"n": 1}


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_session_ids_are_refused_by_every_call(store, unchanged, case):
    bad = BAD_IDS[case]
    with unchanged():
        for call in (lambda: workbench.save(bad, {}), lambda: workbench.load(bad), lambda: workbench.end(bad)):
            with pytest.raises(workbench.InvalidInput) as info:
                call()
            assert info.value.field == "session_id"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(owner="x\x00"), "owner"),
        (dict(owner="\ud800"), "owner"),
        (dict(limit="5"), "limit"),
        (dict(limit=None), "limit"),
        (dict(limit=2.5), "limit"),
        (dict(limit=True), "limit"),
    ],
)
def test_bad_history_arguments_are_refused(store, unchanged, kwargs, field):
    with unchanged(), pytest.raises(workbench.InvalidInput) as info:
        workbench.history(**kwargs)
    assert info.value.field == field


@pytest.fixture
def depth_five(hotcache_config):
    hotcache_config(WORKBENCH_MAX_DEPTH=5)


def test_a_state_at_exactly_the_depth_limit_is_kept(depth_five, store):
    workbench.save("s2", nested(5, kind=list))
    assert workbench.load("s2").state == nested(5, kind=list)
    with pytest.raises(workbench.InvalidInput, match="at most 5 are allowed"):
        workbench.save("s2", nested(6, kind=list))


def test_control_characters_and_nul_inside_state_strings_are_data_and_round_trip(store):
    state = {"cell": "a\x00b\n\tc\x1b[0m\x7f\x85", "\x00key": "é😀"}
    workbench.save("s2", state)
    assert workbench.load("s2").state == state


# --- over HTTP (the demo's workbench views) ---------------------------------------------------------------

DEEP_BODY = '{"state":' + '{"a":' * 1000 + "1" + "}" * 1000 + "}"
ARRAYS_BODY = '{"state":' + "[" * 100_000 + "]" * 100_000 + "}"

BAD_BODIES = {
    "state nested 1,000 deep (defect 4)": (DEEP_BODY, "state"),
    "state nested 100,000 deep": (ARRAYS_BODY, "state"),
    "owner nested deep": ('{"state": {}, "owner":' + "[" * 200 + "]" * 200 + "}", "owner"),
    "deep body under an odd key": ('{"x\\u0000":' + "[" * 200 + "]" * 200 + "}", "body"),
    "top-level array nested deep": ("[" * 200 + "]" * 200, "body"),
    "not JSON": ('{"state": {', "body"),
    "not UTF-8": (b'{"state": {"a": "\xff\xfe"}}', "body"),
    "a JSON array": ("[1, 2]", "body"),
    "a JSON string": ('"state"', "body"),
    "JSON null": ("null", "body"),
    "an integer literal of 5,000 digits": ('{"state": {"n": ' + "1" * 5000 + "}}", "body"),
    "state a string": ('{"state": "{}"}', "state"),
    "state null": ('{"state": null}', "state"),
    "state missing": ('{"owner": "alice"}', "state"),
    "state with a lone surrogate escape": ('{"state": {"t": "\\ud800"}}', "state"),
    "state with a lone surrogate key": ('{"state": {"\\udc00": 1}}', "state"),
    "state with an overflowing number": ('{"state": {"x": 1e999}}', "state"),
    "state with NaN": ('{"state": {"x": NaN}}', "state"),
    "owner an object": ('{"state": {}, "owner": {}}', "owner"),
    "owner with NUL": ('{"state": {}, "owner": "a\\u0000b"}', "owner"),
    "owner with a lone surrogate": ('{"state": {}, "owner": "\\ud800"}', "owner"),
    "owner false": ('{"state": {}, "owner": false}', "owner"),
    "expected_version a string": ('{"state": {}, "expected_version": "1"}', "expected_version"),
    "expected_version a float": ('{"state": {}, "expected_version": 1.5}', "expected_version"),
    "expected_version true": ('{"state": {}, "expected_version": true}', "expected_version"),
    "expected_version negative": ('{"state": {}, "expected_version": -3}', "expected_version"),
    "expected_version huge": ('{"state": {}, "expected_version": 1' + "0" * 40 + "}", "expected_version"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_save_bodies_answer_400_naming_the_field(client, store, unchanged, case):
    body, field = BAD_BODIES[case]
    with unchanged():
        response = client.post("/workbench/s1/save", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field and response.json()["error"]


def test_a_body_over_the_limit_answers_413_before_it_is_parsed(client, small_states, store, unchanged):
    body = '{"state": {"blob": "' + "x" * 10_000 + '"}}'
    with unchanged():
        response = client.post("/workbench/s1/save", body, content_type="application/json")
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_a_state_over_the_size_limit_within_the_body_limit_answers_400(client, small_states, store, unchanged):
    body = '{"state": {"blob": "' + "x" * 1500 + '"}}'
    with unchanged():
        response = client.post("/workbench/s1/save", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["field"] == "state"
    assert "WORKBENCH_MAX_STATE_BYTES" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/workbench/s%00/save",
        "/workbench/s%ED%A0%80/save",
        "/workbench/" + "s" * 65 + "/save",
        "/workbench/a:b/save",
        "/workbench/s%0A1/save",
        "/workbench/%C2%85/save",
    ],
)
def test_bad_session_ids_in_the_path_answer_400(client, store, unchanged, path):
    with unchanged():
        response = client.post(path, '{"state": {}}', content_type="application/json")
    assert response.status_code == 400 and response.json()["field"] == "session_id"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/workbench/s1/save"),
        ("DELETE", "/workbench/s1/save"),
        ("PATCH", "/workbench/s1/edit"),
        ("GET", "/workbench/s1/save"),
        ("OPTIONS", "/workbench/s1/end"),
        ("GET", "/workbench/s1/end"),
        ("POST", "/workbench/s1/"),
        ("DELETE", "/workbench/s1/"),
        ("TRACE", "/workbench/s1/"),
        ("BREW", "/workbench/s1/save"),
        ("PROPFIND", "/workbench/s1/edit"),
    ],
)
def test_odd_methods_answer_405_with_allow_and_change_nothing(client, store, unchanged, method, path):
    with unchanged():
        response = client.generic(method, path, '{"state": {"evil": true}}', content_type="application/json")
    assert response.status_code == 405 and response.json()["field"] == "method" and response["Allow"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ('{"cell": 5}', 400, "cell"),
        ('{"cell": ["x"]}', 400, "cell"),
        ('{"cell": "\\ud800"}', 400, "cell"),
        ('{"cell": ' + "[" * 200 + "]" * 200 + "}", 400, "cell"),
        ("{", 400, "body"),
        ("[]", 400, "body"),
    ],
)
def test_bad_edit_bodies_answer_4xx_naming_the_field(client, store, unchanged, body, status, field):
    with unchanged():
        response = client.post("/workbench/s1/edit", body, content_type="application/json")
    assert response.status_code == status and response.json()["field"] == field


def test_an_edit_whose_cell_would_overflow_the_state_answers_400_naming_the_cell(client, small_states, store):
    response = client.post("/workbench/s1/edit", '{"cell": "' + "x" * 1500 + '"}', content_type="application/json")
    assert response.status_code == 400 and response.json()["field"] == "cell"
    assert workbench.load("s1").state == {"n": 1}


def test_an_edit_of_a_state_with_unexpected_shapes_does_not_fail(client, store):
    workbench.save("odd", {"edits": "many", "cells": {"not": "a list"}})
    response = client.post("/workbench/odd/edit", '{"cell": "x = 1"}', content_type="application/json")
    assert response.status_code == 200 and response.json()["edits"] == 1
    assert workbench.load("odd").state == {"edits": 1, "cells": ["x = 1"]}


def test_the_views_still_do_their_work(client, store):
    response = client.post(
        "/workbench/s2/save",
        '{"state": {"n": 1}, "owner": "bob", "expected_version": 0}',
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json() == {"version": 1}
    assert client.post("/workbench/s2/edit", '{"cell": "x"}', content_type="application/json").json()["edits"] == 1
    assert client.get("/workbench/s2/").json()["state"] == {"n": 1, "edits": 1, "cells": ["x"]}
    assert client.head("/workbench/s2/").status_code == 200
    assert client.post("/workbench/s2/end").json() == {"ended": True}
    assert client.get("/workbench/s2/").status_code == 404


# --- a tampered Redis -----------------------------------------------------------------------------------------
# Every record a process acts on is sealed: an edited, swapped, truncated or retyped record is absent. It is
# replaced by its durable copy (or refused without one), counted as ev:workbench:tampered, and no value the
# attacker wrote is ever returned, persisted to history or the basis of a write.


def forge(raw, **changes):
    """The envelope with some fields changed, under its old (now wrong) signature."""
    signature, body = raw.split(b".", 1)
    fields = json.loads(body)
    fields.update(changes)
    return signature + b"." + json.dumps(fields, separators=(",", ":")).encode()


def replace_key(r, key, kind):
    r.delete(key)
    {
        "string": lambda: r.set(key, "mallory"),
        "list": lambda: r.rpush(key, "mallory"),
        "zset": lambda: r.zadd(key, {"mallory": 1}),
    }[kind]()


def swap(r, a, b):
    first, second = r.hgetall(a), r.hgetall(b)
    r.delete(a, b)
    r.hset(a, mapping=second)
    r.hset(b, mapping=first)


EVIL = '{"owner":"mallory","evil":true}'

TAMPER_SESSION = {
    "owner flipped": lambda r, k: r.hset(k, "m", forge(r.hget(k, "m"), o="mallory")),
    "version flipped": lambda r, k: r.hset(k, "m", forge(r.hget(k, "m"), v=99)),
    "incarnation token flipped": lambda r, k: r.hset(k, "m", forge(r.hget(k, "m"), g="000000000000")),
    "state replaced": lambda r, k: r.hset(k, "s", EVIL),
    "state and its digest replaced": lambda r, k: (
        r.hset(k, "s", EVIL),
        r.hset(k, "m", forge(r.hget(k, "m"), h=hashlib.sha256(EVIL.encode()).hexdigest())),
    ),
    "envelope truncated": lambda r, k: r.hset(k, "m", r.hget(k, "m")[:-7]),
    "signature stripped": lambda r, k: r.hset(k, "m", r.hget(k, "m").split(b".", 1)[1]),
    "non-ASCII signature": lambda r, k: r.hset(k, "m", "é".encode() * 32 + b"." + r.hget(k, "m").split(b".", 1)[1]),
    "envelope not UTF-8": lambda r, k: r.hset(k, "m", b"\xff\xfe" + r.hget(k, "m")),
    "envelope a JSON value": lambda r, k: r.hset(k, "m", b"[1, 2, 3]"),
    "envelope huge": lambda r, k: r.hset(k, "m", b"0" * 64 + b"." + b"[" * 500_000),
    "envelope removed": lambda r, k: r.hdel(k, "m"),
    "envelope empty": lambda r, k: r.hset(k, "m", b""),
    "envelope sealed for another session": lambda r, k: r.hset(
        k, "m", signing.seal_json("workbench.session", _layout._data_key("s2"), {"v": 1, "o": "mallory"})
    ),
    "replaced by a string": lambda r, k: replace_key(r, k, "string"),
    "replaced by a list": lambda r, k: replace_key(r, k, "list"),
    "replaced by a sorted set": lambda r, k: replace_key(r, k, "zset"),
    "swapped with another session": lambda r, k: swap(r, k, _layout._data_key("s2")),
}


@pytest.fixture
def two_sessions():
    """s1 (alice, {"n": 1}, v2) and s2 (bob, {"n": 2}); both in Redis and, by default, durable in MongoDB."""
    workbench.save("s1", {"n": 0}, owner="alice")
    workbench.save("s1", {"n": 1})
    workbench.save("s2", {"n": 2}, owner="bob")


def tampered_count():
    return metering.snapshot().get("ev:workbench:tampered", 0)


def assert_nothing_of_mallory(*values):
    text = repr(values)
    assert "mallory" not in text and "evil" not in text, text


def history_docs():
    return mongo.collection(workbench.HISTORY, feature="test").find({})


@pytest.mark.parametrize("case", TAMPER_SESSION)
def test_a_tampered_session_is_served_from_its_durable_copy(raw_redis, two_sessions, case):
    TAMPER_SESSION[case](raw_redis, _layout._data_key("s1"))
    new_process()  # another process: it never saw s1
    s1, s2 = workbench.load("s1"), workbench.load("s2")
    assert (s1.state, s1.owner, s1.version) == ({"n": 1}, "alice", 2)
    assert (s2.state, s2.owner, s2.version) == ({"n": 2}, "bob", 1)
    assert tampered_count() >= 1
    # Repaired in Redis: the next load is one round trip and counts nothing.
    before = tampered_count()
    with count_redis() as c:
        assert workbench.load("s1").state == {"n": 1}
    assert c.round_trips == 1 and c.mongo_ops == 0 and tampered_count() == before


@pytest.mark.parametrize("case", TAMPER_SESSION)
def test_a_save_over_a_tampered_session_decides_on_the_durable_copy(raw_redis, two_sessions, case):
    TAMPER_SESSION[case](raw_redis, _layout._data_key("s1"))
    with pytest.raises(workbench.OwnerConflict):
        workbench.save("s1", {"evil": True}, owner="mallory")
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {"evil": True}, expected_version=99)
    assert workbench.save("s1", {"n": 3}, expected_version=2) == 3
    session = workbench.load("s1")
    assert (session.state, session.owner, session.version) == ({"n": 3}, "alice", 3)
    # A replaced state under an intact envelope is overwritten by the save without being read: nothing to count.
    assert tampered_count() >= (0 if case == "state replaced" else 1)
    workbench.end("s1")
    workbench.end("s2")
    assert workbench.persist().errors == []
    assert_nothing_of_mallory(history_docs(), workbench.history())
    assert {(e.session_id, e.owner, e.version) for e in workbench.history()} == {("s1", "alice", 3), ("s2", "bob", 1)}


@pytest.mark.parametrize("case", ["owner flipped", "state replaced", "replaced by a string", "envelope removed"])
def test_without_a_durable_copy_a_tampered_session_is_refused(raw_redis, hotcache_config, case):
    hotcache_config(WORKBENCH_DURABLE_SAVES=False)
    workbench.save("s1", {"n": 1}, owner="alice")
    workbench.save("s2", {"n": 2}, owner="bob")
    TAMPER_SESSION[case](raw_redis, _layout._data_key("s1"))
    assert workbench.load("s1") is None
    assert not raw_redis.exists(_layout._data_key("s1"))  # deleted, not left to be trusted later
    assert workbench.end("s1") is False
    with pytest.raises(workbench.Conflict):
        workbench.save("s1", {}, expected_version=1)  # as for a session that does not exist
    assert tampered_count() == 1
    assert workbench.load("s2").state == {"n": 2}


@pytest.mark.parametrize(
    "case", ["owner flipped", "state replaced", "replaced by a list", "swapped with another session"]
)
def test_end_of_a_tampered_session_ends_its_durable_copy(raw_redis, two_sessions, case):
    TAMPER_SESSION[case](raw_redis, _layout._data_key("s1"))
    assert workbench.end("s1") is True
    assert workbench.load("s1") is None
    result = workbench.persist()
    assert result.errors == []
    assert_nothing_of_mallory(history_docs())
    [entry] = [e for e in workbench.history() if e.session_id == "s1"]
    assert (entry.state, entry.owner, entry.version, entry.reason) == ({"n": 1}, "alice", 2, "ended")
    assert workbench.load("s2").state == {"n": 2} or case == "swapped with another session"


@pytest.mark.parametrize("case", ["owner flipped", "state replaced", "replaced by a string", "envelope truncated"])
def test_an_idle_tampered_session_reaches_history_from_its_durable_copy(raw_redis, clock, two_sessions, case):
    TAMPER_SESSION[case](raw_redis, _layout._data_key("s1"))
    clock.advance(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER + 1)
    result = workbench.persist()
    assert result.errors == [] and result.tampered == 1 and result.idle == 1 and result.from_fallback == 1
    assert not raw_redis.exists(_layout._data_key("s1"))
    assert_nothing_of_mallory(history_docs())
    entries = {e.session_id: e for e in workbench.history()}
    assert (entries["s1"].state, entries["s1"].owner, entries["s1"].reason) == ({"n": 1}, "alice", "idle")
    assert entries["s2"].state == {"n": 2}


def ended_keys(raw_redis, key_prefix, session_id):
    return [k for k in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*}}:e:{session_id}:*")]


TAMPER_ENDED = {
    "owner flipped": lambda r, k, other: r.hset(k, "m", forge(r.hget(k, "m"), o="mallory")),
    "state replaced": lambda r, k, other: r.hset(k, "s", EVIL),
    "end time replaced": lambda r, k, other: r.hset(k, "e", b"0" * 64 + b'.{"e":0}'),
    "end record removed": lambda r, k, other: r.hdel(k, "e"),
    "end records swapped": lambda r, k, other: (lambda a, b: (r.hset(k, "e", b), r.hset(other, "e", a)))(
        r.hget(k, "e"), r.hget(other, "e")
    ),
    "envelope removed": lambda r, k, other: r.hdel(k, "m"),
    "replaced by a string": lambda r, k, other: replace_key(r, k, "string"),
}


@pytest.mark.parametrize("case", TAMPER_ENDED)
def test_a_tampered_ended_session_never_reaches_history(raw_redis, key_prefix, two_sessions, case):
    workbench.end("s1")
    workbench.end("s2")
    [k1], [k2] = ended_keys(raw_redis, key_prefix, "s1"), ended_keys(raw_redis, key_prefix, "s2")
    TAMPER_ENDED[case](raw_redis, k1, k2)
    result = workbench.persist()
    assert result.errors == [] and (result.tampered, result.ended) == ((2, 0) if "swapped" in case else (1, 1))
    assert_nothing_of_mallory(history_docs(), workbench.history())
    entries = [(e.session_id, e.owner, e.state) for e in workbench.history()]
    assert ("s2", "bob", {"n": 2}) in entries or case == "end records swapped"
    assert not raw_redis.exists(k1)  # dropped from Redis, not retried forever
    assert workbench.persist().persisted == 0


def test_members_hotcache_never_queued_are_dropped_from_the_queues(raw_redis, clock, two_sessions):
    now = hotcache_clock.time()
    # The ended queue holds "<id>:<end token>", the index ids; the claim prefixes them with "e:" and "i:".
    raw_redis.zadd(
        _layout._ended_queue(),
        {"garbage": now, b"\xff\xfe": now, "../x:tok": now, "s9:t-1": now, "s9:" + "t" * 65: now, "nobody:abc123": now},
    )
    raw_redis.zadd(_layout._index_key(), {"../x": 0, b"\xff": 0, "i:": 0, "a" * 65: 0})
    result = workbench.persist()
    assert result.errors == [] and result.tampered == 9 and result.missing == 1  # nobody:abc123 was never there
    assert raw_redis.zcard(_layout._claims_key()) == 0
    assert workbench.load("s1").state == {"n": 1} and tampered_count() >= 1


@pytest.mark.parametrize("fence", ["forged", "hash", signing.seal("workbench.fence", "elsewhere", "0123")])
def test_a_fence_hotcache_did_not_raise_is_lowered(raw_redis, two_sessions, fence):
    key = _layout._fence_key(_layout._bucket("s1"))  # the fence of s1's bucket (the only one with KEY_BUCKETS=1)
    if fence == "hash":
        raw_redis.hset(key, "x", "1")
    else:
        raw_redis.set(key, fence)
    new_process()
    assert workbench.load("s1").state == {"n": 1}
    assert not raw_redis.exists(key) and tampered_count() == 1
    assert workbench.save("s1", {"n": 2}, expected_version=2) == 3
    with count_redis() as c:
        assert workbench.load("s2").state == {"n": 2}
    assert c.round_trips == 1 and c.mongo_ops == 0


def test_after_an_outage_a_tampered_redis_copy_yields_to_the_outage_version(redis_proxy, clock, raw_redis):
    workbench.save("s1", {"n": 1}, owner="alice")
    redis_proxy.down()
    assert workbench.save("s1", {"n": 2}, expected_version=1) == 2  # on MongoDB
    TAMPER_SESSION["owner flipped"](raw_redis, _layout._data_key("s1"))
    redis_proxy.up()
    clock.advance(10)
    session = workbench.load("s1")
    assert (session.state, session.owner, session.version) == ({"n": 2}, "alice", 2)
    assert tampered_count() == 1
    assert workbench.persist().errors == []


def test_the_persister_repairs_a_tampered_copy_while_reconciling(redis_proxy, clock, raw_redis):
    workbench.save("s1", {"n": 1}, owner="alice")
    redis_proxy.down()
    workbench.save("s1", {"n": 2}, expected_version=1)
    redis_proxy.up()
    clock.advance(10)
    TAMPER_SESSION["owner flipped"](raw_redis, _layout._data_key("s1"))
    result = workbench.persist()
    assert result.reconciled == 1 and result.errors == [] and tampered_count() == 1
    session = workbench.load("s1")
    assert (session.state, session.owner) == ({"n": 2}, "alice")


@pytest.mark.parametrize("name", ["_index_key", "_ended_queue", "_claims_key", "_owners_key"])
def test_a_retyped_shared_key_sends_sessions_to_the_fallback_until_the_persister_deletes_it(
    raw_redis, clock, two_sessions, name
):
    key = getattr(_layout, name)(_layout._bucket("s2"))  # in the bucket of s2 (the only one with KEY_BUCKETS=1)
    raw_redis.delete(key)
    raw_redis.set(key, "mallory")
    assert workbench.load("s1").state == {"n": 1}  # from Redis, or from the durable copy: never an error
    assert workbench.end("s2") is True
    result = workbench.persist()  # fails on the key, then deletes it
    assert result.errors and result.tampered == 1 and raw_redis.type(key) != b"string" and tampered_count() == 1
    assert workbench.persist().errors == []
    assert workbench.save("s1", {"n": 2}) == 3
    assert workbench.end("s1") is True
    clock.advance(hotcache_settings.WORKBENCH_CLAIM_TIMEOUT + 1)  # what the failed run had claimed
    assert workbench.persist().errors == []
    assert sorted((e.session_id, e.state["n"]) for e in workbench.history()) == [("s1", 2), ("s2", 2)]


@pytest.mark.parametrize("case", ["owner flipped", "state and its digest replaced", "replaced by a string"])
def test_over_http_a_tampered_session_answers_with_its_durable_copy_never_a_500(client, raw_redis, two_sessions, case):
    TAMPER_SESSION[case](raw_redis, _layout._data_key("s1"))
    new_process()
    response = client.get("/workbench/s1/")
    assert response.status_code == 200 and response.json() == {"version": 2, "state": {"n": 1}}
    response = client.post(
        "/workbench/s1/save", '{"state": {"evil": true}, "owner": "mallory"}', content_type="application/json"
    )
    assert response.status_code == 409 and response.json()["field"] == "owner"
    response = client.post("/workbench/s1/edit", '{"cell": "x"}', content_type="application/json")
    assert response.status_code == 200 and response.json() == {"version": 3, "edits": 1}
    assert client.post("/workbench/s1/end").json() == {"ended": True}
    assert tampered_count() >= 1
    workbench.persist()
    assert_nothing_of_mallory(history_docs())


@pytest.mark.parametrize("value", [b"soon", b"", b"\xff\xfe", b"1e400", b"nan", b"-inf", b"99999999999999"], ids=repr)
def test_a_tampered_refresh_time_only_brings_the_refresh_forward(value, raw_redis, clock):
    """Field t (the last lifetime refresh) is not signed: a value written there can only make the next save or
    load renew the session's lifetime at once, never keep it from being renewed or fail a call."""
    key = _layout._data_key("s1")
    workbench.save("s1", {"n": 1})
    for step in ("load", "save"):
        raw_redis.hset(key, "t", value)
        raw_redis.expire(key, 10)
        if step == "load":
            assert workbench.load("s1").state == {"n": 1}
        else:
            assert workbench.save("s1", {"n": 2}, expected_version=1) == 2
        assert raw_redis.ttl(key) > hotcache_settings.WORKBENCH_IDLE_TIMEOUT
        assert float(raw_redis.hget(key, "t")) == pytest.approx(hotcache_clock.time())
