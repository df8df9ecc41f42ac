"""Analytics under attack: hostile input never gives a 500 or an unbounded store, with Redis up or down; the
outage path keeps the Redis path's bounds; every Redis record the feature acts on is authenticated."""

import datetime as dt

import pytest

from hotcache import analytics, metering, recovery, signing
from hotcache import clock as hc_clock
from hotcache.analytics import _fallback, _hot, _keys, _sync
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName
from tests.analytics.fixtures import _empty_fallback_buffer, analytics_keys, hourly_docs, hourly_total  # noqa: F401

# Tampering and upgrades are checked on the single-tag keys ({analytics:a}), on every Redis target; the
# spread layouts run the same scripts per bucket (tests/contracts/test_bucket_walks.py).
pytestmark = pytest.mark.usefixtures("single_tag_layout")

def _slots():
    return mongo.collection(analytics.SLOTS, feature="test")


# --- outage bounds ---------------------------------------------------------------------------------


def test_redis_down_three_thousand_paths_give_at_most_cap_plus_one_documents(redis_down, hotcache_config, clock):
    """The issue's proof: Redis down, 3,000 distinct paths in one hour, cap 500 -> at most 501 documents."""
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=500)
    outcomes = [analytics.track("page_view", path=f"/item/{i}") for i in range(3000)]
    analytics.flush_fallback()
    assert outcomes == ["fallback"] * 3000  # folding keeps the buffer small: nothing dropped
    docs = hourly_docs()
    assert len(docs) <= 501
    assert hourly_total() == 3000
    other = [d for d in docs if d["path"] == analytics.OVERFLOW]
    assert len(other) == 1 and other[0]["count"] == 3000 - 500


def test_the_cap_holds_across_processes_and_flushes(redis_down, hotcache_config, clock):
    """Three processes (three buffers) flushing small batches of new paths of one hour share the hour's slots."""
    hotcache_config(
        ANALYTICS_MAX_COUNTERS_PER_HOUR=500, ANALYTICS_FALLBACK_BUFFER_SIZE=64, ANALYTICS_FALLBACK_FLUSH_INTERVAL=3600
    )
    buffers = [_fallback.FallbackBuffer() for _ in range(3)]
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    for i in range(1500):
        for j, buffer in enumerate(buffers):
            assert buffer.add((hour, "page_view", f"/w{j}/{i}"), 1) == "fallback"
    for buffer in buffers:
        buffer.flush()
    docs = hourly_docs()
    assert len(docs) <= 501 and hourly_total() == 4500
    assert len([d for d in docs if d["path"] != analytics.OVERFLOW]) <= 500


def test_many_event_names_during_an_outage_stay_within_cap_plus_slack_plus_one(redis_down, hotcache_config, clock):
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=20, ANALYTICS_FALLBACK_BUFFER_SIZE=50)
    for i in range(2000):
        analytics.track(f"e{i % 300}", path=f"/p{i}")
    analytics.flush_fallback()
    docs = hourly_docs()
    assert len(docs) <= 20 + 100 + 1 and hourly_total() == 2000
    assert [d["count"] for d in docs if d["event"] == analytics.OVERFLOW]  # the global counter took the rest


def test_paths_that_already_have_a_document_need_no_new_slot(redis_down, hotcache_config, clock):
    """Flushing the same few paths over and over does not use up the hour's cap."""
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=5)
    for _ in range(20):
        for p in range(5):
            analytics.track("signup", path=f"/p{p}")
        analytics.flush_fallback()
    docs = hourly_docs()
    assert sorted(d["path"] for d in docs) == [f"/p{p}" for p in range(5)] and hourly_total() == 100


def test_a_retried_flush_sends_the_same_folded_counters(redis_down, hotcache_config, monkeypatch, clock):
    """Slots are taken once per flush id: a flush whose bulk write failed is retried without folding again."""
    from tests.analytics.fixtures import lose_ack_of_bulk_call

    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=3)
    for i in range(10):
        analytics.track("signup", path=f"/p{i}")
    lose_ack_of_bulk_call(monkeypatch, nth=1)
    assert analytics.flush_fallback() == 0
    monkeypatch.undo()
    assert analytics.flush_fallback() == 4  # three paths and the event's (other): the same operations again
    assert hourly_total() == 10 and len(hourly_docs()) == 4


def test_the_outage_path_drops_counters_past_the_retention_like_redis_expires_them(
    redis_down, hotcache_config, clock
):
    hotcache_config(ANALYTICS_RETENTION_HOURS=48)
    with mongo.inject_failures():
        analytics.track("signup", path="/a", count=3)
        analytics.flush_fallback()  # MongoDB down as well: kept
    clock.advance(49 * 3600)
    before = metering.snapshot()["ev:analytics:dropped"]
    assert analytics.flush_fallback() == 0
    assert metering.snapshot()["ev:analytics:dropped"] - before == 3 and hourly_total() == 0
    assert not _fallback.buffer.has_data()


