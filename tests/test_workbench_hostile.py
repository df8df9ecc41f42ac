"""Workbench sessions under hostile input (issue 13): through the public API and the demo's HTTP views, with Redis up
and with Redis down, every refusal is the documented error naming the field (InvalidInput, a ValueError; a JSON 4xx
over HTTP, never a 500) and leaves both stores exactly as they were."""

import math

import pytest

from hotcache import workbench
from hotcache.backends import mongo
from hotcache.exceptions import InvalidName

pytestmark = pytest.mark.urls("hotcache.demo.urls")


@pytest.fixture(autouse=True)
def _clean_workbench_keys(raw_redis, key_prefix):
    for key in raw_redis.scan_iter(match=f"{key_prefix}:{{workbench:*"):
        raw_redis.unlink(key)


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
    ["/workbench/s%00/save", "/workbench/s%ED%A0%80/save", "/workbench/" + "s" * 65 + "/save", "/workbench/a:b/save",
     "/workbench/s%0A1/save", "/workbench/%C2%85/save"],
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
    response = client.post("/workbench/s2/save", '{"state": {"n": 1}, "owner": "bob", "expected_version": 0}',
                           content_type="application/json")
    assert response.status_code == 200 and response.json() == {"version": 1}
    assert client.post("/workbench/s2/edit", '{"cell": "x"}', content_type="application/json").json()["edits"] == 1
    assert client.get("/workbench/s2/").json()["state"] == {"n": 1, "edits": 1, "cells": ["x"]}
    assert client.head("/workbench/s2/").status_code == 200
    assert client.post("/workbench/s2/end").json() == {"ended": True}
    assert client.get("/workbench/s2/").status_code == 404
