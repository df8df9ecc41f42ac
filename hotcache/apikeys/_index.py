"""The touched index: per UTC day, the keys counted on Redis that day (what sync_usage() reads), and the
revocation tombstones sent in the same round trips.

The index has its own hash tags (it holds many keys: spread over keys.bucket_count() buckets by the key's
tag), so the check script cannot write it on Redis Cluster: the first use of a key each day adds it in a second
round trip. The sync reads every bucket of a day in one pipeline, and the single-tag layout of earlier versions
with it. See docs/apikeys.md ("Sync cost").
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from hotcache import signing
from hotcache.apikeys._documents import keys_coll
from hotcache.apikeys._records import (
    TOUCHED,
    counter_ttl,
    day_name,
    meta_key,
    tag_of,
    text,
    tombstone,
    touched_key,
    touched_keys,
    touched_member,
)
from hotcache.apikeys._results import FEATURE
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import RedisUnavailable

__all__ = ["Entry", "read_touched", "replies", "tombstone_ttl", "verified_members", "write_index"]

_TAG_RE = re.compile(r".*:([0-9a-f]{32})", re.ASCII)  # the key's tag, at the end of a member's body
_MEMBER_RE = re.compile(r"([A-Za-z0-9_\-]{1,64}):([0-9a-f]{32})", re.ASCII)  # touched index: <key_id>:<tag>
_SSCAN_COUNT = 1000
_UNSIGNED_MAX = 2000  # unsigned members confirmed on MongoDB per sync at most

Entry = tuple[str, str, dt.date]  # (key_id, tag, day) of a touched-index member


def tombstone_ttl() -> int:
    return max(int(hotcache_settings.APIKEY_CACHE_TTL), 60)


def replies(pipe: Any) -> list[Any]:
    """Run a pipeline. A WRONGTYPE reply (someone replaced a key by another type) stays in the list as the
    error, for the caller to treat as absent; any other error is raised (call() translates it)."""
    out: list[Any] = pipe.execute(raise_on_error=False)
    for reply in out:
        if isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
            raise reply
    return out


def _index_of(day: dt.date, body: str) -> str:
    """The touched-index set a member with ``body`` (``<key_id>:<tag>``) goes to: its tag's bucket."""
    tag = _TAG_RE.fullmatch(body)
    return touched_key(day, tag[1] if tag else body)


def write_index(r: Any, revoked: Iterable[str], touched: Iterable[tuple[dt.date, str]]) -> None:
    """Tombstones for ``revoked`` tags and (day, ``<key_id>:<tag>``) entries of the touched index, one round trip.

    A touched index of the wrong type (not ours: we only ever SADD to it) is counted as tampered, dropped and
    written again in a second round trip, so one bad key cannot fail every later check of the process.
    """
    revoked, touched = list(revoked), list(touched)
    ttl, counters_ttl = tombstone_ttl(), counter_ttl()
    pipe = r.pipeline(transaction=False)
    for tag in revoked:
        pipe.set(meta_key(tag), tombstone(tag), ex=ttl)
    for day, body in touched:
        pipe.sadd(_index_of(day, body), touched_member(day, body))
        pipe.expire(_index_of(day, body), counters_ttl)
    added = replies(pipe)[len(revoked) :: 2]
    failed = zip(touched, added, strict=True)
    broken = sorted({_index_of(d, b) for (d, b), reply in failed if isinstance(reply, Exception)})
    if not broken:
        return
    # Sent once (send_commands): a DEL re-sent by redis-py's cluster pipeline after a lost reply would drop
    # members other processes added in between.
    commands: list[tuple[Any, ...]] = []
    for key in broken:
        signing.tampered(FEATURE, key, "is not a set (replaced)")
        commands.append(("DEL", key))
    for day, body in touched:
        if _index_of(day, body) in broken:
            commands.append(("SADD", _index_of(day, body), touched_member(day, body)))
            commands.append(("EXPIRE", _index_of(day, body), counters_ttl))
    for reply in redis_backend.send_commands(r, commands):
        if isinstance(reply, Exception):
            raise reply


def read_touched(r: Any, revoked: list[str], day_list: list[dt.date]) -> dict[dt.date, set[bytes]]:
    """Write the tombstones and read each day's touched index, every bucket of it (one round trip unless a set
    is large: one pipeline per node on Redis Cluster)."""
    pipe = r.pipeline(transaction=False)
    for tag in revoked:
        pipe.set(meta_key(tag), tombstone(tag), ex=tombstone_ttl())
    sets = [(day, key) for day in day_list for key in touched_keys(day)]
    for _day, key in sets:
        pipe.sscan(key, 0, count=_SSCAN_COUNT)
    found_replies = replies(pipe)[len(revoked) :]
    out: dict[dt.date, set[bytes]] = {day: set() for day in day_list}
    for (day, key), reply in zip(sets, found_replies, strict=True):
        if isinstance(reply, Exception):  # not a set: someone replaced it, what it indexed is gone
            signing.tampered(FEATURE, key, "is not a set (dropped)")
            r.delete(key)
            continue
        cursor, members = reply
        found = out[day]
        found.update(members)
        while int(cursor):  # large sets only: SSCAN may return a member twice, the set absorbs it
            cursor, members = r.sscan(key, cursor, count=_SSCAN_COUNT)
            found.update(members)
    return out


def verified_members(touched: dict[dt.date, set[bytes]]) -> list[Entry]:
    """The (key_id, tag, day) entries of the touched indexes that hotcache wrote, newest day first.

    A member is trusted when signed for its day. An unsigned one in the shape written before members were
    signed is trusted when MongoDB confirms that key has that tag (1 query, only when there are such
    members, at most _UNSIGNED_MAX of them); any other member is counted as tampered and removed, so it can
    neither name a key's history nor create documents.
    """
    found: set[Entry] = set()
    unsigned: list[tuple[str, str, dt.date, bytes]] = []
    bad: list[tuple[dt.date, bytes]] = []
    for day, members in touched.items():
        for raw in members:
            body = signing.unseal(TOUCHED, day_name(day), raw)
            signed = _MEMBER_RE.fullmatch(body) if body is not None else None
            if signed:
                found.add((signed[1], signed[2], day))
                continue
            old = _MEMBER_RE.fullmatch(text(raw)) if body is None else None
            if old and len(unsigned) < _UNSIGNED_MAX:
                unsigned.append((old[1], old[2], day, raw))
            else:
                bad.append((day, raw))
    if unsigned:
        ids = sorted({key_id for key_id, _, _, _ in unsigned})
        real = {
            d["key_id"]: tag_of(d["key_sha256"])
            for d in keys_coll().find({"_id": {"$in": ids}}, projection={"key_id": 1, "key_sha256": 1})
        }
        for key_id, tag, day, raw in unsigned:
            if real.get(key_id) == tag:
                found.add((key_id, tag, day))
            else:
                bad.append((day, raw))
    if bad:
        for day in sorted({day for day, _ in bad}):
            signing.tampered(FEATURE, touched_key(day), "held a member hotcache did not sign (removed)")

        def remove(r: Any) -> None:
            # Which bucket holds a member hotcache did not write is unknown: removed from each (rare).
            pipe = r.pipeline(transaction=False)
            for day, raw in bad:
                for key in touched_keys(day):
                    pipe.srem(key, raw)
            replies(pipe)

        try:
            redis_backend.call(FEATURE, remove)
        except RedisUnavailable:
            pass  # ignored again by the next sync
    return sorted(found, key=lambda e: (-e[2].toordinal(), e[0], e[1]))