def test_the_slot_registry_expires_after_the_retention(redis_down, clock):
    analytics.track("signup", path="/a")
    analytics.flush_fallback()
    (doc,) = _slots().find({})
    hour = hc_clock.utcnow().replace(minute=0, second=0, microsecond=0)
    assert doc["expires"] - hour == dt.timedelta(hours=168 + 2)
    assert any(i.get("expireAfterSeconds") == 0 for i in _slots().index_information().values())


# --- hostile input: the public API, Redis up and down ----------------------------------------------


@pytest.fixture(params=["redis_up", "redis_down"])
def redis_state(request):
    """Each hostile-input case runs with Redis up and with Redis down (the outage path has the same boundary)."""
    if request.param == "redis_down":
        request.getfixturevalue("redis_down")
    return request.param


def _store_is_unchanged(raw_redis, key_prefix):
    """Nothing counted anywhere: no analytics key in Redis, nothing buffered, no MongoDB document."""
    assert analytics_keys(raw_redis, key_prefix) == []
    assert not _fallback.buffer.has_data() and not _hot.doubts
    assert hourly_docs() == []


_deep = []
for _ in range(5000):
    _deep = [_deep]

BAD_TRACK_CALLS = {
    # the issue's named cases
    "lone surrogate in path": (dict(path="\ud800"), "path"),
    "lone surrogate after a valid path": (dict(path="/x\ud800"), "path"),
    "lone low surrogate in path": (dict(path="/\udfff/a"), "path"),
    "half an emoji in path": (dict(path="/\ud83d"), "path"),
    "lone surrogate in visitor_id": (dict(visitor_id="v\udc80"), "visitor_id"),
    "lone surrogate in user_id": (dict(user_id="\ud800"), "user_id"),
    "NUL in path": (dict(path="/a\x00b"), "path"),
    "NUL alone as path": (dict(path="\x00"), "path"),
    "NUL in visitor_id": (dict(visitor_id="\x00"), "visitor_id"),
    "newline in path": (dict(path="/a\nb"), "path"),
    "CRLF header injection in path": (dict(path="/a\r\nSet-Cookie: x=1"), "path"),
    "tab in path": (dict(path="/a\tb"), "path"),
    "DEL in path": (dict(path="/a\x7f"), "path"),
    "C1 control in path": (dict(path="/a\x85"), "path"),
    "ANSI escape in visitor_id": (dict(visitor_id="\x1b[31mred"), "visitor_id"),
    "control character in user_id": (dict(user_id="u\x07"), "user_id"),
    "over-long path": (dict(path="/" + "a" * analytics.MAX_RAW_PATH_LENGTH), "path"),
    "huge path (1 MB)": (dict(path="/" + "a" * 1_000_000), "path"),
    "over-long visitor_id": (dict(visitor_id="v" * 129), "visitor_id"),
    "over-long user_id": (dict(user_id="u" * 129), "user_id"),
    "deeply nested path": (dict(path=_deep), "path"),
    # wrong types
    "path as int": (dict(path=5), "path"),
    "path as bytes": (dict(path=b"/a"), "path"),
    "path as bytearray": (dict(path=bytearray(b"/a")), "path"),
    "path as a NoSQL operator dict": (dict(path={"$gt": ""}), "path"),
    "path as tuple": (dict(path=("/a",)), "path"),
    "path as NaN": (dict(path=float("nan")), "path"),
    "path as bool": (dict(path=True), "path"),
    "visitor_id as int": (dict(visitor_id=5), "visitor_id"),
    "visitor_id as bytes": (dict(visitor_id=b"v"), "visitor_id"),
    "visitor_id as list": (dict(visitor_id=["v"]), "visitor_id"),
    "user_id as float": (dict(user_id=1.5), "user_id"),
    "user_id as bool": (dict(user_id=True), "user_id"),
    "user_id as list": (dict(user_id=[1]), "user_id"),
    "user_id as object": (dict(user_id=object()), "user_id"),
    "user_id past 64 bits": (dict(user_id=2**64), "user_id"),
    "user_id below -2**63": (dict(user_id=-(2**63) - 1), "user_id"),
    "user_id with 5000 digits": (dict(user_id=10**4999), "user_id"),
    "empty string user_id": (dict(user_id=""), "user_id"),
    # event names
    "event with a lone surrogate": (dict(event="ok\ud800"), "event"),
    "event with NUL": (dict(event="ok\x00"), "event"),
    "event with a trailing newline": (dict(event="ok\n"), "event"),
    "event in upper case": (dict(event="Page_View"), "event"),
    "event with a Cyrillic homoglyph": (dict(event="p\u0430ge_view"), "event"),
    "event named like the overflow bucket": (dict(event=analytics.OVERFLOW), "event"),
    "event with a key separator": (dict(event="a:b"), "event"),
    "event with a glob": (dict(event="a*"), "event"),
    "event as bytes": (dict(event=b"ok"), "event"),
    "over-long event": (dict(event="e" * 65), "event"),
    "event as None": (dict(event=None), "event"),
}


