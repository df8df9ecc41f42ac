"""analytics.track(), its bounds, the Redis-down fallback, report(), the middleware and the checks."""

import datetime as dt
import os
import re

import pytest
from django.core.checks import run_checks

from hotcache import analytics
from hotcache import clock as hc_clock
from hotcache.analytics import _documents, _fallback
from hotcache.exceptions import InvalidName
from hotcache.testing import count_redis, mongo_down
from tests.analytics.fixtures import (  # noqa: F401
    _empty_fallback_buffer,
    analytics_keys,
    close_hours,
    hourly_total,
    lose_ack_of_bulk_call,
)


def _warm(event="signup"):
    # The first call opens the connection (handshake) and loads the script: not what a steady request costs.
    # The same event: its bucket's master (on a cluster) is the one warmed.
    analytics.track(event, path="/")


def test_track_is_one_round_trip_and_no_mongo_operation():
    _warm()
    with count_redis() as c:
        assert analytics.track("signup", path="/pricing", visitor_id="v1") == "redis"
    assert (c.commands, c.round_trips, c.mongo_ops) == (1, 1, 0)
    assert c.events["analytics:tracked"] == 1


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_track_counts_in_the_current_utc_hour_by_event_and_path(clock, raw_redis, key_prefix):
    analytics.track("signup", path="/pricing")
    analytics.track("signup", path="/pricing?utm=x#top", count=2)
    analytics.track("signup", path="//pricing")
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    counts = raw_redis.hgetall(f"{key_prefix}:{{analytics:a}}:h:{hour}")
    assert counts == {b"signup\t/pricing": b"4"}
    assert raw_redis.ttl(f"{key_prefix}:{{analytics:a}}:h:{hour}") > 0


def test_distinct_visitors_per_event_and_day_use_hyperloglog(clock):
    for v in ["a", "b", "a", "c"]:
        analytics.track("signup", visitor_id=v)
    analytics.track("signup", user_id=7)
    analytics.track("signup")  # no visitor: counted, not a visitor
    rep = analytics.report(hc_clock.utcnow() - dt.timedelta(hours=1), hc_clock.utcnow() + dt.timedelta(hours=1))
    assert rep.visitors == [("signup", hc_clock.utcnow().date(), 4)]
    assert rep.top_events == [("signup", 6)]


@pytest.mark.parametrize("name", ["a:b", "a*", "with space", "new\nline", "", "x" * 65, "Upper", "é", 5, None])
def test_invalid_event_names_are_rejected(name):
    with pytest.raises(InvalidName):
        analytics.track(name)


@pytest.mark.parametrize("count", [0, -1, 1.5, True, 10**7])
def test_invalid_counts_are_rejected(count):
    with pytest.raises(ValueError, match="count"):
        analytics.track("signup", count=count)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        ("/a/b?q=1#f", "/a/b"),
        ("a//b///c", "/a/b/c"),
        ("/with space and\u2028separator", "/with%20space%20and%E2%80%A8separator"),
        ("/caf\u00e9", "/caf%C3%A9"),
        ("/keep%20escapes", "/keep%20escapes"),
        ("/{tag}:*", "/%7Btag%7D:*"),
    ],
)
def test_paths_are_normalised(raw, expected):
    assert analytics.normalize_path(raw) == expected


def test_paths_are_length_capped_without_a_cut_escape(hotcache_config):
    hotcache_config(ANALYTICS_MAX_PATH_LENGTH=20)
    assert analytics.normalize_path("/" + "a" * 100) == "/" + "a" * 19
    assert analytics.normalize_path("/" + "a" * 17 + " b") == "/" + "a" * 17  # "%2" of "%20" is dropped


def test_non_string_path_is_rejected():
    with pytest.raises(InvalidName, match="path"):
        analytics.track("signup", path=["/a"])


