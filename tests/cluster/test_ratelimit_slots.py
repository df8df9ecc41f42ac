"""Rate limiting across Redis Cluster slots (issue 18): rules of one request keyed on different identifiers (an IP
and a user) are evaluated on their slots' nodes in one parallel round trip and stay all-or-nothing (a denial in one
slot gives back the counts taken in the others). Each test runs on the real 6-node cluster and, as its counterpart,
on the single server, where every request stays one EVALSHA in one round trip."""

from __future__ import annotations

import struct
import uuid

import pytest
from django.test import Client

from hotcache.backends import redis as redis_backend
from hotcache.ratelimit import Limit, evaluate, limit_keys
from hotcache.testing import count_redis, reset
from tests.ratelimit.fixtures import ratelimit_middleware  # noqa: F401 - fixture
from tests.support.concurrency import run_threads


@pytest.fixture(autouse=True)
def _fresh(redis_target, hotcache_config):
    hotcache_config(RATELIMIT_DENY_CACHE_SIZE=0)  # every decision from Redis: the counters are what is asserted
    reset()
    yield
    reset()


def _node(key: str) -> str | None:
    client = redis_backend.get_client()
    if not hasattr(client, "get_node_from_key"):
        return None
    return str(client.get_node_from_key(key).name)


def identifiers_on_two_masters() -> tuple[str, str]:
    """An IP-like and a user-like identifier whose counters live on two different masters (on the cluster)."""
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    ip_node = _node(limit_keys(Limit("probe", ip, 1, 60))[0])
    while True:
        user = f"user-{uuid.uuid4().hex[:12]}"
        if ip_node is None or _node(limit_keys(Limit("probe", user, 1, 60))[0]) != ip_node:
            return ip, user


def counted(lim: Limit) -> int:
    """What the counter of ``lim`` holds (both windows: a window boundary crossed mid-test loses nothing)."""
    raw = redis_backend.get_client().get(limit_keys(lim)[0])
    if raw is None:
        return 0
    _window, even, odd = struct.unpack(">qqq", raw)
    return int(even + odd)


def on_cluster(redis_target) -> bool:
    return redis_target is not None


def test_rules_on_one_identifier_stay_one_evalsha_in_one_round_trip(redis_target):
    ip, _ = identifiers_on_two_masters()
    burst, sustained = Limit("burst", ip, 5, 10), Limit("sustained", ip, 100, 3600)
    evaluate([burst, sustained])  # the script is loaded on the node
    with count_redis() as c:
        assert evaluate([burst, sustained]).allowed
    assert (c.round_trips, c.commands) == (1, 1)
    assert c.billed_by_feature["ratelimit"] == 4  # EVALSHA, TIME, one BITFIELD per rule
    assert (counted(burst), counted(sustained)) == (2, 2)


def test_ip_and_user_rules_are_one_round_trip_per_node_in_parallel(redis_target):
    ip, user = identifiers_on_two_masters()
    by_ip, by_user = Limit("per-ip", ip, 10, 3600), Limit("per-user", user, 10, 3600)
    evaluate([by_ip, by_user])
    with count_redis() as c:
        decision = evaluate([by_ip, by_user])
    assert decision.allowed and decision.degraded is None
    assert [r.source for r in decision.results] == ["redis", "redis"]
    assert [r.remaining for r in decision.results] == [8, 8]
    assert (counted(by_ip), counted(by_user)) == (2, 2)
    if on_cluster(redis_target):
        assert (c.round_trips, c.commands) == (2, 2)  # one EVALSHA per slot, each master written before any is read
        assert c.billed_by_feature["ratelimit"] == 6  # per slot: EVALSHA, TIME, BITFIELD
    else:
        assert (c.round_trips, c.commands) == (1, 1)
        assert c.billed_by_feature["ratelimit"] == 4
    assert c.events["ratelimit:given_back"] == 0


def test_a_denial_in_one_slot_gives_back_the_counts_of_the_others(redis_target):
    ip, user = identifiers_on_two_masters()
    other_ip = f"{ip}0"
    by_ip, by_user = Limit("per-ip", ip, 10, 3600), Limit("per-user", user, 2, 3600)
    assert evaluate([Limit("per-ip", other_ip, 10, 3600), by_user]).allowed
    assert evaluate([by_ip, by_user]).allowed
    assert (counted(by_ip), counted(by_user)) == (1, 2)
    with count_redis() as first:
        assert not evaluate([by_ip, by_user]).allowed
    assert (counted(by_ip), counted(by_user)) == (1, 2)
    if on_cluster(redis_target):
        assert first.round_trips in (3, 4)  # + NOSCRIPT, then EVAL on the give-back script's first use on that node
    with count_redis() as c:
        decision = evaluate([by_ip, by_user])
    assert not decision.allowed
    assert [r.name for r in decision.denied] == ["per-user"]
    assert decision["per-ip"].allowed  # the IP's rule alone would have admitted it: reported as such
    assert (counted(by_ip), counted(by_user)) == (1, 2)  # nothing of the refused request stays counted
    if on_cluster(redis_target):
        assert c.round_trips == 3  # the two slots in parallel, then the give-back to the IP's node
        assert c.commands == 3
        # slot of the IP: EVALSHA, TIME, BITFIELD; slot of the user: EVALSHA, TIME, BITFIELD + its undo;
        # give-back: EVALSHA, one BITFIELD
        assert c.billed_by_feature["ratelimit"] == 9
        assert c.events["ratelimit:given_back"] == 1
    else:
        assert (c.round_trips, c.commands) == (1, 1)
        assert c.billed_by_feature["ratelimit"] == 6  # EVALSHA, TIME, two BITFIELDs, both undone in the script
    # the IP still has its 9 left for other users
    assert evaluate([by_ip, Limit("per-user", f"{user}x", 2, 3600)]).allowed
    assert counted(by_ip) == 2