@pytest.mark.parametrize("case", BAD_TRACK_CALLS, ids=list(BAD_TRACK_CALLS))
def test_hostile_track_arguments_raise_invalidname_naming_the_field(case, redis_state, raw_redis, key_prefix, clock):
    kwargs, field = BAD_TRACK_CALLS[case]
    kwargs = {"event": "ok", **kwargs}
    event = kwargs.pop("event")
    with pytest.raises(InvalidName, match=field):
        analytics.track(event, **kwargs)
    _store_is_unchanged(raw_redis, key_prefix)


@pytest.mark.parametrize("count", [0, -1, 1.0, "1", None, True, 2**64, 10**7, float("inf")])
def test_hostile_counts_raise_valueerror(count, redis_state, raw_redis, key_prefix, clock):
    with pytest.raises(ValueError, match="count"):
        analytics.track("ok", path="/a", count=count)
    _store_is_unchanged(raw_redis, key_prefix)


def test_odd_but_valid_text_is_counted_percent_encoded(redis_state, clock):
    """Not everything unusual is hostile: a line separator, an emoji, RTL marks are text and get encoded."""
    for path in ["/a\u2028b", "/\U0001f600", "/\u202eevil", "/\ufeff", "/%00", "/%ZZ"]:
        assert analytics.track("ok", path=path, user_id="\u00e9l\u00e8ve") in ("redis", "fallback")
    analytics.flush_fallback()
    now = hc_clock.utcnow()
    rep = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    paths = sorted(p for p, _ in rep.top_paths)
    if redis_state == "redis_down":
        paths = sorted(d["path"] for d in hourly_docs())
    assert paths == sorted(["/a%E2%80%A8b", "/%F0%9F%98%80", "/%E2%80%AEevil", "/%EF%BB%BF", "/%00", "/%ZZ"])


# --- hostile input: HTTP, Redis up and down --------------------------------------------------------

URL = "/hotcache/analytics/track"

BAD_BEACONS = {
    # the issue's example, as JSON text (an escaped lone surrogate is valid JSON)
    "lone surrogate in path": (b'{"event":"ok","path":"/x\\ud800"}', 400, "path"),
    "lone surrogate in visitor_id": (b'{"event":"ok","visitor_id":"\\udfff"}', 400, "visitor_id"),
    "lone surrogate in event": (b'{"event":"ok\\ud800"}', 400, "event"),
    "NUL in path": (b'{"event":"ok","path":"/a\\u0000"}', 400, "path"),
    "escape character in visitor_id": (b'{"event":"ok","visitor_id":"\\u001b[2J"}', 400, "visitor_id"),
    "CRLF in path": (b'{"event":"ok","path":"/a\\r\\nX: y"}', 400, "path"),
    "over-long visitor_id": (('{"event":"ok","visitor_id":"%s"}' % ("v" * 129)).encode(), 400, "visitor_id"),
    "path as number": (b'{"event":"ok","path":5}', 400, "path"),
    "path as infinity": (b'{"event":"ok","path":1e999}', 400, "path"),
    "path as object": (b'{"event":"ok","path":{"$ne":null}}', 400, "path"),
    "path as array": (b'{"event":"ok","path":["/a"]}', 400, "path"),
    "path as bool": (b'{"event":"ok","path":true}', 400, "path"),
    "visitor_id as object": (b'{"event":"ok","visitor_id":{}}', 400, "visitor_id"),
    "event as NaN": (b'{"event":NaN}', 400, "event"),
    "event as bool": (b'{"event":true}', 400, "event"),
    "event as object": (b'{"event":{"a":1}}', 400, "event"),
    "duplicate key, the last one bad": (b'{"event":"ok","event":"a b"}', 400, "event"),
    "nested path array": (b'{"event":"ok","path":' + b"[" * 500 + b"]" * 500 + b"}", 400, "path"),
    "nesting too deep to parse": (b"[" * 4000 + b"]" * 4000, 400, "body"),
    "body is null": (b"null", 400, "body"),
    "body is a number": (b"1", 400, "body"),
    "body is a string": (b'"ok"', 400, "body"),
    "body is empty": (b"", 400, "body"),
    "body is not UTF-8": (b'{"event":"\xff\xfe"}', 400, "body"),
    "huge body (100 kB)": (b'{"event":"ok","path":"/' + b"a" * 100_000 + b'"}', 400, "body"),
    "trailing garbage": (b'{"event":"ok"} {"event":"x"}', 400, "body"),
}