@pytest.mark.parametrize("raw", ["/with\ttab", "/new\nline", "/nul\x00", "/x\ud800"])
def test_paths_with_control_characters_or_lone_surrogates_are_rejected(raw):
    """keys.text is the boundary: such a path is refused, not percent-encoded."""
    with pytest.raises(InvalidName, match="path"):
        analytics.normalize_path(raw)


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_ten_thousand_distinct_paths_keep_redis_bounded(hotcache_config, raw_redis, key_prefix, clock):
    """Cardinality cap: new paths past the cap go to '(other)'; nothing is lost, keys and fields stay bounded."""
    hotcache_config(ANALYTICS_MAX_COUNTERS_PER_HOUR=200)
    for i in range(10_000):
        analytics.track("page_view", path=f"/item/{i}", visitor_id=str(i))
    keys_after = analytics_keys(raw_redis, key_prefix)
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    fields = raw_redis.hgetall(f"{key_prefix}:{{analytics:a}}:h:{hour}")
    assert len(fields) == 201
    assert int(fields[b"page_view\t(other)"]) == 10_000 - 200
    assert sum(int(v) for v in fields.values()) == 10_000
    # hour hash, hour index, the hour's visitor marks, the event's HLL, the day's event set, the day index, and
    # this thread's applied token (one short string per writer): seven keys whatever the input.
    assert len(keys_after) == 7


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_many_event_names_share_one_overflow_visitor_counter(hotcache_config, raw_redis, key_prefix, clock):
    hotcache_config(ANALYTICS_MAX_EVENTS_PER_DAY=3, ANALYTICS_MAX_COUNTERS_PER_HOUR=5)
    for i in range(50):
        analytics.track(f"ev{i}", path="/", visitor_id="v")
    keys_after = analytics_keys(raw_redis, key_prefix)
    assert len([k for k in keys_after if ":v:" in k]) == 4  # 3 events + one "(other)"
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    fields = raw_redis.hgetall(f"{key_prefix}:{{analytics:a}}:h:{hour}")
    assert len(fields) <= 5 + 100 + 1
    assert sum(int(v) for v in fields.values()) == 50


@pytest.mark.usefixtures("single_tag_layout")  # names or counts single-tag keys
def test_keys_carry_no_user_input_beyond_the_validated_event(raw_redis, key_prefix, clock):
    analytics.track("signup", path="/a:b*{c} ", visitor_id="x:y* ", user_id="u:1")
    for key in analytics_keys(raw_redis, key_prefix):
        assert re.fullmatch(rf"{re.escape(key_prefix)}:\{{analytics:a\}}(:[A-Za-z0-9_.@+~\-]+)+", key), key


# --- Redis down ----------------------------------------------------------------------------------


@pytest.mark.mongo_contract
def test_redis_down_events_reach_mongodb_through_the_buffer(redis_down, clock):
    with count_redis() as c:
        assert analytics.track("signup", path="/a") == "fallback"
        assert analytics.track("signup", path="/a") == "fallback"
    assert c.mongo_ops == 0  # buffered, not one write per event
    clock.advance(2.0)
    analytics.track("signup", path="/b")  # the flush interval has passed: one bulk write
    assert hourly_total("signup") == 3
    assert c.events["analytics:fallback"] == 2


@pytest.mark.mongo_contract
def test_redis_down_flushes_in_bulk_when_the_buffer_is_full(redis_down, hotcache_config, clock):
    hotcache_config(ANALYTICS_FALLBACK_BUFFER_SIZE=10, ANALYTICS_FALLBACK_FLUSH_INTERVAL=3600)
    _documents.hourly_collection()  # index creation is once per process, not per flush
    _fallback.slots_collection()
    with count_redis() as c:
        for i in range(25):
            analytics.track("signup", path=f"/p{i}")
    # Each time 10 counters were buffered: one bulk write, after one find of the documents that exist and
    # one $inc taking the new paths' slots of the hour (the cap across processes).
    assert c.mongo_ops == 2 * 3
    assert analytics.flush_fallback() == 5
    assert hourly_total() == 25


@pytest.mark.mongo_contract
def test_events_that_do_not_fit_are_dropped_counted_and_logged(redis_down, hotcache_config, clock, caplog):
    hotcache_config(ANALYTICS_FALLBACK_BUFFER_SIZE=3, ANALYTICS_FALLBACK_FLUSH_INTERVAL=3600)
    with mongo_down(), count_redis() as c:
        outcomes = [analytics.track("signup", path=f"/p{i}") for i in range(10)]
    dropped = outcomes.count("dropped")
    assert dropped == 4 and c.events["analytics:dropped"] == 4
    assert "dropped" in caplog.text
    # MongoDB is back: what was buffered (the failed flush and the new counters) arrives, once.
    analytics.flush_fallback()
    analytics.flush_fallback()
    assert hourly_total() == 10 - dropped