def test_a_denial_in_the_first_slot_gives_back_the_second(redis_target):
    ip, user = identifiers_on_two_masters()
    by_ip, by_user = Limit("per-ip", ip, 1, 3600), Limit("per-user", user, 10, 3600)
    assert evaluate([by_ip, by_user]).allowed
    decision = evaluate([by_ip, by_user])
    assert [r.name for r in decision.denied] == ["per-ip"]
    assert (counted(by_ip), counted(by_user)) == (1, 1)


def test_peeking_across_slots_counts_nothing(redis_target):
    ip, user = identifiers_on_two_masters()
    by_ip, by_user = Limit("per-ip", ip, 3, 3600), Limit("per-user", user, 3, 3600)
    evaluate([by_ip, by_user])
    with count_redis() as c:
        decision = evaluate([by_ip, by_user], increment=False)
    assert decision.allowed
    assert (counted(by_ip), counted(by_user)) == (1, 1)
    assert c.round_trips == (2 if on_cluster(redis_target) else 1)


def test_concurrent_requests_on_ip_and_user_rules_admit_exactly_one_winner_set(redis_target):
    """20 threads, one user (5 per hour) behind two IPs (4 per hour each): the winners are counted in every slot
    they passed and the losers in none; once the race is over, the user gets exactly its 5."""
    _, user = identifiers_on_two_masters()
    ips = [identifiers_on_two_masters()[0] for _ in range(2)]
    by_user = Limit("per-user", user, 5, 3600)
    by_ip = [Limit("per-ip", ip, 4, 3600) for ip in ips]
    winners: list[int] = []

    def request(n: int) -> None:
        decision = evaluate([by_ip[n % 2], by_user])
        assert decision.degraded is None
        if decision.allowed:
            winners.append(n)

    run_threads(20, request)
    assert len(winners) <= 5  # (even 0 is possible: each refused only by costs about to be given back)
    assert counted(by_user) == len(winners)
    assert [counted(lim) for lim in by_ip] == [sum(1 for n in winners if n % 2 == i) for i in range(2)]
    # Losers refused only by a cost about to be given back leave room: the rest of the 5, never more.
    admitted = len(winners)
    for n in range(10):
        if evaluate([by_ip[n % 2], by_user]).allowed:
            admitted += 1
    assert admitted == 5
    assert counted(by_user) == 5
    assert sum(counted(lim) for lim in by_ip) == 5


@pytest.mark.usefixtures("ratelimit_middleware")
def test_middleware_with_ip_and_user_rules_limits_both_and_sets_headers(
    redis_target, hotcache_config, django_user_model
):
    # rule names of this test's own: user pks repeat across tests (each rolls its database back), counters stay
    by_ip, by_user = f"ip-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"
    user = django_user_model.objects.create_user(username=f"u{uuid.uuid4().hex[:8]}", password="x")
    user_node = _node(limit_keys(Limit(by_user, str(user.pk), 1, 60))[0])
    while True:
        n = uuid.uuid4().int
        addr = f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"
        if user_node is None or _node(limit_keys(Limit(by_ip, addr, 1, 60))[0]) != user_node:
            break
    hotcache_config(
        RATELIMIT_DENY_CACHE_SIZE=0,
        RATELIMIT_RULES=[
            {"name": by_ip, "rate": "10/m", "key": "ip", "headers": True},
            {"name": by_user, "rate": "2/m", "key": "user", "headers": True},
        ],
    )
    c = Client()
    c.force_login(user)
    assert c.get("/other/", REMOTE_ADDR=addr).status_code == 200
    with count_redis() as admitted:
        ok = c.get("/other/", REMOTE_ADDR=addr)
    assert ok.status_code == 200
    assert f'"{by_ip}";r=8;' in ok["RateLimit"] and f'"{by_user}";r=0;' in ok["RateLimit"]
    with count_redis() as refused:
        denied = c.get("/other/", REMOTE_ADDR=addr)
    assert denied.status_code == 429 and int(denied["Retry-After"]) >= 1
    assert denied.json()["rule"] == by_user
    per_ip = Limit(by_ip, addr, 10, 60)
    assert counted(per_ip) == 2  # the refused request's count on the IP's slot was given back
    assert c.get("/other/", REMOTE_ADDR=addr).status_code == 429
    assert counted(per_ip) == 2
    if on_cluster(redis_target):
        assert admitted.round_trips == 2
        assert refused.round_trips in (3, 4)  # + the give-back (+ its script's first load on that node)
    else:
        assert admitted.round_trips == 1 and refused.round_trips == 1
