"""The check of hotcache.ratelimit.core for async code: the same decision, sent on the event loop (redis.asyncio).

The same script, keys, arguments, reply checks, deny cache and outage policies (core's helpers); only the
round trip is awaited (hotcache.backends.aredis), so an ASGI request makes no thread hop for its rate limit.
Where the async path cannot serve (a Redis Cluster: core groups its rules per slot there, with a give-back), the
sync check runs in a worker thread, as before. See docs/design/async.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from hotcache import clock
from hotcache.backends import aredis
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit import core
from hotcache.ratelimit.limits import Decision, Limit
from hotcache.ratelimit.state import LocalState, local_state

__all__ = ["aevaluate", "aevaluate_in"]


async def aevaluate(limits: Sequence[Limit], *, increment: bool = True, raise_unavailable: bool = False) -> Decision:
    """core.evaluate() awaited: one round trip on the event loop whatever the number of limits."""
    return await aevaluate_in(local_state(), limits, increment=increment, raise_unavailable=raise_unavailable)


async def aevaluate_in(
    state: LocalState,
    limits: Sequence[Limit],
    *,
    increment: bool = True,
    raise_unavailable: bool = False,
    companion: core.Companion | None = None,
) -> Decision:
    """core.evaluate_in() awaited (same arguments, same decision)."""
    if not limits:
        return Decision(True)
    now = clock.monotonic()
    known = core._known_denial(state, limits, increment, now)
    if known is not None:
        return known
    if aredis.client() is None:
        return await aredis.in_thread(core.evaluate_in)(
            state, limits, increment=increment, raise_unavailable=raise_unavailable, companion=companion
        )

    prefix = state.settings.key_prefix
    redis_keys = [core._key_for(prefix, lim.identifier, lim.name, lim.window) for lim in limits]
    args = core._script_args(limits, increment)
    try:
        if companion is None:
            raw = await aredis.acall(core._FEATURE, lambda r: aredis.run_script(core._SCRIPT, r, redis_keys, args))
        else:
            raw = await aredis.acall(core._FEATURE, lambda r: _with_companion(r, redis_keys, args, companion))
    except RedisUnavailable as exc:
        if raise_unavailable:
            raise
        return core._degraded(state.outage, limits, increment, str(exc))
    return core._from_reply(state, limits, raw, redis_keys, increment, now)


async def _with_companion(r: Any, redis_keys: list[str], args: list[int], companion: core.Companion) -> Any:
    """core._with_companion awaited: the decision and the companion's read in one pipeline."""
    pipe = r.pipeline(transaction=False)
    core._SCRIPT.queue(pipe, redis_keys, args)
    companion.queue(pipe)
    raw, other = await pipe.execute(raise_on_error=False)
    companion.settle(other)
    if isinstance(raw, NoScriptError):  # first use on this server: EVAL loads it (once)
        return await aredis.run_script(core._SCRIPT, r, redis_keys, args)
    if isinstance(raw, Exception):
        raise raw
    return core._SCRIPT.reply(raw)
