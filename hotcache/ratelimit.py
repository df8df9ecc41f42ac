"""Rate limiting: a sliding-window counter on Redis, every rule of a request in one atomic round trip.

Core: ``evaluate(limits)`` takes the ``Limit`` s that apply to one request and runs them through one
EVALSHA of ``backends/lua/sliding_window.lua``: all-or-nothing (if any rule denies, no counter
moves), on Redis server time, returning allowed/remaining/reset/count per rule so response headers
need no second call. Around it:

* a process-local deny cache: an identifier known to be refused until T is refused locally until T
  with zero Redis calls. It stores denials only, so it can never wrongly admit a request;
* outage policies per rule when Redis is unavailable (error, timeout, health gate open):
  ``open`` admits, ``closed`` refuses, ``local`` (default) runs the same sliding window in-process;
* the django-ratelimit drop-in: ``ratelimit``, ``is_ratelimited``, ``get_usage``, ``ALL``,
  ``UNSAFE``, ``Ratelimited`` (sync and async views);
* requests whose key gives no identifier (no usable client address, an anonymous ``user``, a missing
  header): ``on_missing_key`` says skip, one shared bucket, or deny (README, "Rate limiting").

Differences from django-ratelimit: a sliding window (weighted current + previous fixed window)
instead of a fixed window with per-key jitter, so a burst at a window edge cannot pass twice the
limit; a denied request does not count; ``Ratelimited`` carries ``retry_after``; a Redis outage
applies the outage policy instead of raising (django-ratelimit#333).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import iscoroutinefunction
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.utils.module_loading import import_string

from hotcache import clientip, clock, keys, metering, signing
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import HotcacheError, InvalidName, RedisUnavailable

__all__ = [
    "ALL",
    "MISSING_KEY_CHOICES",
    "POLICIES",
    "UNSAFE",
    "Decision",
    "InvalidRate",
    "Limit",
    "Ratelimited",
    "RuleResult",
    "default_on_missing_key",
    "evaluate",
    "get_usage",
    "is_ratelimited",
    "key_value",
    "limit_keys",
    "parse_rate",
    "ratelimit",
    "refuse_missing",
    "reset_local_state",
]

log = logging.getLogger("hotcache.ratelimit")

ALL = (None,)  # every HTTP method (django-ratelimit's sentinel)
UNSAFE = ["DELETE", "PATCH", "POST", "PUT"]
POLICIES = ("open", "closed", "local")
MISSING_KEY_CHOICES = ("skip", "shared", "deny")
SIMPLE_KEYS = ("ip", "user", "user_or_ip", "api_key")
ACCESSOR_KEYS = ("header", "get", "post")
ADDRESS_KEYS = ("ip", "user_or_ip")  # keys that fall back to the client address: it should always be there
SHARED_IDENTIFIER = ""  # the bucket of every request whose key gives no identifier (on_missing_key="shared")
MAX_IDENTIFIER = 256  # characters of a client-supplied identifier (header, GET/POST field, API key)
MAX_NAME = 200  # characters of a rule name or decorator group

_FEATURE = "ratelimit"
_SCRIPT = redis_backend.Script("sliding_window")
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(  # ASCII: \d would also match other scripts' digits
    r"\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|seconds|m|min|minute|minutes|h|hour|hours|d|day|days)?\s*",
    re.IGNORECASE | re.ASCII,
)
_MAX_COUNT = 10**12  # per window; far beyond any real limit, and exact in the script's float arithmetic
_MAX_WINDOW = 366 * 86400
# What keys.text accepts as a name (no C0/C1 controls, no lone surrogates, 1..MAX_NAME characters).
_PRINTABLE_NAME = re.compile(f"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{{1,{MAX_NAME}}}")


class InvalidRate(HotcacheError, ValueError):
    """A rate that is not ``<count>/<n><unit>`` (``100/m``, ``5/10s``, ``1000/5m``, ``10000/d``)."""


class Ratelimited(HotcacheError, PermissionDenied):
    """Raised by ``@ratelimit(block=True)``; a PermissionDenied, so Django answers 403 unless handled.

    ``retry_after`` is whole seconds (>= 1) until the request would be admitted.
    """

    def __init__(self, message: str = "rate limited", *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_rate(rate: str | tuple[int, int]) -> tuple[int, int]:
    """``"100/m"`` -> (100, 60); ``"5/10s"`` -> (5, 10); a ``(count, seconds)`` tuple passes through."""
    if isinstance(rate, tuple):
        if (
            len(rate) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in rate)
            and 0 <= rate[0] <= _MAX_COUNT
            and 0 < rate[1] <= _MAX_WINDOW
        ):
            return int(rate[0]), int(rate[1])
        raise InvalidRate(f"rate tuple {rate!r:.80} must be (0 <= count <= 10**12, 0 < seconds <= a year)")
    if not isinstance(rate, str):
        raise InvalidRate(f"rate must be a string like '100/m', not {type(rate).__name__}")
    # Bounded before parsing: int() of thousands of digits is slow, and refused past 4300 digits.
    m = _RATE.fullmatch(rate) if len(rate) <= 64 else None
    if not m:
        raise InvalidRate(f"rate {rate[:40]!r} is not '<count>/<n><s|m|h|d>' (e.g. '100/m', '5/10s', '1000/5m')")
    count, multi, unit = m.groups()
    if int(count) > _MAX_COUNT:
        raise InvalidRate(f"rate {rate!r} allows more than 10**12 per window")
    seconds = _PERIODS[(unit or "s")[0].lower()] * (int(multi) if multi else 1)
    if seconds <= 0:
        raise InvalidRate(f"rate {rate!r} has a zero-length window")
    if seconds > _MAX_WINDOW:
        raise InvalidRate(f"rate {rate!r} has a window longer than a year")
    return int(count), seconds


@dataclass(frozen=True, slots=True)
class Limit:
    """One rule applied to one identifier: at most ``limit`` units of cost per ``window`` seconds."""

    name: str
    identifier: str
    limit: int
    window: int
    policy: str = "local"
    cost: int = 1
    headers: bool = False

    def __post_init__(self) -> None:
        # The one check of what reaches keys, metering event names (``allowed:<name>``) and the
        # process-local caches, whoever built the Limit: printable names, bounded numbers. Once per
        # rule per request, so the common case is a few type tests and one regex match.
        if not (type(self.name) is str and _PRINTABLE_NAME.fullmatch(self.name)):
            keys.text(self.name, what="rate limit name", max_length=MAX_NAME)  # raises, naming the problem
        if type(self.identifier) is not str or len(self.identifier) > MAX_IDENTIFIER:
            raise InvalidName(f"rate limit identifier must be a string of at most {MAX_IDENTIFIER} characters")
        if not (type(self.limit) is int and 0 <= self.limit <= _MAX_COUNT and type(self.window) is int
                and 1 <= self.window <= _MAX_WINDOW and type(self.cost) is int and 1 <= self.cost <= _MAX_COUNT):
            raise InvalidRate(f"rate limit ({self.limit!r:.40}, {self.window!r:.40}, cost {self.cost!r:.40}) must be "
                              f"whole numbers: 0 <= limit <= 10**12, 1 <= window <= {_MAX_WINDOW}, 1 <= cost <= 10**12")

    @property
    def identity(self) -> str:
        # Rule name, window and identifier: a changed window gets fresh counters (the parity keys
        # depend on it); a changed limit keeps the counts.
        return f"{self.name}|{self.window}|{self.identifier}"


@dataclass(frozen=True, slots=True)
class RuleResult:
    name: str
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds: until this cost fits (denied) or until the current window ends (allowed)
    window: int
    count: int  # weighted estimate including this request's cost
    source: str  # redis | deny_cache | skipped | open | closed | local | missing_key
    headers: bool = False

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset))

    @property
    def evaluated(self) -> bool:
        return self.source != "skipped"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request: ``allowed`` only if every rule allowed it."""

    allowed: bool
    results: tuple[RuleResult, ...] = ()
    degraded: str | None = None  # "redis_unavailable" when outage policies decided

    def __getitem__(self, name: str) -> RuleResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def denied(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if not r.allowed)

    @property
    def retry_after(self) -> int:
        return max((r.retry_after for r in self.denied), default=1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "degraded": self.degraded,
            "rules": {
                r.name: {
                    "allowed": r.allowed,
                    "limit": r.limit,
                    "remaining": r.remaining,
                    "reset": r.reset,
                    "source": r.source,
                }
                for r in self.results
            },
        }


