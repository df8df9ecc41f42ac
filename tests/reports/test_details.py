"""The Analytics, API keys and workbench report pages show the features' MongoDB/Redis detail after a known
workload, at a cost that does not grow with traffic, and still render from MongoDB with Redis down."""

import datetime as dt
import re

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from hotcache import analytics, apikeys, clock, metering, reports, workbench
from hotcache.backends import redis as redis_backend
from hotcache.testing import count_redis, frozen_clock
from tests.analytics_fixtures import _empty_fallback_buffer  # noqa: F401 - autouse
from tests.reports.fixtures import empty_meter_hashes  # noqa: F401 - autouse

# MongoDB-facing contracts: each test runs on the stand-in and on a real server ([standin] / [real]).
pytestmark = [pytest.mark.django_db, pytest.mark.mongo_contract]


def _two_am_today():
    today = dt.datetime.now(dt.UTC).date()
    return dt.datetime.combine(today, dt.time(2, 0), tzinfo=dt.UTC).timestamp()


@pytest.fixture
def frozen():
    """02:00 UTC today, so the workload's hours (02:00 and 03:00) fall on one UTC day."""
    with frozen_clock(start=_two_am_today()) as c:
        yield c


@pytest.fixture
def staff_client(client):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    metering.meter.reset()
    return client


def text(response):
    return re.sub(r"\s+", " ", response.content.decode())


def row(*cells):
    first, *rest = cells
    return f'<th scope="row">{first}</th>' + "".join(f'<td class="n">{c}</td>' for c in rest)


def analytics_workload(frozen):
    """02:00: signup x3 (3 users) on /join, page_view x5 (1 visitor) on /; synced. 03:05: page_view x2 on /pricing."""
    for uid in (1, 2, 3):
        analytics.track("signup", path="/join", user_id=uid)
    analytics.track("page_view", path="/", visitor_id="a", count=5)
    frozen.advance(3600 + 301)
    assert not analytics.sync().error
    analytics.track("page_view", path="/pricing", visitor_id="b", count=2)  # not synced: still only in Redis
    assert metering.flush()


def page(client, feature, query=""):
    response = client.get(reverse("hotcache:reports-feature", args=[feature]) + query)
    assert response.status_code == 200
    return text(response)


# --- analytics -----------------------------------------------------------------------------------


def test_analytics_page_shows_hourly_daily_top_events_paths_visitors_and_unsynced(staff_client, frozen):
    analytics_workload(frozen)
    body = page(staff_client, "analytics", "?days=7")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    md = today[5:]
    assert row(f"{md} 02:00", 8) in body and row(f"{md} 03:00", 2) in body  # per hour (the chart's table)
    assert row(md, 10) in body  # per day
    assert row("page_view", 7) in body and row("signup", 3) in body  # top events
    assert row("/", 5) in body and row("/join", 3) in body and row("/pricing", 2) in body  # top paths
    assert row(today, "signup", 3) in body and row(today, "page_view", 2) in body  # distinct visitors
    assert row("still only in Redis (included above)", 2) in body
    assert body.count("<svg") >= 3  # per hour, per day, top events (plus the meter's events per day)


def test_analytics_event_filter_narrows_every_section(staff_client, frozen):
    analytics_workload(frozen)
    body = page(staff_client, "analytics", "?days=7&event=signup")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert "Events per day (signup)" in body and row(today[5:], 3) in body
    assert row("/join", 3) in body and "/pricing" not in body
    assert 'name="event" value="signup"' in body


@pytest.mark.parametrize("bad", ["Bad*Name", "x" * 500, "a b", "ev:1"])
def test_analytics_bad_event_filter_is_ignored_with_a_message(staff_client, frozen, bad):
    analytics_workload(frozen)
    body = page(staff_client, "analytics", "?" + "&".join([f"event={bad}", "days=7"]))
    assert "Ignored the event filter" in body
    assert row("page_view", 7) in body  # unfiltered figures


def test_analytics_page_cost_does_not_grow_with_traffic(staff_client, frozen):
    analytics_workload(frozen)
    url = reverse("hotcache:reports-feature", args=["analytics"])
    staff_client.get(url)  # warm: indexes, script cache, sessions
    with count_redis() as quiet:
        staff_client.get(url)
    for i in range(200):
        analytics.track("page_view", path=f"/p{i % 3}", visitor_id=str(i))
    analytics.track("signup", path="/join", user_id=9, count=50)
    metering.flush()
    with count_redis() as busy:
        staff_client.get(url)
    assert busy.mongo_ops == quiet.mongo_ops <= 4  # 3 aggregates + 1 find
    assert (busy.round_trips, busy.commands) == (quiet.round_trips, quiet.commands)
    assert busy.round_trips <= 5  # meter + analytics indexes, hour hashes, day events, PFCOUNTs


def test_analytics_page_with_redis_down_renders_synced_figures_with_the_banner(staff_client, redis_proxy, frozen):
    analytics_workload(frozen)
    redis_proxy.down()
    body = page(staff_client, "analytics", "?days=7")
    assert "Redis is unavailable" in body
    assert row("page_view", 5) in body and row("signup", 3) in body  # what the sync put in MongoDB
    assert "unsynced counts are unknown" in body


