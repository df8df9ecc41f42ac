"""require_api_key on an async view under ASGI, against the real Redis: the warm check on the event loop makes no
thread hop and one round trip, and every answer (status, headers, body) and count (round trips, commands, billed
commands, MongoDB operations, events) is the sync decorator's, call for call. What is not the warm path (a cold
key, an outage, a lost reply) is the sync code's, in exactly one hop.

Each case runs one key through the sync decorator and a twin key (created alike) through the async one, the same
calls in the same order, on a frozen clock, and compares them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import AsyncRequestFactory, RequestFactory

from hotcache import apikeys, recovery
from hotcache.apikeys import _hot, require_api_key
from hotcache.backends import aredis
from hotcache.backends.health import redis_gate
from hotcache.testing import RedisCount, count_redis, mongo_down
from tests.support.aio import serve
from tests.support.hops import Hops, count_hops

pytestmark = pytest.mark.usefixtures("clock")  # frozen: Retry-After and reset_at alike on both paths

COOLDOWN = 6  # past HEALTH_COOLDOWN (5 s): the gate lets the next call probe Redis
MADE_UP = ("abcd1234." + "A" * 43, "wxyz5678." + "B" * 43)  # well formed, never created
RESUME, AFTER_FAILURE, CHECK_PARSED = (
    f"hotcache.apikeys._hot.{f.__qualname__}" for f in (_hot.resume, _hot.after_failure, _hot.check_parsed)
)

Seen = tuple[int, dict[str, str], bytes]


def _body(request: HttpRequest) -> JsonResponse:
    usage = request.api_key  # type: ignore[attr-defined]
    return JsonResponse(
        {"owner": usage.owner, "used_today": usage.used_today, "limit": usage.limit, "remaining": usage.remaining}
    )


@require_api_key
def sync_view(request: HttpRequest) -> JsonResponse:
    return _body(request)


@require_api_key
async def async_view(request: HttpRequest) -> JsonResponse:
    return _body(request)


def _request(factory: RequestFactory | AsyncRequestFactory, raw: str | None) -> Any:
    return factory.get("/", headers={} if raw is None else {"X-Api-Key": raw})


def _seen(response: Any) -> Seen:
    return response.status_code, dict(response.items()), response.content


def _counted(count: RedisCount) -> tuple[Any, ...]:
    return count.round_trips, count.commands, count.billed, count.mongo_ops, dict(+count.events)


def sync_calls(raws: list[str | None]) -> tuple[list[Seen], list[tuple[Any, ...]]]:
    """The sync decorator's answer and counts per call."""
    seen, counts = [], []
    for raw in raws:
        with count_redis() as count:
            seen.append(_seen(sync_view(_request(RequestFactory(), raw))))
        counts.append(_counted(count))
    return seen, counts


def async_calls(
    raws: list[str | None], between: Callable[[int], None] = lambda i: None, *, redis_up: bool = True
) -> tuple[list[Seen], list[tuple[Any, ...]], list[Hops]]:
    """The async decorator's answer, counts and thread hops per call, on one long-lived loop (as an ASGI server's)
    whose connection is opened first (``redis_up``); ``between(i)`` runs before call ``i``."""

    async def run() -> tuple[list[Seen], list[tuple[Any, ...]], list[Hops]]:
        if redis_up and aredis.client() is not None:
            await _open_connection()
        seen, counts, hops = [], [], []
        for i, raw in enumerate(raws):
            between(i)
            with count_redis() as count, count_hops() as hopped:
                seen.append(_seen(await async_view(_request(AsyncRequestFactory(), raw))))
            counts.append(_counted(count))
            hops.append(hopped)
        return seen, counts, hops

    return serve(run())


async def _open_connection() -> None:
    """This loop's connection, opened before anything is counted (its handshake is no call's)."""
    await aredis.acall("test", lambda r: r.execute("PING"))


@pytest.fixture(autouse=True)
def _warm() -> None:
    warm_sync_path()


def warm_sync_path() -> None:
    """The sync client's connection, the script and MongoDB's collections ready before anything is counted (again
    after a fixture changed the settings: the clients are new)."""
    new = apikeys.create("warm-up")
    apikeys.check(new.raw_key)
    apikeys.usage(new.key_id, days=1)


def _fresh_process() -> None:
    """What a second process would start with: a closed gate, nothing owed (the stores keep their data)."""
    redis_gate.reset()
    recovery.forget_all()


def twins(limit: int | None = None) -> tuple[str, str]:
    return apikeys.create("alice", daily_limit=limit).raw_key, apikeys.create("alice", daily_limit=limit).raw_key


