"""Billed commands are metered exactly: for each operation, the meter's billed count equals what the server
executed (INFO commandstats, free commands excluded), command for command.

The shared test Redis cannot give one client's figures (other runs use it; CONFIG RESETSTAT would reset
everyone's), so these tests run on a redis-server of their own. Each prints its figures (``pytest -s``): the
per-operation table in docs/operations/budgets.md is re-measured with them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_py
from django.contrib.auth import get_user_model

from hotcache import analytics, apikeys, metering, mfa, users, workbench
from hotcache.backends import redis as redis_backend
from hotcache.ratelimit import Limit, evaluate
from hotcache.testing import RedisCount, count_redis, redis_server


@pytest.fixture(scope="module")
def own_server() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def server(own_server: str, settings: Any) -> Iterator[redis_py.Redis]:
    """hotcache on the module's own redis-server; yields a plain client for INFO commandstats (free commands)."""
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": own_server}}
    redis_backend.reset()
    client = redis_py.Redis.from_url(own_server)
    client.info("commandstats")  # its own connection set-up happens here, outside any measurement
    yield client
    client.close()


@contextlib.contextmanager
def measured(server: redis_py.Redis) -> Iterator[tuple[RedisCount, list[int]]]:
    """The meter's counts inside the block and, after it, the server's billed commands in it."""
    executed: list[int] = []
    before = metering.server_billed(server.info("commandstats"))
    with count_redis() as c:
        yield c, executed
    executed.append(metering.server_billed(server.info("commandstats")) - before)


def figures(name: str, c: RedisCount, executed: list[int]) -> None:
    """Meter == server, exactly; the figures printed for the docs' table."""
    assert c.billed == executed[0], f"{name}: meter {c.billed} billed, server executed {executed[0]}"
    print(f"billed: {name}: {c.billed} billed, {c.commands} sent, {c.round_trips} round trips")


def check(server: redis_py.Redis, name: str, op: Callable[[], Any]) -> int:
    """Run ``op`` once warm (connection, scripts loaded), then measured: meter == server, exactly."""
    op()
    with measured(server) as (c, executed):
        op()
    figures(name, c, executed)
    return c.billed


def _id() -> str:
    return uuid.uuid4().hex[:12]


def test_rate_limit_one_rule(server):
    who = _id()
    billed = check(server, "rate limit, 1 rule", lambda: evaluate([Limit("one", who, 1000, 60)]))
    assert billed > 1  # EVALSHA plus what the script ran


def test_rate_limit_three_rules(server):
    who = _id()
    rules = [Limit("a", who, 1000, 60), Limit("b", who, 1000, 3600), Limit("c", who, 1000, 10)]
    check(server, "rate limit, 3 rules", lambda: evaluate(rules))


def test_analytics_track_without_visitor(server):
    assert analytics.track("signup", path="/join") == "redis"
    check(server, "analytics.track", lambda: analytics.track("signup", path="/join"))


def test_analytics_track_with_visitor(server):
    check(server, "analytics.track, visitor id", lambda: analytics.track("view", path="/", visitor_id=_id()))


def test_apikeys_check(server):
    raw = apikeys.create("alice").raw_key
    check(server, "apikeys.check", lambda: apikeys.check(raw))


def test_workbench_save_and_load(server):
    sid = _id()
    workbench.save(sid, {"n": 0}, owner="alice")
    check(server, "workbench.save", lambda: workbench.save(sid, {"n": 1}, owner="alice"))
    check(server, "workbench.load", lambda: workbench.load(sid))


def test_mfa_issue_and_verify(server):
    users_ = iter(range(10))
    codes: dict[str, str] = {}

    def issue() -> None:
        user = f"u{_id()}{next(users_)}"
        codes[user] = mfa.issue(user)

    check(server, "mfa.issue", issue)
    user, code = next(reversed(codes.items()))
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    with measured(server) as (c, executed):
        assert not mfa.verify(user, wrong)
    figures("mfa.verify, wrong code", c, executed)
    with measured(server) as (c, executed):
        assert mfa.verify(user, code)
    figures("mfa.verify", c, executed)


@pytest.mark.django_db
def test_cached_user_hit(server):
    user = get_user_model().objects.create_user(username=f"u{_id()}", password="pw")
    users.get_cached_user(user.pk)  # the miss fills the cache
    check(server, "cached user hit", lambda: users.get_cached_user(user.pk))


def test_meter_flush(server):
    def flush() -> None:
        for feature in ("alpha", "beta", "gamma"):
            redis_backend.call(feature, lambda r: r.get("k"))
            metering.event(feature, "hit")
        with measured(server) as (c, executed):
            assert metering.flush() is True
        figures("meter flush", c, executed)

    flush()  # loads the script
    flush()


def test_a_noscript_retry_bills_the_refused_evalsha_and_the_eval(server):
    who = _id()
    evaluate([Limit("one", who, 1000, 60)])
    server.script_flush()
    with measured(server) as (c, executed):
        evaluate([Limit("one", who, 1000, 60)])
    figures("rate limit, 1 rule, NOSCRIPT retry", c, executed)
    with measured(server) as (warm, _):
        evaluate([Limit("one", who, 1000, 60)])
    assert c.billed == warm.billed + 1  # the EVALSHA that NOSCRIPT refused


def test_pipelines_and_transactions_bill_every_command_and_free_commands_none(server):
    def both(r: redis_py.Redis) -> None:
        p = r.pipeline(transaction=False)
        p.set("a", 1)
        p.ping()
        p.get("a")
        p.execute()
        t = r.pipeline(transaction=True)
        t.incr("a")
        t.expire("a", 60)
        t.execute()
        r.info("server")

    redis_backend.call("t", both)
    with measured(server) as (c, executed):
        redis_backend.call("t", both)
    # SET, GET; MULTI, INCR, EXPIRE, EXEC. PING and INFO are free.
    assert c.billed == executed[0] == 6
    assert c.commands == 8 and c.round_trips == 3
