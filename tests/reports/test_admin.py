"""The report pages in the Django admin: who may see them, what they show, what they cost."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from hotcache import metering
from hotcache.backends import redis as redis_backend
from hotcache.conf import FEATURES
from hotcache.testing import count_redis
from tests.analytics_fixtures import _empty_fallback_buffer  # noqa: F401 - autouse (no analytics keys left over)
from tests.reports.fixtures import empty_meter_hashes  # noqa: F401 - autouse

pytestmark = pytest.mark.django_db

PAGES = ["hotcache:reports"] + [("hotcache:reports-feature", f) for f in FEATURES]


def url(page):
    return reverse(page) if isinstance(page, str) else reverse(page[0], args=[page[1]])


@pytest.fixture
def staff_client(client):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    return client


def workload():
    redis_backend.call("warm", lambda r: r.ping())
    for _ in range(4):
        redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
    metering.event("ratelimit", "allowed", 7)
    metering.event("ratelimit", "denied", 3)
    metering.event("ratelimit", "allowed:login", 7)
    metering.event("ratelimit", "denied:login", 3)
    metering.event("users", "hit", 9)
    metering.event("users", "miss", 1)
    metering.event("mfa", "issued", 5)
    metering.event("mfa", "verified", 4)
    metering.event("mfa", "failed", 1)
    metering.event("workbench", "fallback", 2)
    assert metering.flush()


def text(response):
    return re.sub(r"\s+", " ", response.content.decode())


@pytest.mark.parametrize("page", PAGES)
def test_staff_sees_every_page(staff_client, page):
    response = staff_client.get(url(page))
    assert response.status_code == 200
    assert "admin/hotcache/" in response.templates[0].name


def test_overview_shows_budget_per_feature_and_fallbacks(staff_client):
    workload()
    body = text(staff_client.get(reverse("hotcache:reports")))
    row = r'id="hc-feature-ratelimit"><th scope="row">Rate limiting</th><td>yes</td> <td class="n">4</td>'
    assert re.search(row, body)
    assert "of 10,000 <span class=\"hc-note\">(HOTCACHE['REDIS_DAILY_COMMAND_BUDGET'])" in body
    # INFO used_memory from the real Redis against the memory limit
    assert re.search(r'<span class="hc-value">[0-9.]+ MB</span> of 256.0 MB', body)
    assert '<strong id="hc-fallbacks-today">2</strong>' in body
    assert "<svg" in body and "daily budget 10,000" in body
    assert "Redis is unavailable" not in body


def test_overview_shows_both_budgets_billed_beside_round_trips_and_the_servers_count(staff_client):
    workload()
    body = text(staff_client.get(reverse("hotcache:reports")))
    assert "of 500,000 <span class=\"hc-note\">(HOTCACHE['REDIS_MONTHLY_COMMAND_BUDGET'])" in body
    assert "Redis billed commands this month, projected" in body
    assert "hotcache&#x27;s own connections only" in body  # (HTML-escaped)
    today = re.search(r"Today \(hotcache's meter\)</th><td class=\"n\">(\d+) billed, (\d+) round trips", body)
    assert today and int(today.group(1)) >= 4 and int(today.group(2)) >= 5
    server = re.search(r"The Redis server, every client</th><td class=\"n\">(\d+) billed", body)
    assert server and int(server.group(1)) >= int(today.group(1))
    assert "per INFO commandstats" in body


def test_overview_flags_an_exceeded_budget(staff_client, hotcache_config):
    hotcache_config(REDIS_DAILY_COMMAND_BUDGET=2)
    workload()
    body = text(staff_client.get(reverse("hotcache:reports")))
    assert "Exceeded:</strong> Redis billed commands today" in body


def test_user_cache_page_shows_hit_ratio_and_queries_avoided(staff_client):
    workload()
    body = text(staff_client.get(reverse("hotcache:reports-feature", args=["users"])))
    assert "<h3>Cache hit ratio</h3><div class=\"hc-big\">90.0%</div>" in body
    assert "<h3>Database queries avoided</h3><div class=\"hc-big\">9</div>" in body


def test_ratelimit_page_shows_allowed_and_denied_per_rule(staff_client):
    workload()
    body = text(staff_client.get(reverse("hotcache:reports-feature", args=["ratelimit"])))
    assert '<th scope="row">login</th><td class="n">7</td><td class="n">3</td><td class="n">30.0%</td>' in body
    assert "Allowed and denied per rule" in body


def test_mfa_page_shows_issued_verified_failed(staff_client):
    workload()
    body = text(staff_client.get(reverse("hotcache:reports-feature", args=["mfa"])))
    assert "<h3>Codes issued</h3><div class=\"hc-big\">5</div>" in body
    assert "<h3>Verification success rate</h3><div class=\"hc-big\">80.0%</div>" in body


@pytest.mark.parametrize("feature", ["apikeys", "analytics"])
def test_feature_without_data_shows_an_empty_state(staff_client, feature):
    response = staff_client.get(reverse("hotcache:reports-feature", args=[feature]))
    assert response.status_code == 200
    assert 'id="hc-empty"' in response.content.decode()


def test_disabled_feature_is_left_out_of_the_tabs_and_index(staff_client, hotcache_config):
    hotcache_config(FEATURES=["users"])
    body = staff_client.get(reverse("hotcache:reports")).content.decode()
    assert reverse("hotcache:reports-feature", args=["users"]) in body
    assert reverse("hotcache:reports-feature", args=["mfa"]) not in body
    index = staff_client.get(reverse("admin:index")).content.decode()
    assert "app-hotcache" in index and reverse("hotcache:reports-feature", args=["mfa"]) not in index


def test_unknown_feature_is_404(staff_client):
    assert staff_client.get("/hotcache/reports/nope/").status_code == 404


def test_admin_index_has_a_hotcache_section(staff_client):
    body = staff_client.get(reverse("admin:index")).content.decode()
    assert 'class="app-hotcache module' in body
    assert f'href="{reverse("hotcache:reports")}"' in body


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_is_sent_to_the_admin_login(client, page):
    response = client.get(url(page))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("page", PAGES)
def test_non_staff_user_is_refused(client, page):
    client.force_login(User.objects.create_user("plain", password="pw"))
    response = client.get(url(page))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_non_staff_user_gets_no_hotcache_section(client):
    client.force_login(User.objects.create_user("plain", password="pw"))
    assert "app-hotcache" not in client.get(reverse("admin:index")).content.decode()


def test_staff_without_the_configured_permission_is_forbidden(staff_client, hotcache_config):
    hotcache_config(REPORTS_PERMISSION="auth.view_user")
    assert staff_client.get(reverse("hotcache:reports")).status_code == 403
    assert "app-hotcache" not in staff_client.get(reverse("admin:index")).content.decode()


def test_staff_with_the_configured_permission_is_let_in(client, hotcache_config):
    hotcache_config(REPORTS_PERMISSION="auth.view_user")
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(user)
    assert client.get(reverse("hotcache:reports")).status_code == 200


@pytest.mark.mongo_contract
@pytest.mark.parametrize("page", PAGES)
def test_page_cost_is_bounded(staff_client, django_assert_max_num_queries, page, _mongo_store_switch):
    workload()
    staff_client.get(url(page))  # warm: sessions, content types
    with count_redis() as c, django_assert_max_num_queries(4):
        assert staff_client.get(url(page)).status_code == 200
    # (round trips, commands, MongoDB ops) with this workload: the meter pipeline (31 HGETALLs incl. its
    # handshake) plus, on the overview, INFO memory; workbench: 4 ZCARD/ZCOUNTs + a history count;
    # analytics: report() (index pipeline; nothing unsynced) + 4 MongoDB reads; apikeys: no keys, 1 find.
    # The overview adds one MongoDB serverStatus where the store has one (a real server; not the stand-in).
    server_status = 1 if _mongo_store_switch == "real" else 0
    bounds = {"workbench": (2, 35, 1), "analytics": (2, 34, 4), "apikeys": (1, 31, 1)}
    bounds["hotcache:reports"] = (2, 31, server_status)
    rt, commands, mongo_ops = bounds.get(page[1] if isinstance(page, tuple) else page, (2, 31, 0))
    assert c.round_trips <= rt
    assert c.commands <= commands
    assert c.mongo_ops <= mongo_ops


def test_page_cost_does_not_grow_with_traffic(staff_client):
    workload()
    staff_client.get(reverse("hotcache:reports"))
    with count_redis() as quiet:
        staff_client.get(reverse("hotcache:reports"))
    for i in range(300):
        metering.event("ratelimit", f"allowed:rule{i % 25}")
    metering.flush()
    with count_redis() as busy:
        staff_client.get(reverse("hotcache:reports"))
    assert (busy.round_trips, busy.commands) == (quiet.round_trips, quiet.commands)


def test_overview_shows_the_real_servers_connections_from_server_status(staff_client, real_mongo):
    """The overview page's server figure is serverStatus.connections.current of the real server."""
    response = staff_client.get(reverse("hotcache:reports"))
    current = real_mongo.client().admin.command("serverStatus")["connections"]["current"]
    mongo = response.context["ov"].mongo
    assert mongo.server_source == "serverStatus" and mongo.server_status["current"] == mongo.server_limit.value
    # Read moments apart: only the connections the assertion's own client opened in between differ.
    assert mongo.server_limit.value <= current <= mongo.server_limit.value + 3
    assert f"Server connections (serverStatus)</th><td class=\"n\">{mongo.server_limit.value} of 500" in (
        response.content.decode()
    )


@pytest.mark.parametrize("page", PAGES)
def test_redis_down_still_renders_with_a_banner(staff_client, redis_down, page):
    metering.event("users", "hit", 3)
    response = staff_client.get(url(page))
    assert response.status_code == 200
    assert "Redis is unavailable" in response.content.decode()