def test_valid_key_then_over_its_limit_same_answers_and_counts_warm_no_hop_one_round_trip() -> None:
    a, b = twins(limit=2)
    sync_seen, sync_counts = sync_calls([a] * 4)
    seen, counts, hops = async_calls([b] * 4)
    assert [s for s, _, _ in seen] == [200, 200, 429, 429]
    assert seen == sync_seen
    assert counts == sync_counts
    assert hops[0] == [RESUME]  # first use: the cached record loaded from MongoDB, in the one hop
    assert hops[1:] == [[], [], []]
    for rt, commands, billed, mongo_ops, _ in counts[1:]:
        assert (rt, commands, mongo_ops) == (1, 1, 0) and billed == 4  # EVALSHA + GET, INCR, SET ... GET
    assert counts[3][4] == {"apikeys:over_limit": 1}


def test_revoked_key_401_warm_no_hop() -> None:
    a, b = twins()
    for raw in (a, b):
        apikeys.check(raw)  # cached in Redis
    for new in apikeys.list_keys("alice"):
        apikeys.revoke(new.key_id)  # the tombstone replaces the cached record
    sync_seen, sync_counts = sync_calls([a, a])
    seen, counts, hops = async_calls([b, b])
    assert [s for s, _, _ in seen] == [401, 401] and seen == sync_seen
    assert seen[0][1]["WWW-Authenticate"] == "Api-Key"
    assert counts == sync_counts and hops == [[], []]
    assert counts[0][:4] == (1, 1, 2, 0)  # EVALSHA + GET


def test_made_up_key_401_cold_in_one_hop_then_warm() -> None:
    sync_seen, sync_counts = sync_calls([MADE_UP[0]] * 2)
    seen, counts, hops = async_calls([MADE_UP[1]] * 2)
    assert [s for s, _, _ in seen] == [401, 401] and seen == sync_seen
    assert counts == sync_counts
    assert hops == [[RESUME], []]  # MongoDB says unknown (cached as such), then the cache says it
    assert counts[1][:4] == (1, 1, 2, 0)


@pytest.mark.parametrize("raw", [None, "", "not-a-key", "abcd1234." + "A" * 42, "x" * 500])
def test_missing_or_malformed_key_401_no_store_no_hop(raw: str | None) -> None:
    sync_seen, sync_counts = sync_calls([raw])
    seen, counts, hops = async_calls([raw])
    assert seen == sync_seen and seen[0][0] == 401
    assert counts == sync_counts and counts[0][:4] == (0, 0, 0, 0)
    assert hops == [[]]


def test_redis_down_falls_back_to_mongodb_as_sync_does(redis_proxy: Any) -> None:
    """The first call meets the outage (connection refused), the gate opens; the later ones are answered on MongoDB
    with the limit kept, each in one hop (the outage path is the sync code's)."""
    warm_sync_path()
    a, b = twins(limit=2)
    redis_proxy.down()
    sync_seen, sync_counts = sync_calls([a] * 3)
    _fresh_process()
    seen, counts, hops = async_calls([b] * 3, redis_up=False)
    assert [s for s, _, _ in seen] == [200, 200, 429]
    assert seen == sync_seen and counts == sync_counts
    assert hops == [[AFTER_FAILURE], [CHECK_PARSED], [CHECK_PARSED]]  # then this process owes Redis its base
    assert counts[0][4]["apikeys:fallback"] == 1


def test_both_stores_down_503_as_sync_does(redis_proxy: Any) -> None:
    warm_sync_path()
    a, b = twins()
    redis_proxy.down()
    with mongo_down():
        sync_seen, sync_counts = sync_calls([a])
        _fresh_process()
        seen, counts, _ = async_calls([b], redis_up=False)
    assert seen == sync_seen and seen[0][0] == 503 and counts == sync_counts


def test_usage_equals_allowed_calls_across_sync_and_async() -> None:
    raw = apikeys.create("alice", daily_limit=7).raw_key
    key_id = apikeys.list_keys("alice")[0].key_id
    allowed = 0
    for _ in range(3):
        allowed += sum(s == 200 for s, _, _ in sync_calls([raw] * 2)[0])
        allowed += sum(s == 200 for s, _, _ in async_calls([raw] * 2)[0])
    assert allowed == 7
    apikeys.sync_usage()
    assert apikeys.usage(key_id, days=1)[0][1] == 7
    assert apikeys.get(key_id).used_today == 7  # type: ignore[union-attr]