def _post(client, body, content_type="application/json", **extra):
    return client.generic("POST", URL, body, content_type=content_type, **extra)


@pytest.mark.parametrize("case", BAD_BEACONS, ids=list(BAD_BEACONS))
def test_hostile_beacons_get_a_4xx_naming_the_field(case, client, redis_state, raw_redis, key_prefix, clock):
    body, status, field = BAD_BEACONS[case]
    before = metering.snapshot()["ev:analytics:rejected"]
    resp = _post(client, body)
    assert resp.status_code == status
    assert resp.json()["field"] == field and resp.json()["error"]
    assert metering.snapshot()["ev:analytics:rejected"] == before + 1
    _store_is_unchanged(raw_redis, key_prefix)


def test_an_over_long_path_under_a_raised_body_cap_is_refused(client, hotcache_config, redis_state, raw_redis,
                                                              key_prefix, clock):
    hotcache_config(ANALYTICS_TRACK_MAX_BODY=20_000)
    resp = _post(client, ('{"event":"ok","path":"/%s"}' % ("a" * analytics.MAX_RAW_PATH_LENGTH)).encode())
    assert resp.status_code == 400 and resp.json()["field"] == "path"
    _store_is_unchanged(raw_redis, key_prefix)


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "text/html", "application/xml",
     "application/octet-stream", "image/png"],
)
def test_other_content_types_get_415(content_type, client, redis_state, raw_redis, key_prefix, clock):
    resp = _post(client, b'{"event":"ok"}', content_type=content_type)
    assert resp.status_code == 415 and resp.json()["field"] == "content_type"
    _store_is_unchanged(raw_redis, key_prefix)


@pytest.mark.parametrize("content_type", ["text/plain;charset=UTF-8", "application/json; charset=utf-8",
                                          "application/vnd.api+json"])
def test_beacon_content_types_are_accepted(content_type, client, clock):
    assert _post(client, b'{"event":"ok"}', content_type=content_type).status_code == 204


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "BREW"])
def test_odd_methods_get_405(method, client, redis_state, raw_redis, key_prefix, clock):
    resp = client.generic(method, URL, b'{"event":"ok"}', content_type="application/json")
    assert resp.status_code == 405 and resp["Allow"] == "POST"
    _store_is_unchanged(raw_redis, key_prefix)


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "99999999999999999999999"])
def test_bad_content_lengths_get_400(length, client, redis_state, raw_redis, key_prefix, clock):
    resp = _post(client, b'{"event":"ok"}', CONTENT_LENGTH=length)
    assert resp.status_code == 400 and resp.json()["field"] == "body"
    _store_is_unchanged(raw_redis, key_prefix)


def test_the_beacon_from_the_issue_is_a_400_not_a_500_with_redis_up_and_down(client, redis_state, clock):
    resp = _post(client, b'{"event":"ok","path":"/x\\ud800"}')
    assert resp.status_code == 400 and resp.json() == {
        "error": resp.json()["error"],
        "field": "path",
    } and "U+D800" in resp.json()["error"]