def limit_keys(limit: Limit) -> list[str]:
    """The Redis key of a rule+identifier: one hash (window id, even and odd window counts).

    The hash tag is the identifier alone, so every rule keyed on the same identifier (a burst and a
    sustained limit per IP) lands in one Redis Cluster slot and one EVALSHA can serve them there too.
    """
    return [_key_for(keys.prefix(), limit.identifier, limit.name, limit.window)]


@functools.lru_cache(maxsize=4096)
def _key_for(prefix: str, identifier: str, name: str, window: int) -> str:
    # Cached: hashing the parts is the costliest step of building a request's keys. Rule name and
    # window are in the key (a changed window gets fresh counters; a changed limit keeps the counts).
    return keys.tagged(_FEATURE, identifier, name, window)


class _Snapshot:
    """The settings the per-request path reads, taken once per HOTCACHE dict.

    ``hotcache_settings`` reads django settings on every access (right for override_settings, but
    about a microsecond each). This keeps the values of one HOTCACHE dict object and is rebuilt when
    that object changes (override_settings and ``settings.HOTCACHE = ...`` assign a new dict; the
    snapshot holds a reference to its source, so the identity check cannot be fooled by id reuse).
    """

    __slots__ = ("deny_cache_size", "key_prefix", "legacy_headers", "source", "status_code")

    def __init__(self, source: Any) -> None:
        self.source = source
        self.key_prefix = keys.prefix()
        size = hotcache_settings.RATELIMIT_DENY_CACHE_SIZE
        self.deny_cache_size = size if isinstance(size, int) and not isinstance(size, bool) else 10_000
        self.legacy_headers = bool(hotcache_settings.RATELIMIT_LEGACY_HEADERS)
        status = hotcache_settings.RATELIMIT_STATUS_CODE
        self.status_code = status if isinstance(status, int) and 400 <= status <= 599 else 429


