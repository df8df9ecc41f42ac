"""hotcache.reports: the figures behind the admin pages and hotcache_status, after a known workload."""

import pytest

from hotcache import metering, reports
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.checks import check_reports
from hotcache.exceptions import MongoUnavailable
from hotcache.reports import _registry
from hotcache.testing import count_redis, mongo_down
from tests.reports.fixtures import empty_meter_hashes  # noqa: F401 - autouse


def warm():
    """Open hotcache's connection first: its handshake is metered under the feature that opens it."""
    redis_backend.call("warm", lambda r: r.ping())


def workload():
    warm()
    for _ in range(3):
        redis_backend.call("ratelimit", lambda r: r.exists("hc-billed-probe"))
    redis_backend.call("users", lambda r: r.exists("hc-billed-probe"))
    metering.event("ratelimit", "allowed", 5)
    metering.event("ratelimit", "denied", 2)
    metering.event("ratelimit", "allowed:login", 4)
    metering.event("ratelimit", "denied:login", 2)
    metering.event("ratelimit", "allowed:api", 1)
    metering.event("users", "hit", 8)
    metering.event("users", "miss", 2)
    metering.event("users", "fallback", 1)
    metering.event("mfa", "fallback", 3)
    metering.mongo_op("mfa", 4)
    assert metering.flush()


def by_feature(ov):
    return {f.feature: f for f in ov.features}


def test_overview_counts_commands_per_feature_from_the_flushed_meter():
    workload()
    metering.meter.reset()  # only what reached Redis remains
    ov = reports.overview()
    assert ov.redis_available
    feats = by_feature(ov)
    assert feats["ratelimit"].commands_today == 3 and feats["ratelimit"].round_trips == 3
    assert feats["users"].commands == 1
    assert feats["mfa"].mongo_ops == 4
    assert feats["ratelimit"].billed_today == 3 and feats["users"].billed == 1
    assert ov.commands_today.value == ov.days[0].billed >= 4
    day = ov.days[0]
    # The handshake's HELLO and the PING are sent, not billed (a SELECT of the test's database is billed). Not the
    # day's totals: a script (the meter's flush) is one command sent and every command it runs billed.
    assert day.commands_by_feature["warm"] > day.billed_by_feature.get("warm", 0)
    assert ov.commands_today.limit == 10_000 and ov.commands_today.setting == "REDIS_DAILY_COMMAND_BUDGET"
    assert len(ov.days) == 30


def test_overview_counts_fallback_events_per_feature():
    workload()
    ov = reports.overview()
    assert ov.fallbacks_today == {"users": 1, "mfa": 3}
    assert by_feature(ov)["mfa"].fallbacks == 3


def test_overview_lists_every_enabled_feature_even_without_data():
    ov = reports.overview(days=7)
    assert [f.feature for f in ov.features if f.shipped] == list(reports.FEATURE_TITLES)
    assert len(ov.days) == 7


def test_overview_lists_only_enabled_features_that_have_no_data(hotcache_config):
    hotcache_config(FEATURES=["users"])
    ov = reports.overview()
    assert [f.feature for f in ov.features if f.shipped] == ["users"]


def test_commands_over_budget_are_exceeded(hotcache_config):
    hotcache_config(REDIS_DAILY_COMMAND_BUDGET=3)
    workload()
    ov = reports.overview()
    assert ov.commands_today.exceeded
    assert ov.exceeded == [ov.commands_today]
    assert "REDIS_DAILY_COMMAND_BUDGET" in ov.exceeded[0].message()


def test_budget_warning_at_the_configured_percentage(hotcache_config):
    workload()
    used = reports.overview().commands_today.value
    # Between half and all of the budget used (the second overview adds a few commands of its own).
    hotcache_config(REDIS_DAILY_COMMAND_BUDGET=int(used * 1.5), REPORTS_WARNING_PERCENT=50)
    ov = reports.overview()
    assert ov.commands_today.level == "warning"
    assert any("Redis billed commands today" in w for w in ov.warnings)


def test_memory_from_info_on_a_real_redis():
    ov = reports.overview()
    assert ov.memory.value and ov.memory.value > 0
    assert ov.memory.limit == 256 * 1024 * 1024


def test_memory_over_the_limit_is_exceeded(hotcache_config):
    hotcache_config(REDIS_MEMORY_LIMIT=1024)
    ov = reports.overview()
    assert ov.memory.exceeded and "REDIS_MEMORY_LIMIT" in ov.memory.message()


def test_memory_unknown_on_a_server_without_info(fake_redis):
    ov = reports.overview()
    assert ov.redis_available
    assert ov.memory.value is None and ov.memory.level == "unknown"
    assert "not supported" in ov.memory.note