@pytest.mark.parametrize("path", ["/a%0Ab", "/%00", "/%FF%FE", "/a%E2%80%A8", "/" + "x" * 9000, "/%ED%A0%80"])
def test_the_middleware_never_turns_a_page_into_an_error(path, redis_state, clock):
    """Django decodes %XX in path_info: the middleware re-escapes it instead of handing track() a NUL."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    middleware = analytics.AnalyticsMiddleware(lambda request: HttpResponse("ok"))
    request = RequestFactory().get(path, HTTP_USER_AGENT="Mozilla/5.0 \x85\u00e9" + "x" * 500)
    assert middleware(request).status_code == 200
    analytics.flush_fallback()
    now = hc_clock.utcnow()
    counted = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)).top_paths
    if redis_state == "redis_down":
        counted = [(d["path"], d["count"]) for d in hourly_docs()]
    assert [n for _, n in counted] == [1]
    assert all(c.isascii() and c.isprintable() for c in counted[0][0])


# --- tampered Redis records ------------------------------------------------------------------------
#
# Each test edits one kind of record directly with raw_redis, then uses the feature through its public
# API (track, sync, report, the command): no exception, no attacker-chosen value reaches MongoDB or a
# decision, and ev:analytics:tampered counts it.


def _tampered():
    return metering.snapshot()["ev:analytics:tampered"]


def _hour():
    return hc_clock.utcnow().strftime("%Y%m%d%H")


def _k(key_prefix, *parts):
    return f"{key_prefix}:{{analytics:a}}:" + ":".join(parts)


def _report_now():
    now = hc_clock.utcnow()
    return analytics.report(now - dt.timedelta(days=1), now + dt.timedelta(hours=2))


def _attacker_values_absent():
    """No document carries a name only an attacker would write."""
    for d in hourly_docs():
        assert "evil" not in d["_id"].lower() and d["count"] > 0
        assert d["hour"].year >= 2025


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"page_view\t/a", b"not-a-number"),  # flipped to text
        (b"page_view\t/a", b"-1000"),  # negative: would lower the total
        (b"page_view\t/a", b"9223372036854775807"),  # at the int64 edge: HINCRBY overflows
        (b"page_view\t/a", "\u00e9\u00e9".encode()),  # non-ASCII value
    ],
)
def test_a_flipped_counter_is_reset_by_track_and_counted(field, value, raw_redis, key_prefix, clock):
    analytics.track("page_view", path="/a")
    raw_redis.hset(_k(key_prefix, "h", _hour()), field, value)
    before = _tampered()
    assert analytics.track("page_view", path="/a", count=2) == "redis"
    assert _tampered() == before + 1
    assert raw_redis.hget(_k(key_prefix, "h", _hour()), field) == b"2"  # the attacker's value is gone


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"EVIL\t/x", b"5"),  # not an event name
        (b"page_view\t/evil path", b"5"),  # not a normalised path
        (b"page_view\t/evil\n", b"5"),  # a control character
        (b"no-tab-evil", b"5"),  # not a counter field
        (b"page_view\t/\xff\xfeevil", b"5"),  # not UTF-8
        (b"page_view\t/evil", b"0"),  # not a positive count
        (b"page_view\t/evil", b"1" * 30),  # a number no hour reaches
        (b"!batch", b"evil"),  # a marker in a live hash
        (b"(other)\t/evil", b"5"),  # the global bucket with a real path
    ],
)
def test_counters_track_never_writes_are_left_out_of_sync_and_report(field, value, raw_redis, key_prefix, clock):
    analytics.track("page_view", path="/a", count=3)
    raw_redis.hset(_k(key_prefix, "h", _hour()), field, value)
    before = _tampered()
    rep = _report_now()
    assert rep.top_events == [("page_view", 3)] and rep.top_paths == [("/a", 3)]
    result = analytics.sync(include_current_hour=True)
    overwritten = field == b"!batch"  # the claim writes its own sealed marker over it
    assert not result.error and result.tampered == (0 if overwritten else 1) and result.events == 3
    assert [(d["path"], d["count"]) for d in hourly_docs()] == [("/a", 3)]
    assert _tampered() == before + 1 + result.tampered  # the report and the sync each saw it


def test_an_hour_hash_flooded_with_counters_cannot_flood_mongodb(hotcache_config, raw_redis, key_prefix, clock):
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=10)
    analytics.track("page_view", path="/a")
    raw_redis.hset(_k(key_prefix, "h", _hour()), mapping={f"page_view\t/flood{i}": 1 for i in range(500)})
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.tampered == 1
    assert len(hourly_docs()) <= 10 + 100 + 1 and hourly_total() == 501  # bounded; nothing invented


@pytest.mark.parametrize("kind", ["list", "string", "set"])
def test_an_hour_hash_of_the_wrong_type_is_replaced_not_a_500(kind, client, raw_redis, key_prefix, clock):
    key = _k(key_prefix, "h", _hour())
    {"list": lambda: raw_redis.rpush(key, "x"), "string": lambda: raw_redis.set(key, "x"),
     "set": lambda: raw_redis.sadd(key, "x")}[kind]()
    before = _tampered()
    resp = client.post(URL, b'{"event":"ok","path":"/a"}', content_type="application/json")
    assert resp.status_code == 204
    assert raw_redis.type(key) == b"hash" and raw_redis.hgetall(key) == {b"ok\t/a": b"1"}
    assert _tampered() == before + 1


def test_every_index_of_the_wrong_type_is_repaired_by_track(raw_redis, key_prefix, clock):
    day = hc_clock.utcnow().strftime("%Y%m%d")
    analytics.track("ok", path="/a", visitor_id="v")  # creates all of them
    raw_redis.delete(_k(key_prefix, "hours"), _k(key_prefix, "days"), _k(key_prefix, "ev", day))
    raw_redis.set(_k(key_prefix, "hours"), "x")
    raw_redis.rpush(_k(key_prefix, "days"), "x")
    raw_redis.hset(_k(key_prefix, "ev", day), "x", "y")
    raw_redis.set(_k(key_prefix, "v", day, "ok"), "not a hyperloglog")
    before = _tampered()
    assert analytics.track("ok", path="/a", visitor_id="w") == "redis"  # the warm path touches no index
    assert _tampered() == before + 1  # the HyperLogLog
    # The indexes are repaired by the next call that uses them: a new field (the hour index), the event's
    # first visitor of an hour (the day index and the day's event set; its marks are gone here), as a process
    # sees it that has not learnt this hour's marks yet (this one remembers them from its replies: forgotten here).
    raw_redis.delete(_k(key_prefix, "vm", _hour()))
    from hotcache.analytics import _write

    _write.forget_marks()
    assert analytics.track("ok", path="/b", visitor_id="x") == "redis"
    assert _tampered() == before + 4
    assert analytics.sync(include_current_hour=True).error == ""
    assert hourly_total() == 3


def test_junk_in_the_hour_and_day_indexes_is_dropped_by_the_sync(raw_redis, key_prefix, clock):
    analytics.track("ok", path="/a", visitor_id="v")
    raw_redis.zadd(_k(key_prefix, "hours"), {"not-an-hour": 0, b"\xff\xfe": 0, "2026139999": 0})
    raw_redis.zadd(_k(key_prefix, "days"), {"evil": 0, "20261340": 0})
    before = _tampered()
    rep = _report_now()
    assert rep.top_paths == [("/a", 1)]
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.tampered == 5 and hourly_total() == 1
    assert raw_redis.zrange(_k(key_prefix, "hours"), 0, -1) == []  # removed, and the claimed hour too
    assert raw_redis.zrange(_k(key_prefix, "days"), 0, -1) == [hc_clock.utcnow().strftime("%Y%m%d").encode()]
    assert _tampered() == before + 5  # the report reads only the range asked for: none of them


def test_junk_event_names_and_broken_hyperloglogs_never_reach_analytics_visitors(raw_redis, key_prefix, clock):
    day = hc_clock.utcnow().strftime("%Y%m%d")
    analytics.track("ok", path="/a", visitor_id="v")
    analytics.track("other_ok", path="/a", visitor_id="v")
    raw_redis.sadd(_k(key_prefix, "ev", day), "EVIL<script>", b"\xff")
    raw_redis.set(_k(key_prefix, "v", day, "other_ok"), "broken")
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.tampered == 3
    docs = mongo.collection(analytics.VISITORS, feature="test").find({})
    assert [(d["event"], d["count"]) for d in docs] == [("ok", 1)]


# pending batches: a sync that stopped after its claim leaves them, with their sealed markers


class _Stop(Exception):
    pass


def _leave_pending(monkeypatch, clock, paths=("/a",), hours=1):
    """Track in ``hours`` closed hours, run a sync that stops right after its claim; the batches stay pending."""
    for _ in range(hours):
        for p in paths:
            analytics.track("page_view", path=p, count=2)
        clock.advance(3600)
    clock.advance(hotcache_settings.ANALYTICS_SYNC_GRACE + 1)

    def checkpoint(step):
        if step == "after_claim":
            raise _Stop

    monkeypatch.setattr(_sync, "checkpoint", checkpoint)
    with pytest.raises(_Stop):
        analytics.sync()
    monkeypatch.undo()


def _pending_ids(raw_redis, key_prefix):
    return sorted(m.decode() for m in raw_redis.smembers(_k(key_prefix, "pending")))


def _pending_key(key_prefix, batch):
    return f"{key_prefix}:{{analytics:a}}:p:{batch}"


def test_an_untouched_pending_batch_is_applied_once(monkeypatch, raw_redis, key_prefix, clock):
    _leave_pending(monkeypatch, clock)
    result = analytics.sync()
    assert result.recovered == 1 and result.tampered == 0 and hourly_total() == 2


@pytest.mark.parametrize(
    "edit",
    [
        lambda r, k: r.hset(k, "!batch", r.hget(k, "!batch")[:-1]),  # truncated marker
        lambda r, k: r.hset(k, "!batch", "\u00e9".encode() * 40),  # non-ASCII marker
        lambda r, k: r.hset(k, "!batch", b"0" * 64 + b"." + r.hget(k, "!batch").split(b".", 1)[1]),  # forged
        lambda r, k: r.hdel(k, "!batch"),  # marker removed
        lambda r, k: (r.delete(k), r.rpush(k, "x")),  # wrong type
    ],
    ids=["truncated", "non-ascii", "forged-signature", "removed", "wrong-type"],
)
def test_a_pending_batch_without_its_marker_is_refused(edit, monkeypatch, raw_redis, key_prefix, clock):
    _leave_pending(monkeypatch, clock)
    (batch,) = _pending_ids(raw_redis, key_prefix)
    edit(raw_redis, _pending_key(key_prefix, batch))
    before = _tampered()
    result = analytics.sync()
    assert not result.error and result.tampered == 1 and result.batches == 0
    assert hourly_total() == 0 and _pending_ids(raw_redis, key_prefix) == []  # refused, not retried forever
    assert _tampered() == before + 1


def test_two_swapped_pending_batches_are_both_refused(monkeypatch, raw_redis, key_prefix, clock):
    """Swapping the hashes of two batches would move one hour's counts into another: the markers say no."""
    _leave_pending(monkeypatch, clock, hours=2)
    a, b = _pending_ids(raw_redis, key_prefix)
    ka, kb = _pending_key(key_prefix, a), _pending_key(key_prefix, b)
    raw_redis.rename(ka, "tmp-" + ka)
    raw_redis.rename(kb, ka)
    raw_redis.rename("tmp-" + ka, kb)
    result = analytics.sync()
    assert not result.error and result.tampered == 2 and hourly_total() == 0


