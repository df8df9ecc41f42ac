"""One call of the track script (analytics_track.lua): counters and visitors as keys and arguments, and what
its reply says was repaired. The same call carries one event (track) or a process's batch of an interval
(ANALYTICS_BATCH_SECONDS); the lost-reply protocol re-sends it unchanged but for its token fields.
Layout and costs: docs/design/keys-and-lua.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hotcache import signing
from hotcache.analytics._events import DAY_FMT, FEATURE, OVERFLOW, OVERFLOW_SLACK, label_to_hour
from hotcache.analytics._events import field as counter_field
from hotcache.analytics._keys import (
    bucket,
    bucket_writer,
    day_events_key,
    hll_key,
    hour_key,
    index_keys,
    visitor_marks_key,
    writer_key,
)
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings

__all__ = [
    "MAX_VISITORS_PER_ITEM",
    "TRACK",
    "CounterKey",
    "ScriptWrite",
    "VisitorKey",
    "build",
    "build_split",
    "forget_marks",
]

TRACK = redis_backend.Script("analytics_track")
CounterKey = tuple[str, str, str]  # (hour label, event, normalised path): also the outage buffer's key
VisitorKey = tuple[str, str]  # (hour label, event)
MAX_VISITORS_PER_ITEM = 1000  # digests per PFADD (Lua's unpack has a stack limit near 8,000)

# The parity of the hour's visitor marks per (hour, event, bucket), learnt from the script's replies: 0 the event's
# visitors of that hour go to its own HyperLogLog, 1 to the overflow one. The hour's first visitor settles it and
# later calls only add 2, so it never changes: a call for a known (hour, event) skips the marks' HINCRBY (1 billed
# command less per event with visitors). A hint of this process only; bounded (cleared when full).
_MarksKey = tuple[str, str, str]  # (hour, event, bucket tag): the marks hash is per bucket
_marks_known: dict[_MarksKey, int] = {}
_MARKS_KNOWN_MAX = 4096


def forget_marks() -> None:
    """Forget the learnt parities (hotcache.testing.reset(): each test starts like a new process)."""
    _marks_known.clear()

# What each kind of key is, for the tampered report of a key the script found of the wrong type.
_WRONG_TYPE = {
    "hours": "was not a sorted set (the hour index)",
    "days": "was not a sorted set (the day index)",
    "writer": "was not a string (the writer's token)",
    "hour": "was not a hash (the hour's counters)",
    "marks": "was not a hash of integers (the hour's visitor marks)",
    "hll": "was not a HyperLogLog (the event's visitors)",
    "overflow_hll": "was not a HyperLogLog (the overflow visitors)",
    "day_events": "was not a set (the day's events)",
}


@dataclass(slots=True)
class ScriptWrite:
    """The keys and arguments of one track script call, without its token fields (see ``args``)."""

    keys: list[str]
    roles: list[str]  # what each key is (the _WRONG_TYPE names)
    items: list[Any]  # ARGV after the header
    header: list[Any]  # ARGV 1-4 (ttl and caps)
    counts: int  # number of counter items
    visitor_items: int
    events: int  # sum of the counts
    label: str  # what it counts, for logs: an event name or "batch"
    _index: dict[str, int] = field(default_factory=dict)
    marks: list[_MarksKey] = field(default_factory=list)  # per visitor item, its (hour, event, bucket tag)

    def learn_marks(self, odd: Any) -> None:
        """Remember the marks' parity of each visitor item from an applied call's reply (see _marks_known)."""
        if not isinstance(odd, list) or len(odd) != len(self.marks):
            return
        if len(_marks_known) + len(odd) > _MARKS_KNOWN_MAX:
            _marks_known.clear()
        for key, parity in zip(self.marks, odd, strict=True):
            _marks_known[key] = 1 if int(parity) else 0

    def key(self, key: str, role: str) -> int:
        """The 1-based index of ``key`` in KEYS (added if new)."""
        found = self._index.get(key)
        if found is None:
            self.keys.append(key)
            self.roles.append(role)
            found = self._index[key] = len(self.keys)
        return found

    def args(
        self, token: str, *, resolving: bool = False, previous: str = "", may_be_missing: bool = False
    ) -> list[Any]:
        """ARGV for a call with ``token``; ``resolving`` settles an in-doubt call (see the script)."""
        mode = ["1" if resolving else "0", previous, "1" if may_be_missing else "0"]
        return [*self.header, token, *mode, self.counts, self.visitor_items, *self.items]

    def report_repairs(self, repaired: Iterable[Any], *, skip_writer: bool = False) -> None:
        """Count (and log once per key per minute) each record the script found tampered and reset."""
        flat = [int(x) for x in repaired]
        for k, what in zip(flat[::2], flat[1::2], strict=True):
            role = self.roles[k - 1]
            if skip_writer and role == "writer":
                continue
            why = "held a counter that was not a positive integer" if what == 2 else _WRONG_TYPE[role]
            signing.tampered(FEATURE, self.keys[k - 1], f"{why}; reset")


def build(
    writer: str,
    counters: Mapping[CounterKey, int],
    visitors: Mapping[VisitorKey, Iterable[str]] | None = None,
    *,
    label: str,
    tag: str | None = None,
) -> ScriptWrite:
    """One script call counting ``counters`` ({(hour, event, path): n}) and ``visitors`` ({(hour, event): digests}),
    all of events of bucket ``tag`` (None: the bucket of the first event named)."""
    if tag is None:
        first = next(iter(counters), None)
        tag = bucket(first[1]) if first is not None else bucket(next(iter(visitors or {(None, "")}))[1])
    idx = index_keys(tag)
    ttl = int(hotcache_settings.ANALYTICS_RETENTION_HOURS) * 3600
    header = [
        ttl,
        int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR),
        OVERFLOW_SLACK,
        int(hotcache_settings.ANALYTICS_MAX_EVENTS_PER_DAY),
    ]
    w = ScriptWrite([], [], [], header, 0, 0, sum(counters.values()), label)
    w.key(idx.hours, "hours")
    w.key(idx.days, "days")
    w.key(writer_key(writer, tag), "writer")
    for (hour, event, path), n in counters.items():
        start = int(label_to_hour(hour).timestamp())
        k = w.key(hour_key(hour, tag), "hour")
        w.items += [k, hour, start, counter_field(event, path), counter_field(event, OVERFLOW)]
        w.items += [counter_field(OVERFLOW, OVERFLOW), n]
        w.counts += 1
    for (hour, event), digests in (visitors or {}).items():
        when = label_to_hour(hour)
        day, day_start = when.strftime(DAY_FMT), int(when.timestamp()) // 86400 * 86400
        listed = sorted(set(digests))
        for i in range(0, len(listed), MAX_VISITORS_PER_ITEM):
            part = listed[i : i + MAX_VISITORS_PER_ITEM]
            known = _marks_known.get((hour, event, tag))
            km = w.key(visitor_marks_key(hour, tag), "marks") if known is None else -known
            kh = w.key(hll_key(day, event, tag), "hll")
            ko = w.key(hll_key(day, OVERFLOW, tag), "overflow_hll")
            ke = w.key(day_events_key(day, tag), "day_events")
            w.items += [km, kh, ko, ke, event, day, day_start, len(part), *part]
            w.visitor_items += 1
            w.marks.append((hour, event, tag))
    return w


def build_split(
    writer: str,
    counters: Mapping[CounterKey, int],
    visitors: Mapping[VisitorKey, Iterable[str]] | None = None,
    *,
    label: str,
) -> list[tuple[str, ScriptWrite, dict[CounterKey, int]]]:
    """One script call per bucket the events fall in: (the bucket's writer, the call, the counters it carries)."""
    groups: dict[str, tuple[dict[CounterKey, int], dict[VisitorKey, Iterable[str]]]] = {}
    for k, n in counters.items():
        groups.setdefault(bucket(k[1]), ({}, {}))[0][k] = n
    for v, digests in (visitors or {}).items():
        groups.setdefault(bucket(v[1]), ({}, {}))[1][v] = digests
    return [
        (bucket_writer(writer, tag), build(bucket_writer(writer, tag), c, v, label=label, tag=tag), c)
        for tag, (c, v) in groups.items()
    ]