_snapshot_cache: _Snapshot | None = None


def settings_snapshot() -> _Snapshot:
    """This request's view of the rate-limit settings (one attribute read when HOTCACHE is unchanged)."""
    global _snapshot_cache
    source = getattr(django_settings, "HOTCACHE", None)
    snap = _snapshot_cache
    if snap is None or snap.source is not source:
        snap = _snapshot_cache = _Snapshot(source)
    return snap


# -- process-local state --------------------------------------------------------------------------


class _DenyCache:
    """Known denials until their reset time (monotonic clock). Bounded LRU, O(1) eviction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, int, int]] = OrderedDict()

    def get(self, limit: Limit, now: float) -> float | None:
        """Seconds this limit is still known to refuse ``limit.cost``, or None."""
        with self._lock:
            item = self._items.get(limit.identity)
            if item is None:
                return None
            until, cost, lim = item
            if now >= until:
                del self._items[limit.identity]
                return None
            if limit.cost < cost or limit.limit != lim:
                return None
            self._items.move_to_end(limit.identity)
            return until - now

    def put(self, limit: Limit, until: float) -> None:
        size = settings_snapshot().deny_cache_size
        if size <= 0:
            return
        with self._lock:
            self._items[limit.identity] = (until, limit.cost, limit.limit)
            self._items.move_to_end(limit.identity)
            while len(self._items) > size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        # Read without the lock: a denial stored concurrently may be missed, and the request then asks
        # Redis, which decides anyway. The cache only ever refuses, so a miss can never wrongly admit.
        return bool(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class _LocalLimiter:
    """The ``local`` outage policy: the same sliding-window counter, in this process only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, list[int]] = OrderedDict()  # identity -> [window id, cur, prev]

    def evaluate(self, limits: Sequence[Limit], *, increment: bool, others_allow: bool) -> list[RuleResult]:
        now_ms = int(clock.time() * 1000)
        results: list[RuleResult] = []
        with self._lock:
            states = []
            for lim in limits:
                window_ms = lim.window * 1000
                w = now_ms // window_ms
                elapsed = now_ms - w * window_ms
                state = self._items.get(lim.identity)
                if state is None or state[0] < w - 1:
                    cur, prev = 0, 0
                elif state[0] == w - 1:
                    cur, prev = 0, state[1]
                else:
                    cur, prev = state[1], state[2]
                ok = prev * (window_ms - elapsed) + (cur + lim.cost) * window_ms <= lim.limit * window_ms
                estimate = (prev * (window_ms - elapsed)) // window_ms + cur
                remaining = max(0, lim.limit - estimate - (lim.cost if ok else 0))
                reset = (window_ms - elapsed) / 1000 if ok else _local_retry(lim, cur, prev, elapsed, window_ms)
                states.append((lim, w, cur, prev))
                results.append(
                    RuleResult(lim.name, ok, lim.limit, remaining, reset, lim.window, estimate + lim.cost, "local",
                               lim.headers)
                )
            if increment and others_allow and all(r.allowed for r in results):
                size = hotcache_settings.RATELIMIT_DENY_CACHE_SIZE
                size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 10_000
                for lim, w, cur, prev in states:
                    self._items[lim.identity] = [w, cur + lim.cost, prev]
                    self._items.move_to_end(lim.identity)
                while len(self._items) > size:
                    self._items.popitem(last=False)
        return results

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _local_retry(lim: Limit, cur: int, prev: int, elapsed: int, window_ms: int) -> float:
    if lim.cost > lim.limit:
        return float(lim.window)
    if cur + lim.cost <= lim.limit and prev:
        e = window_ms - ((lim.limit - lim.cost - cur) * window_ms) // prev
        return max(1, e - elapsed) / 1000
    e2 = window_ms - ((lim.limit - lim.cost) * window_ms) // max(1, cur)
    return max(1, (window_ms - elapsed) + max(0, e2)) / 1000