# --- API keys ------------------------------------------------------------------------------------


def apikeys_workload():
    """alice: 5 of 5 then 1 refused; bob: 8 of 10; carol: revoked; dave: expired."""
    alice = apikeys.create("alice", "web", daily_limit=5)
    bob = apikeys.create("bob", "cli", daily_limit=10)
    carol = apikeys.create("carol", "old")
    apikeys.create("dave", "temp", expires_at=clock.utcnow() - dt.timedelta(hours=1))
    assert [apikeys.check(alice.raw_key).allowed for _ in range(6)] == [True] * 5 + [False]
    for _ in range(8):
        assert apikeys.check(bob.raw_key).allowed
    apikeys.check(carol.raw_key)
    apikeys.revoke(carol.key_id)
    assert metering.flush()
    return alice, bob, carol


def test_apikeys_page_shows_use_today_limits_and_revoked_and_expired_keys(staff_client, frozen):
    alice, bob, carol = apikeys_workload()
    body = page(staff_client, "apikeys", "?days=7")
    a, b, c = (apikeys.get(k.key_id).prefix for k in (alice, bob, carol))
    assert f'<th scope="row">{a}</th><td class="n">web</td><td class="n">alice</td><td class="n">5</td>' \
        '<td class="n">5</td><td class="n">100.0%</td><td class="n">at limit</td>' in body
    assert f'<th scope="row">{b}</th><td class="n">cli</td><td class="n">bob</td><td class="n">8</td>' \
        '<td class="n">10</td><td class="n">80.0%</td><td class="n">near limit</td>' in body
    assert re.search(rf'<th scope="row">{c}</th><td class="n">old</td><td class="n">carol</td>'
                     r'<td class="n">revoked</td>', body)
    assert re.search(r'<td class="n">temp</td><td class="n">dave</td><td class="n">expired</td>', body)
    assert row(f"{a} web", "alice", 5, dt.datetime.now(dt.UTC).date().isoformat()) in body  # uses in 7 days
    assert "<h3>Over their limit</h3><div class=\"hc-big\">1</div>" in body  # the meter's over_limit


def test_apikeys_page_caps_the_keys_listed(staff_client, frozen):
    for i in range(reports.APIKEYS_SHOWN + 3):
        apikeys.create(f"owner{i}", f"k{i}")
    body = page(staff_client, "apikeys")
    assert f"Showing {reports.APIKEYS_SHOWN} of {reports.APIKEYS_SHOWN + 3} keys" in body


def test_apikeys_page_cost_does_not_grow_with_traffic(staff_client, frozen):
    alice, bob, _ = apikeys_workload()
    url = reverse("hotcache:reports-feature", args=["apikeys"]) + "?days=7"
    staff_client.get(url)
    with count_redis() as quiet:
        staff_client.get(url)
    for _ in range(50):
        apikeys.check(bob.raw_key)  # 2 allowed, then over the limit
        apikeys.check(alice.raw_key)
    metering.flush()
    with count_redis() as busy:
        staff_client.get(url)
    assert busy.mongo_ops == quiet.mongo_ops == 4  # list_keys: keys + usage; usage_many: keys + usage
    assert busy.round_trips == quiet.round_trips == 3  # meter, today's counters, per-day counters
    # one GET per key (4) + APIKEYS_DAILY busiest (here all 4) x 7 days + the meter pipeline
    assert busy.commands == quiet.commands
    assert busy.by_feature["apikeys"] == 4 + 4 * 7


def test_apikeys_page_with_redis_down_renders_from_mongodb_with_the_banner(staff_client, redis_proxy, frozen):
    alice, _, _ = apikeys_workload()
    apikeys.sync_usage()  # Redis's counters copied to MongoDB
    redis_proxy.down()
    body = page(staff_client, "apikeys")
    assert "Redis is unavailable" in body
    prefix = apikeys.get(alice.key_id).prefix
    assert f'<th scope="row">{prefix}</th><td class="n">web</td><td class="n">alice</td><td class="n">5</td>' \
        '<td class="n">5</td>' in body
    assert "revoked" in body


def test_usage_many_matches_usage_per_key(frozen):
    alice, bob, _ = apikeys_workload()
    many = apikeys.usage_many([alice.key_id, bob.key_id, "ak_nope"], days=3)
    assert many == {k.key_id: apikeys.usage(k.key_id, days=3) for k in (alice, bob)}


# --- workbench -----------------------------------------------------------------------------------


def test_workbench_page_shows_sessions_in_redis_now(staff_client, frozen, raw_redis):
    from hotcache import keys

    raw_redis.delete(*(keys.tagged("workbench", "s", n) for n in ("idx", "ended", "claims")))
    for i in range(3):
        workbench.save(f"s{i}", {"n": i})
    workbench.end("s0")
    body = page(staff_client, "workbench")
    assert row("active (hot or waiting to be persisted)", 2) in body
    assert row("ended, queued for history", 1) in body


def test_workbench_counts_is_one_round_trip(frozen):
    redis_backend.call("warm", lambda r: r.ping())
    with count_redis() as c:
        workbench.counts()
    assert (c.round_trips, c.commands) == (1, 4)
