"""Reading analytics records back from Redis, checked: index members, hour and batch hashes, visitor counts.

Counters (hour hashes, HyperLogLogs) are incremented inside Lua, which cannot compute an HMAC, so they carry
no signature: what is checked is their shape (a valid event, a normalised path, a positive integer, no more
of them than the caps allow). Records that decide something are sealed with hotcache.signing: the batch
markers here, the writer tokens (track) and the lock (sync). See docs/analytics.md ("Tampered records").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from hotcache import signing
from hotcache.analytics._events import (
    EVENT_PATTERN,
    FEATURE,
    OVERFLOW,
    OVERFLOW_SLACK,
    SEP,
    label_to_day,
    label_to_hour,
)
from hotcache.analytics._keys import day_events_key, hll_key, hour_key, index_keys, pending_key, walked
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings

__all__ = [
    "MARKER",
    "SIGNED_BATCH",
    "Counters",
    "Located",
    "Members",
    "Tally",
    "batch_hour",
    "counters",
    "day_counts",
    "index_members",
    "is_batch",
    "is_day",
    "is_event",
    "is_hour",
    "read_counters",
    "read_many",
    "read_unsynced",
    "text",
    "valid_members",
]

SIGNED_BATCH = "analytics.batch"  # hotcache.signing purpose of the marker inside a pending batch: batch id -> hour
MARKER = "!batch"  # field of a pending batch holding its sealed marker; no counter field lacks the tab
_HOUR_LABEL = re.compile(r"\d{10}")
_DAY_LABEL = re.compile(r"\d{8}")
_BATCH_ID = re.compile(r"\d{10}-[0-9a-f]{16}")
_EVENT_NAME = re.compile(EVENT_PATTERN)
_STORED_PATH = re.compile(r"/[A-Za-z0-9_.~!$&'()*+,;=:@%/\-]{0,1023}")  # what normalize_path() can return
_MAX_STORED_COUNT = 2**53  # far above any hour's real total; HINCRBY would be near overflow

Counters = dict[tuple[str, str], int]  # (event, path) -> count
Located = tuple[str, str]  # (bucket, hour label / batch id / day label): every index member lives in one bucket


@dataclass(slots=True)
class Tally:
    """Counts the records one operation refused, and reports each through signing.tampered (unless ``silent``:
    a second look at records another step reports)."""

    n: int = 0
    silent: bool = False

    def __call__(self, key: str, why: str) -> None:
        self.n += 1
        if not self.silent:
            signing.tampered(FEATURE, key, why)


def read_many(fill: Callable[[Any], Any]) -> list[Any]:
    """Read commands queued by ``fill(pipeline)`` in one round trip. A command Redis refuses (WRONGTYPE, a
    corrupt HyperLogLog: a tampered key) gives its error in place of the reply instead of failing the
    whole call; an outage still raises RedisUnavailable."""

    def run(r: Any) -> Any:
        pipe = r.pipeline(transaction=False)
        fill(pipe)
        return pipe.execute(raise_on_error=False)

    return redis_backend.call(FEATURE, run)


def text(value: object) -> str | None:
    """A value Redis returned as text, or None if it is not UTF-8 (or not a string at all)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def batch_hour(batch: str) -> str:
    return batch.split("-", 1)[0]


def is_hour(label: str) -> bool:
    try:
        return bool(_HOUR_LABEL.fullmatch(label)) and bool(label_to_hour(label))
    except ValueError:
        return False


def is_day(label: str) -> bool:
    try:
        return bool(_DAY_LABEL.fullmatch(label)) and bool(label_to_day(label))
    except ValueError:
        return False


def is_batch(batch: str) -> bool:
    return bool(_BATCH_ID.fullmatch(batch)) and is_hour(batch_hour(batch))


def is_event(name: str) -> bool:
    return name == OVERFLOW or bool(_EVENT_NAME.fullmatch(name))