_deny_cache = _DenyCache()
_local = _LocalLimiter()
_state_lock = threading.Lock()
_degraded_mode = False
_warned_no_address = False


def reset_local_state() -> None:
    """Forget the deny cache, the local limiter, the degraded flag and the once-per-process warnings
    (tests; settings changed)."""
    global _degraded_mode, _snapshot_cache, _warned_no_address
    _deny_cache.clear()
    _local.clear()
    _snapshot_cache = None
    with _state_lock:
        _degraded_mode = False
        _warned_no_address = False


def _transition(degraded: bool, reason: str = "") -> None:
    """Log entering and leaving degraded mode once each, not per request."""
    global _degraded_mode
    if _degraded_mode == degraded:
        return
    with _state_lock:
        if _degraded_mode == degraded:
            return
        _degraded_mode = degraded
    if degraded:
        log.warning("hotcache: rate limiting is degraded (%s); applying each rule's outage policy", reason)
    else:
        log.warning("hotcache: rate limiting is back on Redis")


# -- the core ------------------------------------------------------------------------------------


def _policy(value: str | None) -> str:
    if value in POLICIES:
        return str(value)
    default = hotcache_settings.RATELIMIT_DEFAULT_POLICY
    return default if default in POLICIES else "local"


def evaluate(limits: Sequence[Limit], *, increment: bool = True, raise_unavailable: bool = False) -> Decision:
    """Check (and, if every limit allows it and ``increment``, count) one request against ``limits``.

    One Redis round trip whatever the number of limits; zero when the deny cache already knows a
    limit refuses. ``raise_unavailable`` re-raises RedisUnavailable instead of applying outage
    policies (for ``ratelimit_check``).
    """
    if not limits:
        return Decision(True)
    now = clock.monotonic()
    if _deny_cache:
        cached = [_deny_cache.get(lim, now) for lim in limits]
        if any(c is not None for c in cached):
            return _denied_locally(limits, cached, increment)

    prefix = settings_snapshot().key_prefix
    redis_keys = [_key_for(prefix, lim.identifier, lim.name, lim.window) for lim in limits]
    args: list[int] = [1 if increment else 0]
    for lim in limits:
        args += (lim.limit, lim.window * 1000, lim.cost)
    try:
        raw = redis_backend.call(_FEATURE, lambda r: _SCRIPT(r, redis_keys, args))
    except RedisUnavailable as exc:
        if raise_unavailable:
            raise
        return _degraded(limits, increment, str(exc))
    try:
        out = _results(limits, raw, redis_keys)
    except (TypeError, ValueError, LookupError):
        # Not the script's reply shape (our SHA names our script; a proxy or a patched server could
        # still answer anything): never trusted, never a 500; the outage policies decide.
        log.error("hotcache: rate limit script reply has an unexpected shape; applying outage policies")
        return _degraded(limits, increment, "unexpected script reply")
    if _degraded_mode:
        _transition(False)
    allowed = all(r.allowed for r in out)
    if not allowed:
        for lim, res in zip(limits, out, strict=True):
            if not res.allowed and lim.cost <= lim.limit:
                # reset is server-computed from the moment the script ran, which is after `now`: safe.
                _deny_cache.put(lim, now + res.reset)
    results = tuple(out)
    if increment:
        _count(results, allowed=allowed)
    return Decision(allowed, results)