def test_a_forged_pending_batch_writes_nothing(raw_redis, key_prefix, clock):
    """Someone adds a batch id for an hour of their choosing, with counters: no marker, nothing written."""
    forged = "2020010100-0123456789abcdef"
    raw_redis.sadd(_k(key_prefix, "pending"), forged, "not-a-batch", b"\xff")
    raw_redis.hset(_pending_key(key_prefix, forged), mapping={"evil\t/x": 1_000_000, "!batch": "x"})
    analytics.track("page_view", path="/a")
    before = _tampered()
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.tampered == 3
    assert hourly_total() == 1
    _attacker_values_absent()
    assert _pending_ids(raw_redis, key_prefix) == [] and not raw_redis.exists(_pending_key(key_prefix, forged))
    assert _tampered() == before + 3
    assert _report_now().top_paths == [("/a", 1)]


def test_a_pending_set_of_the_wrong_type_does_not_stop_the_sync(raw_redis, key_prefix, clock):
    raw_redis.hset(_k(key_prefix, "pending"), "x", "y")
    analytics.track("page_view", path="/a")
    rep = _report_now()  # the report reads it first: an empty set for it
    assert rep.top_paths == [("/a", 1)]
    result = analytics.sync(include_current_hour=True)
    assert not result.error and result.tampered >= 1 and hourly_total() == 1