def valid_members(key: str, raw: object, valid: Callable[[str], bool], tally: Tally) -> tuple[list[str], list[Any]]:
    """The members of a set or zset that ``valid`` accepts, decoded, and the others as Redis returned them
    (each counted as tampered). A key that is not a set/zset at all reads as empty (and is counted)."""
    if isinstance(raw, Exception):
        tally(key, "is not a set of the right type")
        return [], []
    good: list[str] = []
    bad: list[Any] = []
    for member in raw if isinstance(raw, list | set) else ():
        decoded = text(member)
        if decoded is not None and valid(decoded):
            good.append(decoded)
        else:
            bad.append(member)
            tally(key, "holds a member hotcache never wrote")
    return good, bad


class Members(NamedTuple):
    """One index's members across the buckets."""

    good: list[Located]
    stray: list[tuple[str, Any]]  # (bucket, member as Redis returned it): no valid member of that index


_VALID: dict[str, Callable[[str], bool]] = {"hours": is_hour, "pending": is_batch, "days": is_day}


def index_members(tally: Tally, **reads: Callable[[Any, str], Any]) -> dict[str, Members]:
    """Every bucket's members of the indexes named ("hours", "pending", "days": Indexes fields), read in one
    pipelined round trip (``reads[name](pipe, key)`` queues the read of one bucket's index) and checked with
    valid_members(): the report, the claim, the visitors' sync and a dry run all walk the buckets this way."""
    walk = walked()
    names = list(reads)
    replies = read_many(lambda pipe: [reads[n](pipe, getattr(index_keys(b), n)) for b in walk for n in names])
    out = {n: Members([], []) for n in names}
    for i, b in enumerate(walk):
        idx = index_keys(b)
        for n, raw in zip(names, replies[i * len(names) : (i + 1) * len(names)], strict=True):
            good, bad = valid_members(getattr(idx, n), raw, _VALID[n], tally)
            out[n].good.extend((b, m) for m in good)
            out[n].stray.extend((b, m) for m in bad)
    return out


def _counter(name_raw: object, value: object) -> tuple[tuple[str, str], int] | None:
    """((event, path), count) of an hour hash field as the track script writes it, or None."""
    name, number = text(name_raw), text(value)
    if name is None or number is None:
        return None
    event, sep, path = name.partition(SEP)
    if not sep or not is_event(event):
        return None
    if event == OVERFLOW and path != OVERFLOW:
        return None
    if path not in ("", OVERFLOW) and not _STORED_PATH.fullmatch(path):
        return None
    if not (number.isascii() and number.isdigit() and len(number) <= 16):
        return None
    n = int(number)
    return ((event, path), n) if 1 <= n <= _MAX_STORED_COUNT else None


def counters(key: str, raw: object, tally: Tally, *, batch: str | None = None) -> Counters | None:
    """The counters of an hour hash (or of pending ``batch``) as Redis returned them; None if the record is
    refused: not a hash, or a batch without the sealed marker of its id and hour (swapped, forged, or
    claimed before markers existed). Fields that are not counters track writes are left out; past
    cap + slack + 1 fields the rest are summed into the global (other) counter (a Redis hash never holds
    more), so no record can make the sync write more documents than the Redis path. Counted as tampered.
    """
    if isinstance(raw, Exception) or not isinstance(raw, dict):
        tally(key, "is not a hash of counters")
        return None
    fields = dict(raw)
    if batch is not None and fields:
        marker = fields.pop(MARKER.encode(), fields.pop(MARKER, None))
        if signing.unseal(SIGNED_BATCH, batch, marker) != batch_hour(batch):
            tally(key, "has no valid marker for its batch id; not applied")
            return None
    found: Counters = {}
    for name, value in fields.items():
        parsed = _counter(name, value)
        if parsed is None:
            tally(key, "holds a field that is not a counter track writes; left out")
        else:
            found[parsed[0]] = parsed[1]
    limit = int(hotcache_settings.ANALYTICS_MAX_COUNTERS_PER_HOUR) + OVERFLOW_SLACK + 1
    if len(found) > limit:
        tally(key, f"holds {len(found)} counters, more than the cap allows; the rest go to (other)")
        everything = (OVERFLOW, OVERFLOW)
        kept = sorted(k for k in found if k != everything)[: limit - 1]
        rest = sum(n for k, n in found.items() if k not in kept)
        found = {k: found[k] for k in kept} | {everything: rest}
    return found