def _results(limits: Sequence[Limit], raw: Any, redis_keys: list[str]) -> list[RuleResult]:
    """The script's reply as RuleResults; corrupt hashes it reports, and figures out of range, count as tampered.

    Counters are only counts (whoever can write Redis can reset or raise them, as deleting or writing
    the key would); what is checked is that nothing read from Redis can make a reply non-finite or a
    header nonsense: remaining within [0, limit], reset within [0, 2 windows], count >= 0.
    """
    n = len(limits)
    for index in raw[4 * n] if len(raw) > 4 * n else ():
        if 1 <= int(index) <= n:
            signing.tampered(_FEATURE, redis_keys[int(index) - 1], "is not a sound counter hash; counted as absent")
    out: list[RuleResult] = []
    i = 0
    for lim, key in zip(limits, redis_keys, strict=True):
        ok, remaining, reset_ms, count = raw[i] == 1, int(raw[i + 1]), int(raw[i + 2]), int(raw[i + 3])
        if not (0 <= remaining <= lim.limit and 0 <= reset_ms <= 2000 * lim.window and count >= 0):
            signing.tampered(_FEATURE, key, "gave figures out of range; clamped")
            remaining = min(max(remaining, 0), lim.limit)
            reset_ms = min(max(reset_ms, 1 if not ok else 0), 2000 * lim.window)
            count = max(count, 0)
        out.append(RuleResult(lim.name, ok, lim.limit, remaining, reset_ms / 1000, lim.window, count, "redis",
                              lim.headers))
        i += 4
    return out


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


def _count(results: Sequence[RuleResult], *, allowed: bool) -> None:
    metering.event(_FEATURE, "allowed" if allowed else "denied")
    for r in results:
        if not r.evaluated:
            continue
        if allowed:
            metering.event(_FEATURE, f"allowed:{r.name}")
        elif not r.allowed:
            metering.event(_FEATURE, f"denied:{r.name}")


def _degraded(limits: Sequence[Limit], increment: bool, reason: str) -> Decision:
    _transition(True, reason)
    policies = [_policy(lim.policy) for lim in limits]
    closed_denies = "closed" in policies
    local_limits = [lim for lim, p in zip(limits, policies, strict=True) if p == "local"]
    local_results = iter(_local.evaluate(local_limits, increment=increment, others_allow=not closed_denies))
    cooldown = float(hotcache_settings.HEALTH_COOLDOWN or 1)
    results: list[RuleResult] = []
    for lim, policy in zip(limits, policies, strict=True):
        if policy == "open":
            res = RuleResult(lim.name, True, lim.limit, lim.limit, float(lim.window), lim.window, 0, "open",
                             lim.headers)
        elif policy == "closed":
            res = RuleResult(lim.name, False, lim.limit, 0, max(1.0, cooldown), lim.window, lim.limit + lim.cost,
                             "closed", lim.headers)
        else:
            res = next(local_results)
        results.append(res)
        if increment:
            metering.event(_FEATURE, f"degraded_{policy}")
    allowed = all(r.allowed for r in results)
    if increment:
        _count(results, allowed=allowed)
    return Decision(allowed, tuple(results), degraded="redis_unavailable")


# -- keys of a request -----------------------------------------------------------------------------


def _client_text(value: Any, what: str) -> str | None:
    """A client-supplied identifier (header, GET/POST field, API key) if it is usable text, else None.

    The one boundary for such text (keys.text): empty, over MAX_IDENTIFIER characters, control
    characters or lone surrogates make it *no identifier*, so the rule's on_missing_key applies.
    """
    if value is None:
        return None
    try:
        return keys.text(value, what=what, max_length=MAX_IDENTIFIER)
    except InvalidName:
        return None


