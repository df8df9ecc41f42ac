"""The MongoDB path of a check: Redis is down, or the check script's reply was lost (the check is in doubt).

Both validate the key with one indexed query and count with one conditional ``$inc`` under the limit
(_documents.add_use). See docs/apikeys.md ("Failure behaviour", "Lost replies").
"""

from __future__ import annotations

import datetime as dt
import logging

from hotcache.apikeys import _recovery
from hotcache.apikeys._documents import add_use, usage_coll, used, valid_record
from hotcache.apikeys._records import day_name, tag_of
from hotcache.apikeys._results import Usage, usage_result

__all__ = ["check_in_doubt", "check_on_mongo"]

log = logging.getLogger("hotcache.apikeys")


def check_on_mongo(digest: str, prefix: str, now: dt.datetime) -> Usage:
    """Redis is down: one indexed query for the record, then a conditional $inc of today's MongoDB count.

    The day is owed to Redis's base (pushed when Redis answers), whether or not this use was allowed.
    """
    doc = valid_record(digest, prefix, now)
    key_id, limit, day = doc["key_id"], doc.get("daily_limit"), now.date()
    allowed, use = add_use(key_id, day, "fallback", limit, now)
    _recovery.bases.add((key_id, tag_of(digest), day))
    return usage_result(allowed, key_id, doc["owner"], use, limit, now)


def check_in_doubt(digest: str, prefix: str, now: dt.datetime, doubt: _recovery.Doubt) -> Usage:
    """The check script may have counted this use on Redis: answer from MongoDB without counting it there.

    With a limit, a use is reserved in the day's usage document (``doubt`` field, the same conditional
    ``$inc`` as the fallback's) so concurrent fallbacks see it; the reservation is taken back once the doubt
    is settled on Redis (where the use is then counted exactly once). The doubt is registered whatever the
    outcome: a refused request (over the limit, invalid key, MongoDB down) whose use Redis did count is
    taken back from the Redis counter when it is settled.
    """
    try:
        doc = valid_record(digest, prefix, now)
        doubt.key_id = key_id = doc["key_id"]
        limit = doc.get("daily_limit")
        if limit is None:
            doubt.allowed = True
            current = usage_coll().find_one({"key_id": key_id, "day": day_name(doubt.day)})
            return usage_result(True, key_id, doc["owner"], used(current) + 1, None, now)
        allowed, use = add_use(key_id, doubt.day, "doubt", limit, now)
        doubt.allowed = doubt.held = allowed
        return usage_result(allowed, key_id, doc["owner"], use, limit, now)
    finally:
        # Registered only once decided: another thread may settle it from now on.
        log.warning("hotcache apikeys: reply of a check lost; %s from MongoDB, resolved when redis answers",
                    "allowed" if doubt.allowed else "refused")
        _recovery.doubts.add(doubt.writer, doubt)