def test_mongo_pool_and_server_figures_per_store(mongo_store):
    """The stand-in has neither a pool nor serverStatus: no figures. A real server: this process's pool from
    pymongo's events, the server's connections from serverStatus."""
    ov = reports.overview()
    assert ov.mongo.pool_limit.limit == 10 and ov.mongo.server_limit.limit == 500
    if mongo_store.kind == "standin":
        assert not ov.mongo.pool.monitored
        assert ov.mongo.pool_limit.value is None and ov.mongo.server_limit.value is None
        assert ov.mongo.server_source == "unknown"
    else:
        assert ov.mongo.pool.monitored and ov.mongo.pool_limit.value == ov.mongo.pool.open >= 1
        assert ov.mongo.server_source == "serverStatus"
        assert ov.mongo.server_limit.value == ov.mongo.server_status["current"] >= ov.mongo.pool.open


def test_real_driver_pool_is_reported_against_the_server_limit(hotcache_config):
    # A real pymongo client (no server needed to read its pool listener): this process's figures.
    hotcache_config(MONGO_URL="mongodb://127.0.0.1:1/x", MONGO_SERVER_SELECTION_TIMEOUT_MS=100)
    ov = reports.overview()
    assert ov.mongo.pool.monitored
    assert ov.mongo.server_source == "this process"
    assert ov.mongo.server_limit.value == ov.mongo.pool.open
    assert ov.mongo.server_limit.percent == 0.0


def test_server_connections_from_server_status_against_the_limit(monkeypatch):
    # No MongoDB server runs here; serverStatus's answer is supplied as a real server would give it.
    monkeypatch.setattr(mongo, "server_status_connections", lambda: {"current": 400, "available": 100})
    ov = reports.overview()
    assert ov.mongo.server_source == "serverStatus"
    assert ov.mongo.server_limit.percent == 80.0 and ov.mongo.server_limit.level == "warning"


def test_redis_down_gives_local_figures_and_says_so(redis_down):
    metering.event("users", "hit", 2)
    ov = reports.overview()
    assert not ov.redis_available
    assert "unavailable" in ov.redis_note
    assert ov.memory.value is None
    assert ov.gate.state == "open"
    assert ov.days[0].commands == 0


def test_overview_costs_one_meter_round_trip_and_one_info(mongo_store):
    warm()
    before = metering.snapshot()
    with count_redis() as c:
        reports.overview(days=30)
    assert c.round_trips == 2
    # 30 daily meters + the published MongoDB pools in one pipeline, and INFO memory, commandstats and server
    # in another (free: not billed)
    assert c.by_feature["reports"] == 31 and c.by_feature["status"] == 3 and c.billed_by_feature["status"] == 0
    # MongoDB: one serverStatus where the store has one (a real server), nothing on the stand-in.
    server_status = 1 if mongo_store.kind == "real" else 0
    assert c.mongo_ops == metering.snapshot()["mongo:status"] - before["mongo:status"] == server_status
    with count_redis() as again:  # past days come from the per-process cache: only today is read
        reports.overview(days=30)
    assert again.round_trips == 2 and again.by_feature["reports"] == 2


def test_cached_past_days_expire(clock):
    warm()
    reports.overview(days=30)
    clock.advance(metering.PAST_DAYS_CACHE_SECONDS + 1)
    with count_redis() as c:
        reports.overview(days=30)
    assert c.by_feature["reports"] == 31


def test_overview_cost_does_not_grow_with_traffic():
    warm()
    reports.overview()  # fills the past-days cache, so both measured calls are warm
    with count_redis() as before:
        reports.overview()
    for i in range(200):
        metering.event("analytics", f"custom{i % 7}")
        redis_backend.call("analytics", lambda r: r.ping())
    metering.flush()
    with count_redis() as after:
        reports.overview()
    assert after.round_trips == before.round_trips and after.commands == before.commands


def test_users_summary_hit_ratio_and_queries_avoided():
    workload()
    s = reports.feature_summary("users", days=7)
    figures = {f.label: f.value for f in s.figures}
    assert figures["Cache hit ratio"] == "80.0%"
    assert figures["Database queries avoided"] == 8
    assert s.totals["hit"] == 8 and s.today["miss"] == 2
    assert (s.billed, s.round_trips, s.commands, s.billed_today) == (1, 1, 1, 1)
    assert s.as_dict()["per_day"][0] | {"billed": 1, "round_trips": 1, "commands": 1} == s.as_dict()["per_day"][0]


def test_ratelimit_summary_per_rule():
    workload()
    s = reports.feature_summary("ratelimit")
    section = next(sec for sec in s.sections if sec.title == "Per rule")
    assert section.rows == [["api", 1, 0, "0.0%"], ["login", 4, 2, "33.3%"]]
    assert "allowed:login" not in s.events
    assert {f.label: f.value for f in s.figures}["Denial rate"] == "28.6%"


def test_feature_without_data_is_an_empty_summary():
    s = reports.feature_summary("mfa")
    assert not s.has_data
    assert all(n == 0 for n in s.totals.values())
    assert s.events[:3] == ["issued", "verified", "failed"]


