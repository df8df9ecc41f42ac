"""Billed commands are metered exactly: for each operation, the meter's billed count equals what the server
executed (INFO commandstats, free commands excluded), command for command.

The shared test Redis cannot give one client's figures (other runs use it; CONFIG RESETSTAT would reset
everyone's), so these tests run on a redis-server of their own. Each prints its figures (``pytest -s``): the
per-operation table in docs/operations/budgets.md is re-measured with them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_py
from django.contrib.auth import get_user_model

from hotcache import analytics, apikeys, metering, mfa, users, workbench
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit import Limit, evaluate
from hotcache.testing import RedisCount, count_redis, redis_server
from tests.support.redis_cluster import on_cluster


@pytest.fixture(scope="module")
def own_server() -> Iterator[str]:
    with redis_server() as url:
        yield url


# A replica's acknowledgements to its master (every second): replication traffic, not a client's commands.
_REPLICATION = {"cmdstat_replconf", "cmdstat_psync", "cmdstat_sync"}


class _ClusterServer:
    """The session's Redis Cluster as one server for these contracts: INFO commandstats summed over the masters
    (a replica's replayed commands are not billed twice); other commands go through a cluster client. Under
    HOTCACHE_TEST_REDIS_TARGET=cluster the run has the cluster to itself, as the single server's tests have
    their own redis-server."""

    def __init__(self, url: str) -> None:
        from redis.cluster import RedisCluster

        self.client = RedisCluster.from_url(url)

    def info(self, section: str) -> dict[str, Any]:
        summed: dict[str, dict[str, int]] = {}
        for node in self.client.get_primaries():
            stats = self.client.get_redis_connection(node).info(section)
            for name, figures in stats.items():
                if isinstance(figures, dict) and name not in _REPLICATION:
                    into = summed.setdefault(name, {})
                    for field in ("calls", "rejected_calls"):
                        into[field] = into.get(field, 0) + int(figures.get(field, 0))
        return summed

    def load_scripts(self) -> None:
        """Every script hotcache has loaded so far, on every master (outside any measurement)."""
        for node in self.client.get_primaries():
            connection = self.client.get_redis_connection(node)
            for body, _ in list(redis_backend.Script._cache.values()):
                connection.script_load(body)

    def script_flush(self) -> None:
        for node in self.client.get_primaries():
            self.client.get_redis_connection(node).script_flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def server(own_server: str, settings: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """hotcache on the module's own redis-server; yields a plain client for INFO commandstats (free commands).
    Under HOTCACHE_TEST_REDIS_TARGET=cluster: hotcache stays on the session's cluster, measured on its masters."""
    if on_cluster():
        cluster = _ClusterServer(request.getfixturevalue("cluster_redis").url)
        redis_backend.reset()
        cluster.info("commandstats")
        yield cluster
        cluster.close()
        return
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": own_server}}
    redis_backend.reset()
    client = redis_py.Redis.from_url(own_server)
    client.info("commandstats")  # its own connection set-up happens here, outside any measurement
    yield client
    client.close()


def _billed_by_command(server: redis_py.Redis) -> Counter[str]:
    stats = server.info("commandstats")
    return Counter({name[8:]: metering.server_billed({name: s}) for name, s in stats.items()})


@contextlib.contextmanager
def measured(server: Any, *, warm_nodes: bool = True) -> Iterator[tuple[RedisCount, list[Any]]]:
    """The meter's counts inside the block and, after it, the server's billed commands in it (and by command).
    On the cluster, warm means every script loaded on every master (``warm_nodes``): a warm-up on one key loads
    it on that key's node only, and an operation on a new id may land on another (NOSCRIPT, EVAL: one round trip
    and its billed EVALSHA more, once per node and script)."""
    if warm_nodes and isinstance(server, _ClusterServer):
        server.load_scripts()
    executed: list[Any] = []
    before = _billed_by_command(server)
    with count_redis() as c:
        yield c, executed
    delta = _billed_by_command(server)
    delta.subtract(before)
    executed.extend([delta.total(), +delta])


def figures(name: str, c: RedisCount, executed: list[Any]) -> None:
    """Meter == server, exactly; the figures printed for the docs' table (with what the server ran)."""
    assert c.billed == executed[0], f"{name}: meter {c.billed} billed, server executed {executed[0]}: {executed[1]}"
    ran = ", ".join(f"{n} {cmd.upper()}" for cmd, n in sorted(executed[1].items()))
    print(f"billed: {name}: {c.billed} billed, {c.commands} sent, {c.round_trips} round trips: {ran}")


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
    billed = check(server, "rate limit, 1 rule", lambda: evaluate([Limit("one", who, 1000, 86400)]))
    assert billed <= 3  # issue 17: at most 1 + 2 per rule (EVALSHA, TIME, one BITFIELD)


def test_rate_limit_three_rules(server):
    who = _id()
    rules = [Limit("a", who, 1000, 60), Limit("b", who, 1000, 3600), Limit("c", who, 1000, 10)]
    billed = check(server, "rate limit, 3 rules", lambda: evaluate(rules))
    assert billed <= 7  # 1 + 2 per rule (the 10 s rule may start a window in between: one SET more)


def test_rate_limit_averaged_over_warm_requests_and_a_refusal(server):
    """1,000 warm requests on one counter (first writes of a window included), then a refusal Redis decides."""
    who = _id()
    lim = Limit("avg", who, 1001, 86400)
    evaluate([lim])
    with measured(server) as (c, executed):
        for _ in range(1000):
            evaluate([lim])
    figures("rate limit, 1 rule x 1000", c, executed)  # the meter's own flushes run in between: billed too
    assert c.billed_by_feature["ratelimit"] <= 3 * 1000
    with measured(server) as (c, executed):
        assert not evaluate([lim]).allowed  # the 1,002nd: refused, its speculative increment undone
    figures("rate limit, 1 rule, refused", c, executed)
    assert c.billed_by_feature["ratelimit"] <= 4


def averaged(server: redis_py.Redis, name: str, op: Callable[[int], Any], n: int = 1000, feature: str = "") -> float:
    """Billed commands per operation over ``n`` warm operations (``op(i)``), meter == server, exactly; only
    ``feature``'s when given (the meter's own flushes, about one per 500 operations, left out)."""
    op(-1)
    with measured(server) as (c, executed):
        for i in range(n):
            op(i)
    figures(f"{name}, {n} operations", c, executed)
    return (c.billed_by_feature[feature] if feature else c.billed) / n


def test_analytics_track_without_visitor(server):
    assert analytics.track("signup", path="/join") == "redis"
    assert check(server, "analytics.track", lambda: analytics.track("signup", path="/join")) <= 5
    paths = [f"/p{i}" for i in range(20)]
    assert averaged(server, "analytics.track, 20 paths", lambda i: analytics.track("view", path=paths[i % 20])) <= 5


def test_analytics_track_with_visitor(server):
    billed = check(server, "analytics.track, visitor id", lambda: analytics.track("view", path="/", visitor_id=_id()))
    assert billed == 4  # EVALSHA, HINCRBY, PFADD, SET: the hour's marks known from the warm-up's reply (5 before)
    per_op = averaged(server, "analytics.track, new visitor each", lambda i: analytics.track("v", visitor_id=_id()))
    assert per_op <= 6


def test_analytics_batch(server, hotcache_config):
    from hotcache.analytics._batch import batch

    hotcache_config(ANALYTICS_BATCH_SECONDS=3600)

    def interval() -> None:
        for i in range(100):
            assert analytics.track("view", path=f"/p{i % 5}", visitor_id=_id()) == "batched"
        assert analytics.flush_batch() == 100

    try:
        billed = check(server, "analytics batch, 100 events on 5 paths with visitors", interval)
    finally:
        batch.stop()
    # EVALSHA, a HINCRBY per path, one PFADD, the writer's SET: the hour's marks of the event are known from the
    # warm-up interval's reply (their HINCRBY is sent once per hour and event by a writer)
    assert billed == 1 + 5 + 1 + 1


def test_apikeys_check(server):
    raw = apikeys.create("alice").raw_key
    assert check(server, "apikeys.check", lambda: apikeys.check(raw)) <= 4  # EVALSHA, GET, INCR, SET ... GET
    limited = apikeys.create("bob", daily_limit=10**6).raw_key
    assert averaged(server, "apikeys.check, daily limit", lambda i: apikeys.check(limited), feature="apikeys") == 4


def test_apikeys_check_over_the_limit(server):
    raw = apikeys.create("alice", daily_limit=1).raw_key
    apikeys.check(raw)
    assert check(server, "apikeys.check, over the limit", lambda: apikeys.check(raw)) <= 4  # the INCR taken back


def test_workbench_save_and_load(server):
    sid = _id()
    workbench.save(sid, {"n": 0}, owner="alice")
    assert check(server, "workbench.save", lambda: workbench.save(sid, {"n": 1}, owner="alice")) <= 4  # issue 17
    assert check(server, "workbench.load", lambda: workbench.load(sid)) <= 2


def test_workbench_save_that_creates_a_session(server):
    """A blind save of a new session: the compare (GET fence, HMGET) and the lifetime (HSET, EXPIRE, ZADD, EXPIRE
    of the index), no EXISTS (8 before: the HMGET's fields tell a hash hotcache wrote)."""
    workbench.save(_id(), {"n": 0})  # the script is loaded
    assert check(server, "workbench.save, creating", lambda: workbench.save(_id(), {"n": 0})) == 7


def test_session_read_with_its_user(server, settings):
    """The session and its cached user in one round trip: session_user_read.lua (3) from a process that has not
    seen the session, then one MGET of the four keys (1) once it knows which user the entry names."""
    from hotcache.sessions import cache as sessions
    from hotcache.sessions import combined

    settings.HOTCACHE = {**settings.HOTCACHE, "KEY_PREFIX": f"b{_id()}"}
    key = _id() + "abcdefgh"
    assert sessions.fill(key, None, "data", 4_102_444_800_000, "42", 3600)
    sessions.forget_users_seen()
    combined.read_with_user(key)  # loads the script on this server
    sessions.forget_users_seen()

    def unseen() -> None:
        sessions.forget_users_seen()
        combined.read_with_user(key)

    # On a cluster the script cannot run (its user keys are undeclared): the session's MGET (not seen), the
    # session's and the user's MGETs on their nodes (seen), one round trip per node.
    assert check(server, "session + user, not seen", unseen) == (1 if on_cluster() else 3)
    assert check(server, "session + user, seen", lambda: combined.read_with_user(key)) == (2 if on_cluster() else 1)


def test_workbench_lifetime_refresh_and_its_average(server, clock):
    """Once per refresh interval a save or load also renews the session's TTL and index entry: what that
    costs, and the average over 1,000 warm operations at one save or load per second (the refresh included)."""
    from hotcache.workbench import _layout

    sid = _id()
    workbench.save(sid, {"n": 0})
    every = _layout._refresh_every()
    clock.advance(every)
    workbench.load(sid)  # loads wb_load.lua on this server
    clock.advance(every)
    with measured(server) as (c, executed):
        workbench.save(sid, {"n": 1})
    figures("workbench.save, refreshing", c, executed)
    clock.advance(every)
    with measured(server) as (c, executed):
        workbench.load(sid)
    figures("workbench.load, refreshing", c, executed)
    with measured(server) as (saves, executed):
        for i in range(500):
            clock.advance(1)
            workbench.save(sid, {"n": i + 2})
    assert saves.billed == executed[0]
    with measured(server) as (loads, executed):
        for _ in range(500):
            clock.advance(1)
            workbench.load(sid)
    assert loads.billed == executed[0]
    save_avg = saves.billed_by_feature["workbench"] / 500  # the meter's own flushes aside
    load_avg = loads.billed_by_feature["workbench"] / 500
    print(f"billed: workbench, 1 op/s: save {save_avg:.3f}, load {load_avg:.3f} per operation (average of 500)")
    assert save_avg <= 4 + 3 / every + 0.01 and load_avg <= 2 + 7 / every + 0.01


def test_mfa_issue_and_verify(server):
    codes: dict[str, str] = {}

    def issue() -> None:
        user = f"u{_id()}"  # a new user each time: the resend cooldown refuses a second code at once
        codes[user] = mfa.issue(user)

    assert check(server, "mfa.issue", issue) <= 5  # issue 17's target
    (warm_user, warm_code), (user, code) = codes.items()

    def wrong(c: str) -> str:
        return "0" * len(c) if c != "0" * len(c) else "1" * len(c)

    assert not mfa.verify(warm_user, wrong(warm_code))  # the verify script is loaded
    with measured(server) as (c, executed):
        assert not mfa.verify(user, wrong(code))
    figures("mfa.verify, wrong code", c, executed)
    assert c.billed <= 4 and c.round_trips == 1  # issue 17's target
    with measured(server) as (c, executed):
        assert mfa.verify(user, code)
    figures("mfa.verify", c, executed)
    assert c.billed <= 4 and c.round_trips == 1


def test_mfa_resend_and_a_guess_for_a_user_without_a_code(server, clock):
    """The other warm paths: a second code after the cooldown, a refused resend, a guess with no code."""
    from hotcache.conf import hotcache_settings

    user = f"u{_id()}"
    mfa.issue(user)
    clock.advance(hotcache_settings.MFA_RESEND_COOLDOWN)
    with measured(server) as (c, executed):
        mfa.issue(user)
    figures("mfa.issue, resend", c, executed)
    assert c.billed <= 5
    with measured(server) as (c, executed), pytest.raises(mfa.ResendTooSoon):
        mfa.issue(user)
    figures("mfa.issue, refused (cooldown)", c, executed)
    with measured(server) as (c, executed):
        assert not mfa.verify(f"u{_id()}", "123456")
    figures("mfa.verify, no code", c, executed)
    assert c.billed <= 4


@pytest.mark.django_db
def test_cached_user_hit(server):
    user = get_user_model().objects.create_user(username=f"u{_id()}", password="pw")
    users.get_cached_user(user.pk)  # the miss fills the cache
    check(server, "cached user hit", lambda: users.get_cached_user(user.pk))


@pytest.mark.django_db
def test_cached_user_invalidation(server):
    """user_invalidate.lua: EVALSHA, DEL (entry), INCR (version); a new counter adds its EXPIRE (4 before: every
    invalidation renewed the TTL)."""
    from hotcache.users import cache as user_cache
    from hotcache.users.entries import version_key

    user = get_user_model().objects.create_user(username=f"u{_id()}", password="pw")
    users.invalidate_user(user.pk)  # the script is loaded
    server.delete(version_key(str(user.pk)))
    with measured(server) as (c, executed):
        assert users.invalidate_user(user.pk)  # the counter is new here: its TTL is set
    figures("cached user invalidation, new counter", c, executed)
    assert c.billed == 4
    assert check(server, "cached user invalidation", lambda: users.invalidate_user(user.pk)) == 3
    assert 0 < server.ttl(version_key(str(user.pk))) <= user_cache._VERSION_TTL


@pytest.mark.django_db
def test_cached_user_fill(server):
    """A miss's write-back (user_fill.lua): EVALSHA, GET (version), SET ... GET (entry); 5 before (two TYPEs)."""
    from hotcache.users import cache as user_cache
    from hotcache.users.loaders import get_loader

    user = get_user_model().objects.create_user(username=f"u{_id()}", password="pw")
    uid = str(user.pk)

    def fill() -> None:
        _, version = user_cache.read(uid)
        assert user_cache.fill(uid, version, user, get_loader())

    fill()
    with measured(server) as (c, executed):
        fill()
    figures("cached user fill (read, then the write-back)", c, executed)
    assert c.billed == 4  # the read's MGET 1, the fill 3


def test_meter_flush(server):
    def flush(warm: bool) -> None:
        for feature in ("alpha", "beta", "gamma"):
            redis_backend.call(feature, lambda r: r.get("k"))
            metering.event(feature, "hit")
        with measured(server) as (c, executed):
            assert metering.flush() is True
        figures("meter flush", c, executed)
        if warm:  # the first flush of a run loads the script (EVAL) and sets the new day's TTL (EXPIRE)
            assert c.billed <= 3

    stored_before = metering.usage(days=1)[0].fields["billed:meter"]
    flush(warm=False)  # loads the script
    flush(warm=True)
    # Each flush wrote its own cost: the last one before exit is counted too, and nothing is left pending.
    assert not [f for (_, f) in metering.meter.pending() if f.endswith(":meter")]
    stored = metering.usage(days=1)[0].fields["billed:meter"] - stored_before
    assert stored == metering.snapshot()["billed:meter"]


def test_a_noscript_retry_bills_the_refused_evalsha_and_the_eval(server):
    who = _id()
    evaluate([Limit("one", who, 1000, 60)])
    server.script_flush()
    with measured(server, warm_nodes=False) as (c, executed):
        evaluate([Limit("one", who, 1000, 60)])
    figures("rate limit, 1 rule, NOSCRIPT retry", c, executed)
    with measured(server) as (warm, _):
        evaluate([Limit("one", who, 1000, 60)])
    assert c.billed == warm.billed + 1  # the EVALSHA that NOSCRIPT refused


def test_pipelines_and_transactions_bill_every_command_and_free_commands_none(server):
    def both(r: redis_py.Redis) -> None:
        p = r.pipeline(transaction=False)
        p.set("a", 1)
        if not on_cluster():  # redis-py's cluster pipeline refuses PING (no key to route by) before sending
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
    assert c.commands == (7 if on_cluster() else 8) and c.round_trips == 3  # the cluster: no PING


def test_a_failing_script_and_a_refused_command_are_billed_as_the_server_counts_them(server, tmp_path, monkeypatch):
    monkeypatch.setattr(redis_backend, "_LUA_DIR", tmp_path)
    (tmp_path / "fails_test.lua").write_text(
        f"-- {uuid.uuid4()}\nredis.call('INCR', KEYS[1])\nif ARGV[1] == 'lua' then return nil + 1 end\n"
        "redis.call('HGET', KEYS[1], 'f')\nreturn 1"
    )
    redis_backend.Script._cache.pop("fails_test", None)
    script = redis_backend.Script("fails_test")

    def fail(kind: str) -> None:
        with pytest.raises(RedisUnavailable) as info:
            redis_backend.call("t", lambda r: script(r, ["counter"], [kind]))
        # A Lua error keeps the file's line number: the counting prelude adds no line.
        expected = "WRONGTYPE" if kind == "redis" else "user_script:3: attempt to perform arithmetic"
        assert expected in str(info.value)

    fail("redis")  # loads the script
    with measured(server) as (c, executed):
        fail("redis")  # EVALSHA, INCR, the HGET that failed
        fail("lua")  # EVALSHA, INCR, then a Lua error
        with pytest.raises(RedisUnavailable):
            redis_backend.call("t", lambda r: r.execute_command("GET"))  # wrong argument count: refused
    figures("failing scripts and a refused command", c, executed)
    # The GET without a key: the server refuses it (billed); a cluster client refuses it before sending (it has
    # no key to route by), so no server sees it.
    assert c.billed == 3 + 2 + (0 if on_cluster() else 1)
    assert server.get("counter") == b"3"  # what ran before the errors stays done, as Redis never rolls back