@pytest.mark.mongo_contract
def test_a_fallback_flush_whose_ack_was_lost_is_applied_once(redis_down, monkeypatch, clock):
    analytics.track("signup", path="/a", count=5)
    lose_ack_of_bulk_call(monkeypatch, nth=1)
    assert analytics.flush_fallback() == 0  # applied, but the caller could not know
    monkeypatch.undo()
    assert analytics.flush_fallback() == 1  # same flush id: the replay changes nothing
    assert hourly_total() == 5


@pytest.mark.mongo_contract
def test_a_forked_child_starts_with_an_empty_outage_buffer(redis_down, clock):
    """The parent flushes what it buffered; a child forked meanwhile (a preforked worker) never writes it again."""
    analytics.track("signup", path="/a", count=3)
    assert _fallback.buffer.has_data()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, b"1" if _fallback.buffer.has_data() else b"0")
        os._exit(0)
    os.close(write)
    child = os.read(read, 10)
    os.waitpid(pid, 0)
    assert child == b"0" and _fallback.buffer.has_data()
    assert analytics.flush_fallback() == 1 and hourly_total() == 3


def test_redis_down_track_never_raises_for_an_outage(redis_down):
    for _ in range(5):
        assert analytics.track("signup") in ("fallback", "dropped")


# --- report --------------------------------------------------------------------------------------


@pytest.mark.mongo_contract
@pytest.mark.usefixtures("single_tag_layout")  # counts the single-tag layout's round trips (spread: one per master)
def test_report_adds_unsynced_redis_counts_to_mongodb_figures(clock):
    clock.advance(3600 - hc_clock.time() % 3600)  # start of an hour: close_hours() then lands in the next one
    start = hc_clock.utcnow().replace(minute=0, second=0, microsecond=0)
    analytics.track("signup", path="/a", count=3)
    analytics.track("login", path="/b", count=2)
    close_hours(clock)
    analytics.sync()
    analytics.track("signup", path="/a", count=4)  # next hour, still in Redis
    analytics.report(start, start)  # warm indexes and connections
    with count_redis() as c:
        rep = analytics.report(start, start + dt.timedelta(days=1))
    assert rep.unsynced == 4
    assert rep.hourly == [(start, 5), (start + dt.timedelta(hours=1), 4)]
    assert rep.daily == [(d, n) for d, n in _days(rep.hourly)]
    assert rep.top_events == [("signup", 7), ("login", 2)]
    assert rep.top_paths == [("/a", 7), ("/b", 2)]
    assert c.mongo_ops == 4 and c.round_trips <= 3


def _days(hourly):
    out = {}
    for h, n in hourly:
        out[h.date()] = out.get(h.date(), 0) + n
    return sorted(out.items())


@pytest.mark.mongo_contract
def test_report_for_one_event(clock):
    start = hc_clock.utcnow() - dt.timedelta(hours=1)
    analytics.track("signup", path="/a", count=3)
    analytics.track("login", path="/b", count=2)
    rep = analytics.report(start, start + dt.timedelta(hours=3), event="login")
    assert rep.top_events == [("login", 2)] and rep.top_paths == [("/b", 2)] and rep.unsynced == 2


@pytest.mark.mongo_contract
def test_report_top_lists_hold_at_most_twenty(clock):
    for i in range(25):
        analytics.track(f"e{i:02d}", path=f"/{i}", count=i + 1)
    rep = analytics.report(hc_clock.utcnow() - dt.timedelta(hours=1), hc_clock.utcnow() + dt.timedelta(hours=1))
    assert len(rep.top_events) == 20 and rep.top_events[0] == ("e24", 25)
    assert len(rep.top_paths) == 20


# --- middleware ----------------------------------------------------------------------------------


@pytest.fixture
def with_middleware(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "hotcache.middleware.AnalyticsMiddleware"]


@pytest.mark.django_db
def test_middleware_tracks_page_views_on_included_paths(with_middleware, client, clock):
    client.get("/?ref=x")
    client.get("/")
    client.get("/admin/login/")  # excluded by default
    client.post("/")  # not a GET
    rep = analytics.report(hc_clock.utcnow() - dt.timedelta(hours=1), hc_clock.utcnow() + dt.timedelta(hours=1))
    assert rep.top_events == [("page_view", 2)] and rep.top_paths == [("/", 2)]
    assert rep.visitors == [("page_view", hc_clock.utcnow().date(), 1)]


