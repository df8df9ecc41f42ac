"""POST /hotcache/analytics/track: 204 for good beacons, 400 naming the field for everything else."""

import datetime as dt
import json

import pytest
from django.test import RequestFactory
from django.urls import reverse

from hotcache import analytics
from hotcache import clock as hc_clock
from hotcache.testing import count_redis
from tests.analytics.fixtures import _empty_fallback_buffer, analytics_keys  # noqa: F401
from tests.support.redis_cluster import warm_every_node

URL = "/hotcache/analytics/track"


def _post(client, body, content_type="application/json"):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(URL, data=data, content_type=content_type)


def _total():
    now = hc_clock.utcnow()
    rep = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    return sum(n for _, n in rep.hourly)


def test_url_name_is_what_a_ratelimit_rule_targets():
    assert reverse("hotcache:analytics-track") == URL


def test_a_good_beacon_is_counted_with_204(client, clock):
    resp = _post(client, {"event": "signup", "path": "/pricing?x=1", "visitor_id": "abc"})
    assert resp.status_code == 204 and resp.content == b""
    now = hc_clock.utcnow()
    rep = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert rep.top_paths == [("/pricing", 1)] and rep.visitors == [("signup", now.date(), 1)]


def test_a_beacon_costs_one_redis_round_trip_and_no_mongo_operation(client, clock):
    _post(client, {"event": "warm"})
    warm_every_node()  # on a cluster "signup" may live on another master than "warm"
    with count_redis() as c:
        assert _post(client, {"event": "signup", "path": "/"}).status_code == 204
    assert c.by_feature["analytics"] == 1 and c.mongo_ops == 0


def test_csrf_is_not_required(clock):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    assert _post(strict, {"event": "signup"}).status_code == 204


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_other_methods_get_405(client, method):
    resp = getattr(client, method)(URL)
    assert resp.status_code == 405 and resp["Allow"] == "POST"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"\xff\xfe\x00", "body"),
        (b"[" * 3000 + b"]" * 3000, "body"),
        ([1, 2], "body"),
        ("\"signup\"", "body"),
        ({}, "event"),
        ({"event": None}, "event"),
        ({"event": 5}, "event"),
        ({"event": ["signup"]}, "event"),
        ({"event": "a:b"}, "event"),
        ({"event": "a*"}, "event"),
        ({"event": "with space"}, "event"),
        ({"event": "new\nline"}, "event"),
        ({"event": ""}, "event"),
        ({"event": "x" * 65}, "event"),
        ({"event": "signup", "path": 5}, "path"),
        ({"event": "signup", "path": {"a": 1}}, "path"),
        ({"event": "signup", "visitor_id": 5}, "visitor_id"),
        ({"event": "signup", "visitor_id": "v" * 129}, "visitor_id"),
    ],
)
def test_bad_input_gets_400_naming_the_field(client, clock, body, field):
    with count_redis() as c:
        resp = _post(client, body)
    assert resp.status_code == 400
    assert resp.json()["field"] == field and resp.json()["error"]
    assert c.by_feature["analytics"] == 0 and c.events["analytics:rejected"] == 1
    assert _total() == 0


def test_a_100kb_body_is_refused_before_it_is_parsed(client, clock, monkeypatch):
    parsed = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(1))
    resp = _post(client, json.dumps({"event": "signup", "path": "/" + "a" * 100_000}))
    monkeypatch.undo()
    assert resp.status_code == 400 and resp.json()["field"] == "body" and "4096" in resp.json()["error"]
    assert not parsed


def test_a_body_longer_than_its_content_length_claims_is_cut_at_the_cap(client, clock):
    body = json.dumps({"event": "signup", "path": "/" + "a" * 10_000}).encode()
    resp = client.generic("POST", URL, body, content_type="application/json", CONTENT_LENGTH="10")
    assert resp.status_code == 400  # only the declared 10 bytes are read: not valid JSON


def test_odd_paths_are_stored_normalised_and_never_reach_key_names(client, clock, raw_redis, key_prefix):
    for path in ["/a:b", "/*", "/with space", "/caf\u00e9", "/{x}"]:
        assert _post(client, {"event": "signup", "path": path}).status_code == 204
    assert _post(client, {"event": "signup", "path": "/new\nline"}).status_code == 400  # control characters: refused
    now = hc_clock.utcnow()
    rep = analytics.report(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert sorted(p for p, _ in rep.top_paths) == ["/%7Bx%7D", "/*", "/a:b", "/caf%C3%A9", "/with%20space"]
    # hour hash, hour index and the thread's applied-token key: paths are fields, not keys
    assert len(analytics_keys(raw_redis, key_prefix)) == 3


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_ten_thousand_distinct_paths_through_the_endpoint_stay_bounded(hotcache_config, clock, raw_redis, key_prefix):
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=100)
    factory = RequestFactory()
    for i in range(10_000):
        request = factory.post(URL, json.dumps({"event": "page_view", "path": f"/item/{i}"}), "application/json")
        assert analytics.track_view(request).status_code == 204
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    assert raw_redis.hlen(f"{key_prefix}:{{analytics:a}}:h:{hour}") == 101
    assert len(analytics_keys(raw_redis, key_prefix)) == 3  # hour hash, hour index, the writer's token
    assert _total() == 10_000


@pytest.mark.mongo_contract
def test_the_endpoint_answers_204_with_redis_down(client, redis_down, clock):
    assert _post(client, {"event": "signup"}).status_code == 204
    assert analytics.flush_fallback() == 1