def test_dry_run_and_the_command_survive_tampered_records(monkeypatch, raw_redis, key_prefix, clock):
    from io import StringIO

    from django.core.management import call_command

    _leave_pending(monkeypatch, clock)
    (batch,) = _pending_ids(raw_redis, key_prefix)
    raw_redis.hset(_pending_key(key_prefix, batch), "!batch", "forged")
    raw_redis.zadd(_k(key_prefix, "hours"), {"junk": 0})
    assert analytics.sync(dry_run=True).tampered == 2
    out = StringIO()
    call_command("sync_analytics", stdout=out)
    assert "2 Redis record(s) refused as tampered" in out.getvalue()
    assert hourly_total() == 0


# the sync lock


@pytest.mark.parametrize(
    "plant",
    [
        lambda r, k: r.set(k, "attacker"),  # unsigned, no expiry
        lambda r, k: r.set(k, "attacker", px=60_000),  # unsigned, expires
        lambda r, k: r.hset(k, "x", "y"),  # wrong type
        lambda r, k: r.set(k, signing.seal("analytics.lock", k, "x")),  # sealed but never expires
        lambda r, k: r.set(k, signing.seal("analytics.lock", "other", "x"), px=60_000),  # another key's
    ],
    ids=["unsigned", "unsigned-expiring", "wrong-type", "sealed-persistent", "swapped"],
)
def test_a_planted_lock_cannot_stop_the_sync(plant, raw_redis, key_prefix, clock):
    analytics.track("page_view", path="/a")
    plant(raw_redis, _k(key_prefix, "lock"))
    before = _tampered()
    result = analytics.sync(include_current_hour=True)
    assert not result.locked_out and not result.error and result.tampered == 1
    assert hourly_total() == 1 and not raw_redis.exists(_k(key_prefix, "lock"))
    assert _tampered() == before + 1