@pytest.mark.django_db
def test_middleware_include_and_exclude_settings(with_middleware, hotcache_config, client, clock):
    hotcache_config(ANALYTICS_MIDDLEWARE_INCLUDE=["/me/"], ANALYTICS_MIDDLEWARE_EXCLUDE=[])
    client.get("/")
    client.get("/me/")
    rep = analytics.report(hc_clock.utcnow() - dt.timedelta(hours=1), hc_clock.utcnow() + dt.timedelta(hours=1))
    assert rep.top_paths == [("/me/", 1)]


def _anonymous_page_views(forwarded_for):
    """One page view per X-Forwarded-For value, each from the same proxy address, without user or session."""
    from django.http import HttpResponse
    from django.test import RequestFactory

    middleware = analytics.AnalyticsMiddleware(lambda r: HttpResponse("ok"))
    for client_addr in forwarded_for:
        request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=client_addr)
        assert middleware(request).status_code == 200
    rep = analytics.report(hc_clock.utcnow() - dt.timedelta(hours=1), hc_clock.utcnow() + dt.timedelta(hours=1))
    return rep.visitors


def test_anonymous_visitors_behind_a_trusted_proxy_are_told_apart_by_client_address(hotcache_config, clock):
    """The anonymous visitor is a digest of hotcache.clientip's address, not of the proxy's REMOTE_ADDR."""
    hotcache_config(TRUSTED_PROXIES=["10.0.0.0/8"])
    assert _anonymous_page_views(["203.0.113.7", "203.0.113.8"]) == [("page_view", hc_clock.utcnow().date(), 2)]


def test_a_forwarded_header_from_an_untrusted_peer_does_not_make_new_visitors(clock):
    assert _anonymous_page_views(["203.0.113.7", "203.0.113.8"]) == [("page_view", hc_clock.utcnow().date(), 1)]


# --- checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "check_id", "setting"),
    [
        ({"ANALYTICS_SYNC_CHUNK": 5000}, "hotcache.E060", "ANALYTICS_SYNC_CHUNK"),
        ({"ANALYTICS_MIDDLEWARE_EXCLUDE": "/admin/"}, "hotcache.E061", "ANALYTICS_MIDDLEWARE_EXCLUDE"),
        ({"ANALYTICS_RETENTION_HOURS": 24}, "hotcache.E062", "ANALYTICS_RETENTION_HOURS"),
        ({"ANALYTICS_MAX_PATH_LENGTH": 5}, "hotcache.E063", "ANALYTICS_MAX_PATH_LENGTH"),
        ({"ANALYTICS_SYNC_GRACE": 7200}, "hotcache.E064", "ANALYTICS_SYNC_GRACE"),
        ({"ANALYTICS_FALLBACK_BUFFER_SIZE": 0}, "hotcache.E004", "ANALYTICS_FALLBACK_BUFFER_SIZE"),
    ],
)
def test_checks_name_the_analytics_setting(hotcache_config, values, check_id, setting):
    hotcache_config(**values)
    messages = [m for m in run_checks() if m.id == check_id]
    assert len(messages) == 1 and setting in messages[0].msg and messages[0].hint


def test_default_settings_pass_the_analytics_checks():
    assert not [m for m in run_checks() if m.id.startswith("hotcache.E06")]


@pytest.mark.mongo_contract
def test_outage_flushes_do_not_evict_sync_batch_ids(redis_down, hotcache_config, clock):
    """Many buffer flushes to one document keep their own id window, so a pending sync batch stays recognisable."""
    coll = _documents.hourly_collection()
    hour = hc_clock.utcnow().strftime("%Y%m%d%H")
    coll.bulk([_documents.counter_op("sync-batch", hour, "signup", "/a", 1)])
    for _ in range(60):
        analytics.track("signup", path="/a")
        analytics.flush_fallback()
    assert coll.bulk([_documents.counter_op("sync-batch", hour, "signup", "/a", 1)]).duplicates == [0]
    assert hourly_total() == 61