def read_counters(hours: list[tuple[str, str]], pending: list[tuple[str, str]]) -> list[Any]:
    """The live hour hashes, then the pending batch hashes (each a (bucket, label or id) pair), in one pipelined
    round trip (none if both are empty); a key Redis refuses to read as a hash gives its error in its place."""
    if not hours and not pending:
        return []
    return read_many(
        lambda pipe: [pipe.hgetall(hour_key(h, b)) for b, h in hours]
        + [pipe.hgetall(pending_key(x, b)) for b, x in pending]
    )


def read_unsynced(
    hours: list[tuple[str, str]], pending: list[tuple[str, str]], tally: Tally
) -> list[tuple[str, Any, Counters]]:
    """What read_counters() read, checked: (hour label, the reply, its counters) for each live hour, then each
    pending batch; a refused record's counters are empty (counted as tampered). The report and a dry run
    count what is still only in Redis with it."""
    sources = [
        *((h, hour_key(h, b), None) for b, h in hours),
        *((batch_hour(x), pending_key(x, b), x) for b, x in pending),
    ]
    rows = read_counters(hours, pending)
    return [
        (label, raw, counters(key, raw, tally, batch=batch) or {})
        for (label, key, batch), raw in zip(sources, rows, strict=True)
    ]


def day_counts(
    days: list[tuple[str, str]], tally: Tally
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], list[str]]]:
    """{(day, event): PFCOUNT} for the given (bucket, day) pairs, in two pipelined round trips, and the events
    read per (bucket, day). An event counted in two buckets (the single-tag layout and its bucket, during an
    upgrade; the overflow HLL of each bucket) gives the larger count.

    Event names that are not valid, a day's events past ANALYTICS_MAX_EVENTS_PER_DAY + 1, and sets or
    HyperLogLogs Redis refuses to read are left out and counted as tampered.
    """
    if not days:
        return {}, {}
    per_day = read_many(lambda pipe: [pipe.smembers(day_events_key(d, b)) for b, d in days])
    limit = int(hotcache_settings.ANALYTICS_MAX_EVENTS_PER_DAY) + 1
    pairs: list[tuple[str, str, str]] = []
    listed: dict[tuple[str, str], list[str]] = {}
    for (b, d), raw in zip(days, per_day, strict=True):
        events = sorted(valid_members(day_events_key(d, b), raw, is_event, tally)[0])
        if len(events) > limit:
            tally(day_events_key(d, b), f"holds {len(events)} event names; at most {limit} are read")
            events = [OVERFLOW, *(e for e in events if e != OVERFLOW)][:limit]
        listed[(b, d)] = events
        pairs += [(b, d, e) for e in events]
    if not pairs:
        return {}, listed
    # execute_command: redis-py's cluster pipeline blocks its .pfcount() (a one-key PFCOUNT is routed like any key).
    counts = read_many(lambda pipe: [pipe.execute_command("PFCOUNT", hll_key(d, e, b)) for b, d, e in pairs])
    out: dict[tuple[str, str], int] = {}
    for (b, d, e), n in zip(pairs, counts, strict=True):
        if isinstance(n, Exception) or not isinstance(n, int):
            tally(hll_key(d, e, b), "is not a HyperLogLog")
        else:
            out[(d, e)] = max(n, out.get((d, e), 0))
    return out, listed
