"""The check: every ``Limit`` of one request through one EVALSHA of ``backends/lua/sliding_window.lua``.

All-or-nothing (if any rule denies, no counter moves), on Redis server time, returning allowed/remaining/reset/
count per rule. The deny cache answers known denials without Redis; an outage hands over to the outage
policies. On a Redis Cluster, rules whose keys hash to different slots (an IP and a user) are evaluated per slot
in parallel and kept all-or-nothing by a give-back (slots.py). See docs/ratelimit.md.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from hotcache import clock, keys, metering, signing
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit import slots
from hotcache.ratelimit.limits import Decision, Limit, RuleResult
from hotcache.ratelimit.outage import Outage
from hotcache.ratelimit.slots import Companion
from hotcache.ratelimit.state import LocalState, local_state

__all__ = ["Companion", "evaluate", "evaluate_in", "limit_keys", "refuse_missing"]

log = logging.getLogger("hotcache.ratelimit")

_FEATURE = "ratelimit"
_SCRIPT = redis_backend.Script("sliding_window")
_LAYOUT = "b"  # the BITFIELD layout of sliding_window.lua (the hash layout before it had no marker)


def limit_keys(limit: Limit) -> list[str]:
    """The Redis key of a rule+identifier: one 24-byte string (window id, even and odd window counts).

    The hash tag is the identifier alone, so every rule keyed on the same identifier (a burst and a
    sustained limit per IP) lands in one Redis Cluster slot and one EVALSHA can serve them there too.
    """
    return [_key_for(keys.prefix(), limit.identifier, limit.name, limit.window)]


@functools.lru_cache(maxsize=4096)
def _key_for(prefix: str, identifier: str, name: str, window: int) -> str:
    # Cached: hashing the parts is the costliest step of building a request's keys. Rule name and
    # window are in the key (a changed window gets fresh counters; a changed limit keeps the counts).
    # _LAYOUT names the counter's layout: counters of an older layout (hashes) are never read, so an
    # upgrade restarts them once instead of reporting each as tampered; they expire on their own TTL.
    return keys.tagged(_FEATURE, identifier, name, window, _LAYOUT)


def evaluate(limits: Sequence[Limit], *, increment: bool = True, raise_unavailable: bool = False) -> Decision:
    """Check (and, if every limit allows it and ``increment``, count) one request against ``limits``.

    One Redis round trip whatever the number of limits; zero when the deny cache already knows a
    limit refuses. ``raise_unavailable`` re-raises RedisUnavailable instead of applying outage
    policies (for ``ratelimit_check``).
    """
    return evaluate_in(local_state(), limits, increment=increment, raise_unavailable=raise_unavailable)


def evaluate_in(
    state: LocalState,
    limits: Sequence[Limit],
    *,
    increment: bool = True,
    raise_unavailable: bool = False,
    companion: Companion | None = None,
) -> Decision:
    """``evaluate`` with the process state the caller already holds (the middleware reads it once per request).

    ``companion``: another feature's read to send in the same round trip (a pipeline) when the decision needs
    Redis; it is settled whatever the decision, and left to read on its own when the round trip fails.
    """
    if not limits:
        return Decision(True)
    now = clock.monotonic()
    known = _known_denial(state, limits, increment, now)
    if known is not None:
        return known

    prefix = state.settings.key_prefix
    redis_keys = [_key_for(prefix, lim.identifier, lim.name, lim.window) for lim in limits]
    if state.settings.cluster:
        groups = slots.groups_of(redis_keys) if len(limits) > 1 else None
        if groups is not None or companion is not None:
            return _on_slots(state, limits, redis_keys, groups, increment, raise_unavailable, companion, now)
    args = _script_args(limits, increment)
    try:
        if companion is None:
            raw = redis_backend.lean_call(_FEATURE, lambda r: _SCRIPT(r, redis_keys, args))
        else:
            raw = redis_backend.lean_call(_FEATURE, lambda r: _with_companion(r, redis_keys, args, companion))
    except RedisUnavailable as exc:
        if raise_unavailable:
            raise
        return _degraded(state.outage, limits, increment, str(exc))
    return _from_reply(state, limits, raw, redis_keys, increment, now)


def _known_denial(state: LocalState, limits: Sequence[Limit], increment: bool, now: float) -> Decision | None:
    """The decision when the deny cache already knows a limit refuses (no Redis call), else None."""
    denials = state.deny_cache
    if denials:
        cached = [denials.get(lim, now) for lim in limits]
        if cached.count(None) != len(cached):  # any known denial
            return _denied_locally(limits, cached, increment)
    return None


def _script_args(limits: Sequence[Limit], increment: bool) -> list[int]:
    """sliding_window.lua's ARGV for ``limits`` (the mode, then each rule's limit, window and cost)."""
    args: list[int] = [1 if increment else 0]
    for lim in limits:
        args += lim.wire
    return args


def _from_reply(
    state: LocalState,
    limits: Sequence[Limit],
    raw: Any,
    redis_keys: list[str],
    increment: bool,
    now: float,
    *,
    refused: Callable[[], object] | None = None,
) -> Decision:
    """The decision the script's reply gives. A reply not of the script's shape (our SHA names our script; a
    proxy or a patched server could still answer anything) is never trusted, never a 500: the outage policies
    decide. ``refused`` runs when a counting call was refused, before the deny cache learns it (the cluster
    path's give-back)."""
    try:
        results, allowed = _results(limits, raw, redis_keys)
    except (TypeError, ValueError, LookupError):
        log.error("hotcache: rate limit script reply has an unexpected shape; applying outage policies")
        return _degraded(state.outage, limits, increment, "unexpected script reply")
    if refused is not None and not allowed and increment:
        refused()
    return _decided(state, limits, results, allowed, increment, now)


def _decided(
    state: LocalState,
    limits: Sequence[Limit],
    results: tuple[RuleResult, ...],
    allowed: bool,
    increment: bool,
    now: float,
) -> Decision:
    """Redis decided: the deny cache learns the refusing rules, the events are counted."""
    denials = state.deny_cache
    outage = state.outage
    if outage.degraded:
        outage.recovered()
    if not allowed:
        for lim, res in zip(limits, results, strict=True):
            if not res.allowed and lim.cost <= lim.limit:
                # reset is server-computed from the moment the script ran, which is after `now`: safe.
                denials.put(lim, now + res.reset)
    if increment:
        _count(results, allowed=allowed)
    return Decision(allowed, results)


def _on_slots(
    state: LocalState,
    limits: Sequence[Limit],
    redis_keys: list[str],
    groups: list[slots.Group] | None,
    increment: bool,
    raise_unavailable: bool,
    companion: Companion | None,
    now: float,
) -> Decision:
    """The cluster path: one group per slot (or the one group, with a companion read on another node), one round
    trip per node in parallel; a give-back when a group refused and others counted (slots.py)."""
    parts = groups if groups is not None else [slots.Group(list(range(len(limits))))]
    try:
        raw = redis_backend.call(
            _FEATURE,
            lambda r: slots.evaluate_groups(
                r, _SCRIPT, limits, redis_keys, parts, increment=increment, companion=companion
            ),
        )
    except RedisUnavailable as exc:
        if raise_unavailable:
            raise
        return _degraded(state.outage, limits, increment, str(exc))
    give_back = None  # on a refusal, the counts the groups that allowed took are given back (slots.py)
    if len(parts) > 1 and raw is not None:
        give_back = functools.partial(slots.give_back, limits, redis_keys, parts, raw)
    return _from_reply(state, limits, raw, redis_keys, increment, now, refused=give_back)


def _with_companion(r: Any, redis_keys: list[str], args: list[int], companion: Companion) -> Any:
    """The decision and the companion's read in one pipeline; the decision alone again after a NOSCRIPT."""
    pipe = r.pipeline(transaction=False)
    _SCRIPT.queue(pipe, redis_keys, args)
    companion.queue(pipe)
    raw, other = pipe.execute(raise_on_error=False)
    companion.settle(other)
    if isinstance(raw, NoScriptError):  # first use on this server: EVAL loads it (once)
        return _SCRIPT(r, redis_keys, args)
    if isinstance(raw, Exception):
        raise raw
    return _SCRIPT.reply(raw)


def _results(limits: Sequence[Limit], raw: Any, redis_keys: list[str]) -> tuple[tuple[RuleResult, ...], bool]:
    """The script's reply as RuleResults (and whether all allowed); corrupt counters it reports, and figures out
    of range, count as tampered.

    Counters are only counts (whoever can write Redis can reset or raise them, as deleting or writing
    the key would); what is checked is that nothing read from Redis can make a reply non-finite or a
    header nonsense: remaining within [0, limit], reset within [0, 2 windows], count >= 0.
    """
    n = len(limits)
    for index in raw[4 * n] if len(raw) > 4 * n else ():
        if 1 <= int(index) <= n:
            signing.tampered(_FEATURE, redis_keys[int(index) - 1], "is not a sound counter; counted as absent")
    out: list[RuleResult] = []
    allowed = True
    i = 0
    for lim, key in zip(limits, redis_keys, strict=True):
        ok, remaining, reset_ms, count = raw[i] == 1, int(raw[i + 1]), int(raw[i + 2]), int(raw[i + 3])
        if not (0 <= remaining <= lim.limit and 0 <= reset_ms <= 2000 * lim.window and count >= 0):
            signing.tampered(_FEATURE, key, "gave figures out of range; clamped")
            remaining = min(max(remaining, 0), lim.limit)
            reset_ms = min(max(reset_ms, 1 if not ok else 0), 2000 * lim.window)
            count = max(count, 0)
        allowed = allowed and ok
        out.append(
            RuleResult(lim.name, ok, lim.limit, remaining, reset_ms / 1000, lim.window, count, "redis", lim.headers)
        )
        i += 4
    return tuple(out), allowed


def refuse_missing(limits: Sequence[Limit], refused: Sequence[Limit], *, increment: bool = True) -> Decision:
    """Refuse a request because the rules in ``refused`` (a subset of ``limits``) have no identifier
    for it and say ``on_missing_key="deny"``. No Redis call; no counter moves (all-or-nothing).

    ``Retry-After`` is the rule's window: waiting does not give such a request an identifier.
    """
    names = {lim.name for lim in refused}
    results = tuple(
        RuleResult(lim.name, False, lim.limit, 0, float(lim.window), lim.window, 0, "missing_key", lim.headers)
        if lim.name in names
        else RuleResult(lim.name, True, lim.limit, 0, 0.0, lim.window, 0, "skipped", lim.headers)
        for lim in limits
    )
    if increment:
        metering.event(_FEATURE, "denied_missing_key")
        _count(results, allowed=False)
    return Decision(False, results)


def _denied_locally(limits: Sequence[Limit], cached: list[float | None], increment: bool) -> Decision:
    results = tuple(
        RuleResult(lim.name, False, lim.limit, 0, c, lim.window, lim.limit + lim.cost, "deny_cache", lim.headers)
        if c is not None
        else RuleResult(lim.name, True, lim.limit, 0, 0.0, lim.window, 0, "skipped", lim.headers)
        for lim, c in zip(limits, cached, strict=True)
    )
    if increment:
        metering.event(_FEATURE, "denied_local")
        _count(results, allowed=False)
    return Decision(False, results)


def _degraded(outage: Outage, limits: Sequence[Limit], increment: bool, reason: str) -> Decision:
    decision = outage.decide(limits, increment=increment, reason=reason)
    if increment:
        _count(decision.results, allowed=decision.allowed)
    return decision


def _count(results: Sequence[RuleResult], *, allowed: bool) -> None:
    """The decision's events (``allowed``/``denied`` and one per evaluated rule), in one locked meter update."""
    if allowed:
        rules = tuple([r.name for r in results if r.source != "skipped"])  # r.evaluated, without the property
    else:
        rules = tuple([r.name for r in results if not r.allowed and r.source != "skipped"])
    metering.events(_FEATURE, _events(allowed, rules))


@functools.lru_cache(maxsize=4096)
def _events(allowed: bool, rules: tuple[str, ...]) -> tuple[str, ...]:
    # A request's event names, formatted once per verdict and set of rules rather than on every request.
    kind = "allowed" if allowed else "denied"
    return (kind, *[f"{kind}:{name}" for name in rules])
