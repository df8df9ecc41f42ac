"""What an analytics event is: names, paths, visitors and counts checked at the one input boundary, the hour
and day labels they are counted under. See docs/analytics.md ("Public API").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from hotcache import keys
from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName

__all__ = [
    "EVENT_PATTERN",
    "FEATURE",
    "MAX_RAW_PATH_LENGTH",
    "MAX_VISITOR_ID_LENGTH",
    "OVERFLOW",
    "OVERFLOW_SLACK",
    "Beacon",
    "BeaconRefused",
    "Event",
    "check_count",
    "check_user_id",
    "check_visitor_id",
    "field",
    "hour_start",
    "label_to_day",
    "label_to_hour",
    "normalize_path",
    "read_beacon",
    "validate_event",
    "visitor_digest",
]

FEATURE = "analytics"
EVENT_PATTERN = r"[a-z0-9_.\-]{1,64}"  # documented: lower-case letters, digits, _ . -; 1 to 64 characters
OVERFLOW = "(other)"  # path (and event) that collects what the cardinality caps turn away; never a valid name
OVERFLOW_SLACK = 100  # extra "<event>\t(other)" fields an hour may hold past the cap
MAX_RAW_PATH_LENGTH = 8192  # characters of a path as given (query included); longer ones are refused
MAX_VISITOR_ID_LENGTH = 128  # characters of a visitor_id or a string user_id
SEP = "\t"  # field separator: never in an event name, and normalize_path() refuses control characters
HOUR_FMT = "%Y%m%d%H"
DAY_FMT = "%Y%m%d"
_MAX_COUNT = 1_000_000


def validate_event(event: object) -> str:
    """The event name if it matches EVENT_PATTERN, else InvalidName (no ':', '*', spaces, newlines...)."""
    return keys.validate_name(event, what="event", pattern=EVENT_PATTERN)


_SLASHES = re.compile(r"/{2,}")
_CUT_ESCAPE = re.compile(r"%[0-9A-Fa-f]?$")


def normalize_path(path: object) -> str:
    """A URL path as counted: no query or fragment, percent-encoded, single slashes, length-capped.

    ``None`` (no path) is ``""``. The raw path first goes through keys.text, the one boundary for free
    text: a non-string, a control character (NUL included), a lone surrogate or more than
    MAX_RAW_PATH_LENGTH characters (query included) raises InvalidName naming ``path``.
    """
    if path is None:
        return ""
    text = keys.text(path, what="path", max_length=MAX_RAW_PATH_LENGTH, allow_empty=True)
    text = text.split("?", 1)[0].split("#", 1)[0]
    # Spaces and non-ASCII become %XX; existing escapes are kept.
    text = quote(text, safe="/-._~!$&'()*+,;=:@%")
    text = "/" + _SLASHES.sub("/", text).lstrip("/")
    limit = int(hotcache_settings.ANALYTICS_MAX_PATH_LENGTH)
    if len(text) > limit:
        text = _CUT_ESCAPE.sub("", text[:limit])
    return text


def check_visitor_id(visitor_id: object) -> str | None:
    """``visitor_id`` as given (``None`` or ``""``: no visitor id); InvalidName unless it is text keys.text accepts."""
    if visitor_id is None or visitor_id == "":
        return None
    return keys.text(visitor_id, what="visitor_id", max_length=MAX_VISITOR_ID_LENGTH)


def check_user_id(user_id: object) -> object:
    """``user_id`` as given if it is None, an integer, a UUID or text keys.text accepts; else InvalidName."""
    if user_id is None or isinstance(user_id, uuid.UUID):
        return user_id
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        if not -(2**63) <= user_id < 2**64:
            msg = "user_id is an integer outside the 64-bit range"
            raise InvalidName(msg)
        return user_id
    if isinstance(user_id, str):
        return keys.text(user_id, what="user_id", max_length=MAX_VISITOR_ID_LENGTH)
    msg = f"user_id must be an integer, a string or a UUID, not {type(user_id).__name__}"
    raise InvalidName(msg)


def check_count(count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _MAX_COUNT:
        msg = f"count must be an integer from 1 to {_MAX_COUNT}, not {count!r}"
        raise ValueError(msg)
    return count


def visitor_digest(user_id: object, visitor_id: object) -> str:
    """The visitor as the day's HyperLogLog sees it: the user, else the visitor id, hashed; "" for none."""
    if user_id is not None:
        raw = f"u:{user_id}"
    elif visitor_id is not None and visitor_id != "":
        raw = f"v:{visitor_id}"
    else:
        return ""
    # Constant size and no raw identifiers sent to Redis (HyperLogLog keeps only hashes anyway).
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def field(event: str, path: str) -> str:
    """The hour hash field of (event, path)."""
    return f"{event}{SEP}{path}"


def hour_start(ts: float) -> int:
    return int(ts // 3600 * 3600)


def label_to_hour(label: str) -> dt.datetime:
    return dt.datetime.strptime(label, HOUR_FMT).replace(tzinfo=dt.UTC)


def label_to_day(label: str) -> dt.datetime:
    return dt.datetime.strptime(label, DAY_FMT).replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """A validated track call: what the Redis script and the outage buffer count."""

    event: str
    path: str  # normalised
    visitor: str  # digest of the user or visitor id; "" for none
    count: int


# --- the tracking endpoint's body ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Beacon:
    """A tracking beacon whose fields passed the boundary; the visitor is resolved when it is counted."""

    event: str
    path: str  # normalised
    visitor_id: str | None

    def as_event(self, user_id: object) -> Event:
        """One occurrence, visited by ``user_id`` (already checked) if there is one, else by the visitor id."""
        return Event(self.event, self.path, visitor_digest(user_id, self.visitor_id), 1)


@dataclass(frozen=True, slots=True)
class BeaconRefused:
    """The first field of a beacon that the boundary refused, and why (the endpoint answers 400 with both)."""

    field: str
    message: str


def read_beacon(data: object) -> Beacon | BeaconRefused:
    """Check a decoded beacon body ``{"event", "path", "visitor_id"}`` field by field, once, through the same
    boundary as track()'s arguments; other keys are ignored."""
    if not isinstance(data, Mapping):
        return BeaconRefused("body", "body must be a JSON object")
    event = data.get("event")
    if event is None:
        return BeaconRefused("event", "event is required")
    if not isinstance(event, str):
        return BeaconRefused("event", "event must be a string")
    try:
        validate_event(event)
    except InvalidName:
        return BeaconRefused("event", f"event must match {EVENT_PATTERN}")
    try:
        path = normalize_path(data.get("path"))
    except InvalidName as exc:
        return BeaconRefused("path", str(exc))
    try:
        visitor_id = check_visitor_id(data.get("visitor_id"))
    except InvalidName as exc:
        return BeaconRefused("visitor_id", str(exc))
    return Beacon(event, path, visitor_id)