def test_concurrent_async_checks_on_one_loop_allow_exactly_the_limit() -> None:
    """Coroutines sharing the loop's thread each send under a writer of their own (never refused as stale)."""
    raw = apikeys.create("alice", daily_limit=10).raw_key
    apikeys.check(raw)

    async def run() -> tuple[list[Any], Any]:
        await _open_connection()
        with count_redis() as count:
            responses = await asyncio.gather(*(async_view(_request(AsyncRequestFactory(), raw)) for _ in range(20)))
        return responses, count

    responses, count = serve(run())
    assert sorted(r.status_code for r in responses) == [200] * 9 + [429] * 11
    assert count.events["apikeys:allowed"] == 9 and "apikeys:fallback" not in count.events
    assert count.mongo_ops == 0


@pytest.mark.parametrize("mode", ["apply", "drop"])
def test_lost_reply_on_the_async_path_is_counted_exactly_once(lost_reply_proxy: Any, clock: Any, mode: str) -> None:
    """The reply of the loop's check script is lost (Redis ran it, or never saw it): answered on MongoDB in doubt
    (the sync code's, one hop), settled by the next check before it sends, counted once."""
    raw = apikeys.create("alice", daily_limit=5).raw_key
    key_id = apikeys.list_keys("alice")[0].key_id
    apikeys.check(raw)

    def arm(i: int) -> None:
        if i == 1:
            lost_reply_proxy.arm(_hot._CHECK.sha.encode(), mode)
        if i == 2:
            clock.advance(COOLDOWN)

    seen, _, hops = async_calls([raw] * 4, between=arm)
    assert [s for s, _, _ in seen] == [200] * 4
    assert lost_reply_proxy.faults == 1
    assert hops == [[], [AFTER_FAILURE], [CHECK_PARSED], []]  # settled before the next check, then warm again
    apikeys.sync_usage()
    assert apikeys.usage(key_id, days=1)[0][1] == 5  # 5 allowed calls, none twice, none lost


def test_on_a_redis_cluster_the_whole_check_is_the_sync_one_in_one_hop(cluster_redis: Any) -> None:
    """redis.asyncio.cluster is not wired: on a cluster each async check is check()'s, whole, in one worker thread,
    with the sync path's answers and counts."""
    warm_sync_path()
    a, b = twins(limit=2)
    sync_seen, sync_counts = sync_calls([a] * 3)
    seen, counts, hops = async_calls([b] * 3)
    assert [s for s, _, _ in seen] == [200, 200, 429]
    assert seen == sync_seen
    assert counts[1:] == sync_counts[1:]  # the first also opens the worker thread's connection to the key's node
    assert hops == [[CHECK_PARSED]] * 3


def test_a_check_cancelled_during_its_hop_never_lends_its_writer_to_the_next(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client went away while a cold check was in its hop: the task is cancelled, the worker thread is not, and
    goes on sending under the check's writer. That writer is not lent to another check meanwhile (two checks in
    flight per writer: the thread's script refused as stale and counted on MongoDB)."""
    from hotcache.apikeys import _acheck

    raw = apikeys.create("alice", daily_limit=10).raw_key
    entered, release = threading.Event(), threading.Event()
    outcome: list[Any] = []
    finished = threading.Semaphore(0)  # released once per check's hop (the second check's first)
    first = [True]
    load_record = _hot.load_record

    def held_load(*args: Any) -> Any:
        if first[0]:
            first[0] = False
            entered.set()
            release.wait()
        return load_record(*args)

    def recorded_resume(*args: Any) -> Any:
        try:
            usage = _hot.resume(*args)
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            finished.release()
        outcome.append(usage)
        return usage

    monkeypatch.setattr(_hot, "load_record", held_load)
    monkeypatch.setattr(_acheck, "resume", recorded_resume)

    async def run() -> tuple[Any, Any]:
        await _open_connection()
        with count_redis() as count:
            cancelled = asyncio.ensure_future(_acheck.acheck(raw))
            await asyncio.to_thread(entered.wait)  # the first check is in its hop, holding its record load
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            second = await _acheck.acheck(raw)
            release.set()
            await asyncio.to_thread(lambda: [finished.acquire() for _ in range(2)])  # both hops ran to their end
        return second, count

    with caplog.at_level("ERROR", logger="hotcache.apikeys"):
        second, count = serve(run())
    assert second.allowed and len(outcome) == 2 and getattr(outcome[1], "allowed", False)
    assert "stale" not in caplog.text
    assert "apikeys:fallback" not in count.events
