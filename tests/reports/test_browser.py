"""A real headless Chromium logs into the admin with the login form, opens every report page, checks the figures
and saves screenshots under artifacts/ (their paths are printed)."""

import os
import re
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from hotcache import analytics, apikeys, metering
from hotcache.backends import redis as redis_backend
from hotcache.conf import FEATURES
from hotcache.testing import frozen_clock
from tests.analytics_fixtures import _empty_fallback_buffer  # noqa: F401 - autouse (no analytics keys left over)
from tests.reports.fixtures import clear_meter_hashes, empty_meter_hashes  # noqa: F401 - autouse

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def history(days=10):
    """Earlier UTC days with varying traffic, written through the meter as it happened on those days."""
    now = time.time()
    for back in range(days, 0, -1):
        with frozen_clock(start=now - back * 86400):
            for _ in range(20 + (back * 37) % 60):
                redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
            for _ in range(10 + (back * 13) % 30):
                redis_backend.call("users", lambda r: r.exists("hc-billed-probe"))
            metering.event("users", "hit", 80 + back)
            metering.event("users", "miss", 6)
            assert metering.flush()


def workload():
    redis_backend.call("warm", lambda r: r.ping())
    for _ in range(12):
        redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
    for _ in range(5):
        redis_backend.call("users", lambda r: r.exists("hc-billed-probe"))
    metering.event("ratelimit", "allowed", 40)
    metering.event("ratelimit", "denied", 10)
    metering.event("ratelimit", "allowed:login-burst", 15)
    metering.event("ratelimit", "denied:login-burst", 9)
    metering.event("ratelimit", "allowed:api", 25)
    metering.event("ratelimit", "denied:api", 1)
    metering.event("users", "hit", 95)
    metering.event("users", "miss", 5)
    metering.event("mfa", "issued", 6)
    metering.event("mfa", "verified", 5)
    metering.event("mfa", "failed", 2)
    metering.event("workbench", "fallback", 1)
    metering.event("sessions", "hit", 45)
    metering.event("sessions", "miss", 5)
    metering.event("sessions", "deferred", 2)
    assert metering.flush()


def feature_workload():
    """Analytics: page_view 7 (5 synced to MongoDB, 2 only in Redis), signup 3. API keys: alice at her limit of 5
    (one more refused), bob at 8 of 10, carol revoked. Returns alice's key prefix."""
    for uid in (1, 2, 3):
        analytics.track("signup", path="/join", user_id=uid)
    analytics.track("page_view", path="/", visitor_id="a", count=5)
    assert not analytics.sync(include_current_hour=True).error
    analytics.track("page_view", path="/pricing", visitor_id="b", count=2)
    alice = apikeys.create("alice", "web", daily_limit=5)
    bob = apikeys.create("bob", "cli", daily_limit=10)
    carol = apikeys.create("carol", "old")
    for _ in range(6):
        apikeys.check(alice.raw_key)
    for _ in range(8):
        apikeys.check(bob.raw_key)
    apikeys.revoke(carol.key_id)
    assert metering.flush()
    return apikeys.get(alice.key_id).prefix


@pytest.mark.slow
def test_admin_reports_in_a_real_browser(live_server, transactional_db, monkeypatch, raw_redis):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements/test.txt")
    if not Path(CHROMIUM).exists():
        # CI (.ci/run sets CI=true and installs chromium) must run this test; a developer's machine may lack it.
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is needed: apt-get install -y chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); CI runs this test")
    User.objects.create_user("boss", password="s3cret-pw", is_staff=True)
    clear_meter_hashes(raw_redis)  # creating the user is itself metered (the user cache invalidates it)
    history()
    workload()
    alice_prefix = feature_workload()
    # Playwright's sync API runs an asyncio loop in this thread; Django then refuses ORM calls from it
    # (SynchronousOnlyOperation) during fixture teardown (transactional_db's flush). The ORM work here is
    # plain synchronous code, so the guard is lifted for this test only.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    shots = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live_server.url}/hotcache/reports/")
            assert "/admin/login/" in page.url  # anonymous: sent to the admin login
            page.fill("#id_username", "boss")
            page.fill("#id_password", "s3cret-pw")
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/hotcache/reports/")

            assert page.locator("#hc-feature-ratelimit td.n").first.inner_text() == "12"
            assert page.locator("#hc-feature-users td.n").first.inner_text() == "5"
            assert page.locator("#hc-fallbacks-today").inner_text() == "1"
            assert "of 10,000" in page.locator("#hc-limit-redis_daily_command_budget").inner_text()
            assert "256.0\xa0MB" in page.locator("#hc-limit-redis_memory_limit").inner_text()
            assert page.locator("svg rect").count() > 3
            shots.append(ARTIFACTS / "reports-overview.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            expected = {
                "ratelimit": ["Denial rate", "20.0%", "login-burst", "37.5%"],
                "users": ["Cache hit ratio", "93.6%", "Database queries avoided", "950"],  # 95+855 hits, 5+60 misses
                "mfa": ["Codes issued", "Verification success rate", "71.4%"],
                "apikeys": ["Keys by use today", "near or at their daily limit today", "revoked and expired keys"],
                "workbench": ["Persisted sessions in MongoDB", "workbench_history", "Sessions in Redis now"],
                "analytics": ["Events per hour", "Top events", "Top paths", "Distinct visitors"],
                "sessions": ["Cache hit ratio", "90.0%", "Database queries avoided", "owed after an outage"],
            }
            for feature in FEATURES:
                page.goto(f"{live_server.url}/hotcache/reports/{feature}/")
                body = page.locator("#content").inner_text().lower()  # card titles are upper-cased by CSS
                for fragment in expected[feature]:
                    assert fragment.lower() in body, (feature, fragment)
                if feature == "analytics":
                    assert re.search(r"page_view\s+7\b", body)  # top events: MongoDB 5 + Redis 2
                if feature == "apikeys":
                    alice_row = page.locator("tr", has_text=alice_prefix).first.inner_text().split()
                    assert alice_row[:7] == [alice_prefix, "web", "alice", "5", "5", "100.0%", "at"], alice_row
                shots.append(ARTIFACTS / f"reports-{feature}.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

            page.goto(f"{live_server.url}/admin/")
            assert page.locator(".app-hotcache").count() == 1
            shots.append(ARTIFACTS / "reports-admin-index.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
        finally:
            browser.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