def test_a_genuine_lock_still_turns_a_second_sync_away(raw_redis, key_prefix, clock):
    key = _k(key_prefix, "lock")
    raw_redis.set(key, signing.seal("analytics.lock", key, "another-run"), px=60_000)
    result = analytics.sync()
    assert result.locked_out and result.tampered == 0 and raw_redis.exists(key)


# writer tokens: the record that decides whether a call whose reply was lost is applied again


def _track_sha(raw_redis):
    raw_redis.script_load(_hot.TRACK.body)
    return _hot.TRACK.sha.encode()


def _reopen_gate(clock):
    from hotcache.backends import redis as redis_backend
    from hotcache.conf import hotcache_settings

    clock.advance(float(hotcache_settings.HEALTH_COOLDOWN) + 1)
    redis_backend.call("t", lambda r: r.ping())


def _hour_total(raw_redis, key_prefix):
    return sum(int(v) for v in raw_redis.hgetall(_k(key_prefix, "h", _hour())).values())


@pytest.mark.parametrize("mode", ["apply", "drop"])
@pytest.mark.parametrize(
    "edit",
    [
        lambda r, k, other: r.set(k, "garbage"),  # flipped
        lambda r, k, other: r.set(k, r.get(k)[:-1]),  # truncated
        lambda r, k, other: r.set(k, r.get(other)),  # swapped with another writer's token
        lambda r, k, other: r.delete(k),  # deleted while a recent token must be there
        lambda r, k, other: (r.delete(k), r.rpush(k, "x")),  # wrong type
        lambda r, k, other: r.set(k, "\u00e9".encode() * 70),  # non-ASCII
    ],
    ids=["flipped", "truncated", "swapped", "deleted", "wrong-type", "non-ascii"],
)
def test_a_tampered_writer_token_never_counts_a_lost_call_twice(
    edit, mode, lost_reply_proxy, raw_redis, key_prefix, clock
):
    """Whether the lost call was applied ("apply") or not ("drop"), a writer key someone else wrote makes the
    call in doubt refused: never counted twice, never on the attacker's say-so, and counted as tampered."""
    import threading

    sha = _track_sha(raw_redis)
    other = threading.Thread(target=lambda: analytics.track("page_view", path="/other"))
    other.start()
    other.join()
    other_key = next(k for k in analytics_keys(raw_redis, key_prefix) if ":w:" in k)
    analytics.track("page_view", path="/a", count=10)
    lost_reply_proxy.arm(sha, mode)
    assert analytics.track("page_view", path="/a", count=1_000) == "in_doubt"
    writer_key = _keys.writer_key(recovery.writer())
    edit(raw_redis, writer_key, other_key)
    _reopen_gate(clock)
    before = _tampered()
    assert analytics.track("page_view", path="/b") == "redis"
    assert not _hot.doubts and _tampered() == before + 1
    expected = 10 + (1_000 if mode == "apply" else 0) + 1 + 1  # the lost call at most once
    assert _hour_total(raw_redis, key_prefix) == expected
    assert metering.snapshot()["ev:analytics:in_doubt_refused"] >= 1_000


def test_a_writer_token_of_the_wrong_type_is_simply_replaced_on_the_normal_path(raw_redis, key_prefix, clock):
    """The normal path only writes the token (SET replaces any type); it decides nothing from it."""
    analytics.track("page_view", path="/a")
    key = _keys.writer_key(recovery.writer())
    raw_redis.delete(key)
    raw_redis.sadd(key, "x")
    assert analytics.track("page_view", path="/a") == "redis"
    assert raw_redis.type(key) == b"string"
    assert signing.unseal("analytics.writer", recovery.writer(), raw_redis.get(key))


def test_an_untampered_doubt_is_still_settled_exactly_once(lost_reply_proxy, raw_redis, key_prefix, clock):
    """The signing changes nothing for honest records: applied -> skipped, dropped -> replayed."""
    sha = _track_sha(raw_redis)
    analytics.track("page_view", path="/a")
    for mode in ("apply", "drop"):
        lost_reply_proxy.arm(sha, mode)
        assert analytics.track("page_view", path="/a") == "in_doubt"
        _reopen_gate(clock)
        assert analytics.track("page_view", path="/a") == "redis"
    assert _hour_total(raw_redis, key_prefix) == 5 and _tampered() == 0


def test_a_path_info_with_a_lone_surrogate_does_not_break_the_page(clock):
    """No WSGI or ASGI server should hand one over; if one does, the page still answers."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.path_info = request.path = "/x\ud800"
    before = metering.snapshot()["ev:analytics:rejected"]
    assert analytics.AnalyticsMiddleware(lambda r: HttpResponse("ok"))(request).status_code == 200
    assert metering.snapshot()["ev:analytics:rejected"] == before + 1