def test_unknown_events_become_extra_columns():
    metering.event("analytics", "custom_thing", 3)
    s = reports.feature_summary("analytics")
    assert s.events[-1] == "custom_thing" and s.totals["custom_thing"] == 3


def test_workbench_history_count_from_mongodb():
    coll = mongo.collection("workbench_history", feature="workbench")
    for i in range(3):
        coll.insert_one({"session": i})
    s = reports.feature_summary("workbench")
    section = next(sec for sec in s.sections if sec.title == "Persisted sessions in MongoDB")
    assert section.rows == [["workbench_history", 3]]


def test_workbench_history_with_mongodb_down_is_a_note():
    with mongo_down():
        s = reports.feature_summary("workbench")
    section = next(sec for sec in s.sections if sec.title.startswith("Persisted sessions"))
    assert section.rows == [] and "mongodb unavailable" in section.note


def test_registered_detail_adds_a_section(monkeypatch):
    monkeypatch.setattr(_registry, "_DETAILS", {})  # only the details registered here

    @reports.register_detail("apikeys")
    def detail(days):
        """Per-key usage"""
        return [reports.Section("Per key", ["Key", "Requests"], [["ab12", days]])]

    @reports.register_detail("apikeys")
    def broken(days):
        """Keys near their limit"""
        raise MongoUnavailable("down")

    s = reports.feature_summary("apikeys", days=5)
    assert [sec.title for sec in s.sections] == ["Per key", "Keys near their limit"]
    assert s.sections[0].rows == [["ab12", 5]]
    assert "unavailable" in s.sections[1].note


def test_unknown_feature_is_rejected():
    with pytest.raises(ValueError, match="unknown feature"):
        reports.feature_summary("nope")
    with pytest.raises(ValueError, match="unknown feature"):
        reports.register_detail("nope")


def test_days_are_clamped_to_what_the_meter_keeps():
    assert reports.report_days(0) == 1 and reports.report_days(400) == reports.MAX_DAYS
    assert len(reports.overview(days=99).days) == reports.MAX_DAYS


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("REPORTS_DAYS", 0, "hotcache.E070"),
        ("REPORTS_DAYS", 41, "hotcache.E070"),
        ("REPORTS_DAYS", "30", "hotcache.E070"),
        ("REPORTS_WARNING_PERCENT", 0, "hotcache.E071"),
        ("REPORTS_WARNING_PERCENT", 120, "hotcache.E071"),
        ("REPORTS_PERMISSION", "view_user", "hotcache.E072"),
    ],
)
def test_report_settings_checks_name_the_setting(hotcache_config, name, value, code):
    hotcache_config(**{name: value})
    messages = check_reports()
    assert [m.id for m in messages] == [code]
    assert name in messages[0].msg and messages[0].hint


def test_default_report_settings_pass_the_checks():
    assert check_reports() == []


def test_mongodb_connections_of_the_whole_deployment_from_published_pools(raw_redis, key_prefix, mongo_store):
    """Without serverStatus (the stand-in has none; a real server refuses it as Atlas does without the
    clusterMonitor role), the server figure is the sum of the pools hotcache's processes published, this
    process's own included when it has one."""
    import contextlib
    import json
    import time

    from hotcache import keys

    key = keys.tagged("meter", "usage", "pools")
    now = time.time()
    raw_redis.hset(key, mapping={
        "web-1:101": json.dumps({"open": 4, "peak_open": 5, "at": now - 30}),
        "web-2:202": json.dumps({"open": 3, "peak_open": 3, "at": now - 60}),
        "worker:303": json.dumps({"open": 9, "peak_open": 9, "at": now - 3600}),  # silent: not counted
        "gone:404": json.dumps({"open": 2, "at": now - 2 * 86400}),  # dead a day: deleted
    })
    refused = (
        mongo_store.fail_point(["serverStatus"], error_code=13, times=None)  # 13: Unauthorized
        if mongo_store.kind == "real"
        else contextlib.nullcontext()
    )
    try:
        with refused:
            ov = reports.overview()
        assert ov.mongo.server_status is None
        own = ov.mongo.pool.open if mongo_store.kind == "real" else 0
        assert ov.mongo.server_limit.value == 7 + own
        assert ov.mongo.server_source == ("3 processes" if mongo_store.kind == "real" else "2 processes")
        assert not raw_redis.hexists(key, "gone:404") and raw_redis.hexists(key, "worker:303")
    finally:
        raw_redis.delete(key)


def test_a_meter_flush_publishes_this_processs_pool(monkeypatch, raw_redis):
    from hotcache.backends import mongo

    monkeypatch.setattr(mongo, "local_pool_stats", lambda: mongo.PoolStats(open=2, peak_open=3, max_pool_size=10))
    redis_backend.call("warm", lambda r: r.ping())
    assert metering.flush()
    published = metering.read(1).pools
    assert len(published) == 1 and next(iter(published.values()))["open"] == 2
