"""A request's rules on several Redis Cluster slots: one sliding_window.lua per slot, all sent in one round trip per
node (in parallel), all-or-nothing kept by giving back what the allowing groups counted when another refused.

Rules keyed on one identifier share a hash tag (``{ratelimit:<identifier>}``), so a request whose rules key on
one identifier stays one EVALSHA (core.py). Rules on different identifiers (an IP and a user) hash to different
slots, which one script cannot touch together on a cluster: each slot's group runs on its node, counting only if
every rule of the group allows it (the script's own all-or-nothing). When a group refuses, the groups that
counted are given their counts back by ``sliding_window_giveback.lua``: a second round trip, only on such a
denial, sent once and never re-sent (a lost reply leaves the cost counted, the safe side, never given back
twice). Between the two round trips a concurrent request can see the cost that is about to be given back (and be
refused by it); nothing is ever admitted over a limit. See docs/ratelimit.md ("Redis Cluster").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from redis.crc import key_slot
from redis.exceptions import NoScriptError

from hotcache import metering
from hotcache.backends import cluster
from hotcache.backends import redis as redis_backend
from hotcache.exceptions import RedisUnavailable
from hotcache.ratelimit.limits import Limit

__all__ = ["Group", "Recorder", "evaluate_groups", "give_back", "groups_of", "slot_of"]

log = logging.getLogger("hotcache.ratelimit")

_FEATURE = "ratelimit"
_COUNT_AND_WINDOWS = 2  # sliding_window.lua's ARGV[1]: count, and reply with the window ids (for a give-back)
_GIVEBACK = redis_backend.Script("sliding_window_giveback")


class Companion(Protocol):
    def queue(self, pipe: Any) -> None: ...

    def settle(self, raw: Any) -> None: ...


@functools.lru_cache(maxsize=8192)
def slot_of(key: str) -> int:
    """The Redis Cluster slot of ``key`` (its hash tag's CRC16), cached like the key itself."""
    return int(key_slot(key.encode()))


class Group:
    """The rules of one request that share a slot: their indexes in the request's rule order."""

    __slots__ = ("indexes", "windows")

    def __init__(self, indexes: list[int]) -> None:
        self.indexes = indexes
        self.windows: list[int] = []  # per rule, the window id its cost was counted in (a counting call)


def groups_of(redis_keys: Sequence[str]) -> list[Group] | None:
    """The rules grouped by slot (in order of first appearance), or None when they all share one slot."""
    first = slot_of(redis_keys[0])
    if all(slot_of(k) == first for k in redis_keys[1:]):
        return None
    by_slot: dict[int, list[int]] = {}
    for i, key in enumerate(redis_keys):
        by_slot.setdefault(slot_of(key), []).append(i)
    return [Group(indexes) for indexes in by_slot.values()]


class Recorder:
    """A stand-in pipeline that records what a companion queues (its commands are sent with the groups')."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **_options: Any) -> None:
        self.commands.append(args)


def evaluate_groups(
    r: Any,
    script: redis_backend.Script,
    limits: Sequence[Limit],
    redis_keys: Sequence[str],
    groups: list[Group],
    *,
    increment: bool,
    companion: Companion | None = None,
) -> list[Any] | None:
    """Every group's script (and the companion's read) in one round trip per node; the groups' replies merged into
    the shape of one script's reply for all rules (4 figures per rule, then the corrupt counters' indexes).

    A group's NOSCRIPT (the script's first use on that node) is sent again as EVAL: NOSCRIPT means it did not run.
    Any other failure of a group raises (the outage policies decide; counts other groups took stay, the safe side).
    None when a reply is not the script's shape (core.py then applies the outage policies, as for one script).
    """
    mode = _COUNT_AND_WINDOWS if increment and len(groups) > 1 else (1 if increment else 0)
    commands = []
    for group in groups:
        group_keys = [redis_keys[i] for i in group.indexes]
        args: list[int] = [mode]
        for i in group.indexes:
            args += limits[i].wire
        commands.append(("EVALSHA", script.sha, len(group_keys), *group_keys, *args))
    extra = Recorder()
    if companion is not None:
        companion.queue(extra)
    replies = cluster.send_once(r, [*commands, *extra.commands])
    if companion is not None:
        rest = replies[len(commands) :]
        companion.settle(rest[0] if len(rest) == 1 else rest)
    reload = [i for i, raw in enumerate(replies[: len(commands)]) if isinstance(raw, NoScriptError)]
    if reload:
        again = cluster.send_once(r, [("EVAL", script.body, *commands[i][2:]) for i in reload])
        for i, raw in zip(reload, again, strict=True):
            replies[i] = raw
    for raw in replies[: len(commands)]:
        if isinstance(raw, Exception):
            raise raw
    try:
        return _merged(script, limits, groups, replies, mode)
    except (TypeError, ValueError, LookupError):
        return None  # not the script's reply shape: core's check of the reply applies the outage policies


def _merged(
    script: redis_backend.Script, limits: Sequence[Limit], groups: list[Group], replies: list[Any], mode: int
) -> list[Any]:
    merged: list[Any] = [None] * (4 * len(limits))
    bad: list[int] = []
    for group, raw in zip(groups, replies, strict=False):
        reply = script.reply(raw)
        for j, i in enumerate(group.indexes):
            merged[4 * i : 4 * i + 4] = reply[4 * j : 4 * j + 4]
        n = len(group.indexes)
        for index in reply[4 * n] if len(reply) > 4 * n else ():
            if 1 <= int(index) <= n:
                bad.append(group.indexes[int(index) - 1] + 1)
        if mode == _COUNT_AND_WINDOWS:
            group.windows = [int(w) for w in reply[4 * n + 1]]
    merged.append(bad)
    return merged


def give_back(limits: Sequence[Limit], redis_keys: Sequence[str], groups: list[Group], raw: Sequence[Any]) -> int:
    """Give back the counts of the groups that counted (every rule of the group allowed) after another group
    refused: one round trip per node reached, sent once. Returns the groups given back; 0 when it failed (logged,
    metered as ``ratelimit:giveback_failed``: those costs stay counted until their windows pass)."""
    commands = []
    for group in groups:
        if not group.windows or not all(raw[4 * i] == 1 for i in group.indexes):
            continue  # refused in this group (its script counted nothing), or not a counting call
        group_keys = [redis_keys[i] for i in group.indexes]
        args: list[int] = []
        for i, window in zip(group.indexes, group.windows, strict=True):
            args += (window, limits[i].cost)
        commands.append(("EVALSHA", _GIVEBACK.sha, len(group_keys), *group_keys, *args))
    if not commands:
        return 0

    def send(r: Any) -> None:
        replies = cluster.send_once(r, commands)
        reload = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if reload:
            again = cluster.send_once(r, [("EVAL", _GIVEBACK.body, *commands[i][2:]) for i in reload])
            for i, reply in zip(reload, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            _GIVEBACK.reply(reply)

    try:
        redis_backend.call(_FEATURE, send)
    except RedisUnavailable as exc:
        metering.event(_FEATURE, "giveback_failed")
        log.warning("hotcache: a refused request's counts on other slots were not given back: %s", exc)
        return 0
    metering.event(_FEATURE, "given_back", len(commands))
    return len(commands)
