"""API keys glue: the require_api_key decorator (sync and async), the apikeys command, checks and the Celery task."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from hotcache import apikeys
from hotcache.testing import mongo_down


@pytest.fixture(autouse=True)
def _demo_urls(settings):
    settings.ROOT_URLCONF = "config.demo.urls"


@pytest.fixture
def client():
    return Client(raise_request_exception=False)


def test_valid_key_in_authorization_header_reaches_the_view(client):
    new = apikeys.create("alice", daily_limit=3)
    response = client.get("/api/usage/", HTTP_AUTHORIZATION=f"Api-Key {new.raw_key}")
    assert response.status_code == 200
    assert response.json() == {"key_id": new.key_id, "owner": "alice", "used_today": 1, "remaining": 2}


def test_valid_key_in_x_api_key_header_reaches_the_view(client):
    new = apikeys.create("alice")
    assert client.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 200


def test_async_view_is_protected_too(client):
    new = apikeys.create("alice")
    assert client.get("/api/usage-async/").status_code == 401
    response = client.get("/api/usage-async/", HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 200 and response.json()["used_today"] == 1


def test_async_wrapper_is_a_coroutine_function():
    from asgiref.sync import iscoroutinefunction

    from config.demo import views

    assert iscoroutinefunction(views.api_usage_async)
    request = __import__("django.test", fromlist=["RequestFactory"]).RequestFactory().get("/")
    assert async_to_sync(views.api_usage_async)(request).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Api-Key"},
        {"HTTP_AUTHORIZATION": "Api-Key "},
        {"HTTP_AUTHORIZATION": "Api-Key  abcdefgh." + "a" * 43},
        {"HTTP_AUTHORIZATION": "Api-Key abcdefgh. " + "a" * 42},
        {"HTTP_AUTHORIZATION": "Api-Key " + "k" * 10_240},
        {"HTTP_AUTHORIZATION": "Api-Key abcdefgh.é" + "a" * 42},
        {"HTTP_AUTHORIZATION": "Api-Key abcdefgh.\u2603" + "a" * 42},
        {"HTTP_AUTHORIZATION": "Bearer abc"},
        {"HTTP_X_API_KEY": ""},
        {"HTTP_X_API_KEY": " "},
        {"HTTP_X_API_KEY": "x" * 10_240},
        {"HTTP_X_API_KEY": "ü" * 51},
        {"HTTP_X_API_KEY": "abcdefgh." + "Z" * 43},  # well-formed, unknown
    ],
)
def test_missing_or_malformed_keys_get_401_json_never_500(client, headers):
    response = client.get("/api/usage/", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"
    assert response.json()["error"] in ("api_key_required", "invalid_api_key")


def test_valid_key_as_a_bearer_token_reaches_the_view(client):
    new = apikeys.create("alice")
    response = client.get("/api/usage/", HTTP_AUTHORIZATION=f"Bearer {new.raw_key}")
    assert response.status_code == 200 and response.json()["key_id"] == new.key_id


def test_a_bearer_token_that_is_not_a_key_is_no_key_and_never_hides_x_api_key(client):
    new = apikeys.create("alice")
    response = client.get("/api/usage/", HTTP_AUTHORIZATION="Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")
    assert response.status_code == 401 and response.json()["error"] == "api_key_required"
    both = {"HTTP_AUTHORIZATION": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "HTTP_X_API_KEY": new.raw_key}
    assert client.get("/api/usage/", **both).status_code == 200


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, None),
        ({"HTTP_AUTHORIZATION": "Api-Key k1", "HTTP_X_API_KEY": "k2"}, "k1"),  # Api-Key first, as sent
        ({"HTTP_AUTHORIZATION": "api-key k1"}, "k1"),
        ({"HTTP_X_API_KEY": "k2"}, "k2"),
        ({"HTTP_AUTHORIZATION": "Bearer " + "abcdefgh." + "a" * 43, "HTTP_X_API_KEY": "k2"}, "k2"),
        ({"HTTP_AUTHORIZATION": "bearer " + "abcdefgh." + "a" * 43}, "abcdefgh." + "a" * 43),
        ({"HTTP_AUTHORIZATION": "Bearer abcdefgh." + "a" * 42}, None),  # not the shape of a key
        ({"HTTP_AUTHORIZATION": "Basic YWxpY2U6c2VjcmV0"}, None),
        ({"HTTP_AUTHORIZATION": b"Api-Key k1"}, None),
        ({"HTTP_X_API_KEY": 5}, None),
    ],
)
def test_key_from_headers_reads_api_key_then_the_header_then_a_key_shaped_bearer(meta, expected):
    assert apikeys.key_from_headers(meta) == expected


def test_key_from_request_follows_apikey_header(hotcache_config):
    from django.test import RequestFactory

    hotcache_config(APIKEY_HEADER="X-Partner-Key")
    request = RequestFactory().get("/", HTTP_X_PARTNER_KEY="k3", HTTP_X_API_KEY="k2")
    assert apikeys.key_from_request(request) == "k3"
    assert apikeys.key_from_request(object()) is None


def test_sync_result_keeps_its_old_name():
    assert apikeys.SyncResult is apikeys.UsageSyncResult
    assert apikeys.sync_usage().__class__ is apikeys.SyncResult


def test_revoked_key_gets_401(client):
    new = apikeys.create("alice")
    apikeys.revoke(new.key_id)
    assert client.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 401


def test_over_limit_gets_429_with_retry_after_until_utc_midnight(client, clock):
    clock.advance(86400 - clock.time() % 86400 - 90)  # 90 s before midnight UTC
    new = apikeys.create("alice", daily_limit=1)
    assert client.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code == 200
    response = client.get("/api/usage/", HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 429 and response["Retry-After"] == "90"
    assert response.json()["error"] == "daily_limit_exceeded"


def test_both_stores_down_gets_503_fail_closed(client, redis_down):
    new = apikeys.create("alice")
    with mongo_down():
        response = client.get("/api/usage/", HTTP_X_API_KEY=new.raw_key)
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1


def test_redis_down_still_serves_and_limits(client, redis_down):
    new = apikeys.create("alice", daily_limit=1)
    codes = [client.get("/api/usage/", HTTP_X_API_KEY=new.raw_key).status_code for _ in range(2)]
    assert codes == [200, 429]


def test_command_create_prints_the_raw_key_once_and_list_shows_only_the_prefix():
    out = StringIO()
    call_command("apikeys", "create", "alice", "--name", "ci", "--daily-limit", "5", stdout=out)
    text = out.getvalue()
    raw = text.split("api key: ")[1].split()[0]
    assert apikeys.check(raw).allowed
    listed = StringIO()
    call_command("apikeys", "list", stdout=listed)
    assert raw.split(".")[0] in listed.getvalue() and raw not in listed.getvalue()
    assert "alice" in listed.getvalue()


def test_command_revoke_usage_and_json_list():
    new = apikeys.create("bob", daily_limit=9)
    apikeys.check(new.raw_key)
    out = StringIO()
    call_command("apikeys", "usage", new.key_id, "--days", "2", "--json", stdout=out)
    assert [n for _, n in json.loads(out.getvalue())] == [1, 0]
    call_command("apikeys", "revoke", new.key_id, stdout=StringIO())
    listed = StringIO()
    call_command("apikeys", "list", "--owner", "bob", "--json", stdout=listed)
    rows = json.loads(listed.getvalue())
    assert rows[0]["key_id"] == new.key_id and rows[0]["revoked_at"] is not None and rows[0]["used_today"] == 1
    with pytest.raises(CommandError):
        call_command("apikeys", "revoke", "ak_missing", stdout=StringIO())


def test_sync_task_runs_on_a_real_worker(celery_worker):
    from hotcache.tasks import sync_apikey_usage

    new = apikeys.create("alice")
    apikeys.check(new.raw_key)
    result = sync_apikey_usage.delay().get(timeout=30)
    assert result["written"] == 1 and result["redis_available"] is True
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1


def test_sync_command_copies_the_counters_for_cron(raw_redis):
    new = apikeys.create("carol")
    apikeys.check(new.raw_key)
    apikeys.check(new.raw_key)
    out = StringIO()
    call_command("sync_apikey_usage", stdout=out)
    assert "Copied 1 (key, day) total(s) of 1 key(s) over 2 day(s)" in out.getvalue()
    assert apikeys.usage(new.key_id, days=1)[0][1] == 2
    as_json = StringIO()
    call_command("sync_apikey_usage", "--days", "3", "--json", stdout=as_json)
    assert json.loads(as_json.getvalue())["days"] == 3


def test_sync_command_exits_non_zero_naming_the_outage_and_loses_nothing():
    new = apikeys.create("dave")
    apikeys.check(new.raw_key)
    with mongo_down(), pytest.raises(CommandError, match=r"usage sync stopped: MongoUnavailable.*Nothing is lost"):
        call_command("sync_apikey_usage", stdout=StringIO())
    call_command("sync_apikey_usage", stdout=StringIO())
    assert apikeys.usage(new.key_id, days=1)[0][1] == 1


def test_sync_command_refuses_a_bad_window():
    with pytest.raises(CommandError, match="days"):
        call_command("sync_apikey_usage", "--days", "0", stdout=StringIO())


def test_beat_schedules_the_sync(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["hotcache-sync-apikey-usage"]
    assert entry["task"] == "hotcache.tasks.sync_apikey_usage"


@pytest.mark.parametrize(
    ("values", "check_id"),
    [
        ({"APIKEY_USAGE_RETENTION_DAYS": 1}, "hotcache.E040"),
        ({"APIKEY_USAGE_RETENTION_DAYS": "30"}, "hotcache.E004"),
        ({"APIKEY_CACHE_TTL": 0}, "hotcache.E004"),
        ({"APIKEY_HEADER": "X Api Key"}, "hotcache.E041"),
        ({"APIKEY_HEADER": "Authorization"}, "hotcache.E041"),
    ],
)
def test_checks_name_the_setting(hotcache_config, values, check_id):
    hotcache_config(**values)
    found = [m for m in run_checks() if m.id == check_id]
    assert found and next(iter(values)) in found[0].msg and found[0].hint


def test_default_settings_pass_the_checks():
    assert not [m for m in run_checks() if m.id in {f"hotcache.E04{i}" for i in range(10)}]