def _bounded(value: str) -> str:
    # An identifier computed by the project (user pk, key function) is kept as is when short; a long
    # one is replaced by its digest, so the deny cache and the local limiter stay bounded in memory.
    if len(value) <= MAX_IDENTIFIER:
        return value
    return "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _api_key_digest(request: Any) -> str | None:
    meta = getattr(request, "META", {})
    raw = meta.get("HTTP_X_API_KEY")
    if not raw:
        auth = meta.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = auth.partition(" ") if isinstance(auth, str) else ("", "", "")
        if scheme.lower() in ("api-key", "apikey", "bearer", "token") and token.strip():
            raw = token.strip()
    raw = _client_text(raw, "API key") if raw else None
    if raw is None:
        return None
    secret = str(getattr(django_settings, "SECRET_KEY", "")).encode()
    # Secrets never reach a key: an HMAC of the presented key identifies the bucket.
    return hmac.new(secret, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _user_pk(request: Any) -> str | None:
    user = getattr(request, "user", None)
    pk = getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None
    return None if pk is None else str(pk)


def _client_address(request: Any) -> str | None:
    """The client's address bucket; None (and a warning, once per process) when there is no usable address."""
    global _warned_no_address
    value = clientip.client_bucket(request)
    if value is None and not _warned_no_address:
        with _state_lock:
            first, _warned_no_address = not _warned_no_address, True
        if first:
            remote = getattr(request, "META", {}).get("REMOTE_ADDR")
            log.warning(
                "hotcache: a request has no usable client address (REMOTE_ADDR=%.80r); rate limit rules keyed on "
                "ip or user_or_ip apply their on_missing_key to such requests (default: one shared bucket for "
                "all of them). A server on a Unix socket: add 'unix' to HOTCACHE['TRUSTED_PROXIES'] if the proxy "
                "in front appends X-Forwarded-For. Logged once per process.",
                remote,
            )
    return value


def key_value(key: str | Callable[..., Any], request: Any, group: str) -> str | None:
    """The identifier ``key`` gives for ``request``, or None when it has none: ``ip`` with no usable
    client address, ``user`` when anonymous, a missing, empty or unusable header/field/API key.

    Keys: ``ip``, ``user``, ``user_or_ip``, ``api_key``, ``header:<name>``, ``get:<name>``,
    ``post:<name>``, a callable ``(group, request)`` or its dotted path (as django-ratelimit).
    """
    if key == "ip":
        return _client_address(request)
    if key == "user":
        value = _user_pk(request)
        return None if value is None else _bounded(value)
    if key == "user_or_ip":
        value = _user_pk(request)
        return _bounded(f"user:{value}") if value is not None else _client_address(request)
    if key == "api_key":
        return _api_key_digest(request)
    if callable(key):
        value = key(group, request)
    elif isinstance(key, str) and ":" in key and key.split(":", 1)[0] in ACCESSOR_KEYS:
        accessor, name = key.split(":", 1)
        if accessor == "header":
            raw = request.META.get("HTTP_" + name.replace("-", "_").upper())
        elif accessor == "get":
            raw = request.GET.get(name)
        else:
            raw = request.POST.get(name)  # a body Django refuses raises here: Django's 400, as in the view
        return _client_text(raw, key)
    elif isinstance(key, str) and "." in key:
        try:
            fn = import_string(key)
        except ImportError as exc:
            raise ImproperlyConfigured(f"Ratelimit key {key!r:.80} does not import: {exc}") from exc
        value = fn(group, request)
    else:
        raise ImproperlyConfigured(f"Unknown ratelimit key: {key!r:.80}")
    if value is None or value == "":
        return None
    return _bounded(value if isinstance(value, str) else str(value))


# -- the django-ratelimit drop-in -------------------------------------------------------------------


def _method_match(request: Any, method: Any) -> bool:
    if method == ALL or method is None:
        return True
    if not isinstance(method, list | tuple):
        method = [method]
    return request.method in [str(m).upper() for m in method]


def _group_of(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        fn = fn.func
    parts = []
    if hasattr(fn, "__module__"):
        parts.append(fn.__module__)
    if hasattr(fn, "__self__"):
        parts.append(fn.__self__.__class__.__name__)
    parts.append(getattr(fn, "__qualname__", type(fn).__qualname__))
    return ".".join(parts)


def get_usage(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> dict[str, Any] | None:
    """django-ratelimit's get_usage: ``{count, limit, should_limit, time_left}`` (plus ``remaining``,
    ``retry_after``, ``decision``), or None when the method does not match or the rate is None."""
    if group is None and fn is None:
        raise ImproperlyConfigured("get_usage must be called with either `group` or `fn` arguments")
    if not getattr(django_settings, "RATELIMIT_ENABLE", True):
        return None
    if not _method_match(request, method):
        return None
    if group is None:
        group = _group_of(fn)
    if callable(rate):
        rate = rate(group, request)
    elif isinstance(rate, str) and "." in rate:
        rate = import_string(rate)(group, request)
    if rate is None:
        return None
    try:
        count, period = parse_rate(rate)
    except InvalidRate as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    if not key:
        raise ImproperlyConfigured("Ratelimit key must be specified")
    value = key_value(key, request, group)
    methods = "" if method == ALL or method is None else "".join(sorted(str(m).upper() for m in
                                                                        (method if isinstance(method, list | tuple)
                                                                         else [method])))
    # As django-ratelimit by default: a key with no value (anonymous 'user', no address) is one shared bucket.
    try:
        lim = Limit(f"{group}|{methods}" if methods else group, SHARED_IDENTIFIER if value is None else value,
                    count, period, _policy(None))
    except (InvalidName, InvalidRate) as exc:  # an odd group or method list
        raise ImproperlyConfigured(str(exc)) from exc
    choice = "shared" if value is not None else _decorator_on_missing_key()
    if value is None and increment:
        metering.event(_FEATURE, f"missing_key:{lim.name}")
    if choice == "skip":
        return None  # not limited, as when the rate is None
    if choice == "deny":
        decision = refuse_missing([lim], [lim], increment=increment)
    else:
        decision = evaluate([lim], increment=increment)
    res = decision.results[0]
    return {
        "count": res.count,
        "limit": count,
        "should_limit": not res.allowed,
        "time_left": res.retry_after if not res.allowed else max(1, math.ceil(res.reset)),
        "remaining": res.remaining,
        "retry_after": res.retry_after,
        "decision": decision,
    }


def _decorator_on_missing_key() -> str:
    choice = hotcache_settings.RATELIMIT_ON_MISSING_KEY
    return choice if choice in MISSING_KEY_CHOICES else "shared"


def default_on_missing_key(key: Any) -> str:
    """What a middleware rule without ``on_missing_key`` does when its key gives no identifier.

    ``shared`` for ``ip`` and ``user_or_ip``: every request should have an address, so one without is
    limited in one bucket with the others rather than not at all. ``skip`` for the rest: an anonymous
    visitor, a request without an API key or header is simply not what such a rule is about.
    """
    return "shared" if key in ADDRESS_KEYS else "skip"


def is_ratelimited(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> bool:
    usage = get_usage(request, group, fn, key, rate, method, increment)
    return False if usage is None else bool(usage["should_limit"])


def _exception(usage: dict[str, Any] | None) -> Exception:
    cls: Any = getattr(django_settings, "RATELIMIT_EXCEPTION_CLASS", Ratelimited)
    if isinstance(cls, str):
        cls = import_string(cls)
    retry = usage["retry_after"] if usage else None
    if isinstance(cls, type) and issubclass(cls, Ratelimited):
        return cls(retry_after=retry)
    return cls()


def ratelimit(
    group: str | None = None, key: Any = None, rate: Any = None, method: Any = ALL, block: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """django-ratelimit's decorator (same arguments, same ``request.limited``), for sync and async views."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        uses_user = key in ("user", "user_or_ip") or callable(key) or (isinstance(key, str) and "." in key)

        if iscoroutinefunction(fn):
            from asgiref.sync import sync_to_async

            @functools.wraps(fn)
            async def _awrapped(request: Any, *args: Any, **kw: Any) -> Any:
                if uses_user and hasattr(request, "auser"):
                    request.user = await request.auser()  # resolve here, not in the worker thread
                old_limited = getattr(request, "limited", False)
                usage = await sync_to_async(get_usage, thread_sensitive=False)(
                    request, group, fn, key, rate, method, True
                )
                limited = bool(usage and usage["should_limit"])
                request.limited = limited or old_limited
                if limited and block:
                    raise _exception(usage)
                return await fn(request, *args, **kw)

            return _awrapped

        @functools.wraps(fn)
        def _wrapped(request: Any, *args: Any, **kw: Any) -> Any:
            old_limited = getattr(request, "limited", False)
            usage = get_usage(request, group, fn, key, rate, method, True)
            limited = bool(usage and usage["should_limit"])
            request.limited = limited or old_limited
            if limited and block:
                raise _exception(usage)
            return fn(request, *args, **kw)

        return _wrapped

    return decorator


ratelimit.ALL = ALL  # type: ignore[attr-defined]
ratelimit.UNSAFE = UNSAFE  # type: ignore[attr-defined]
