"""hotcache's settings: one ``HOTCACHE`` dict in the host's settings, defaults here.

Example::

    HOTCACHE = {
        "REDIS_ALIAS": "default",            # a django-redis cache in CACHES
        "KEY_PREFIX": "hc",
        "MONGO_URL": "mongodb+srv://user:pass@cluster0.example.net/app",
        "REDIS_DAILY_COMMAND_BUDGET": 10_000,
        "RATELIMIT_RULES": [
            {"name": "login-burst", "rate": "5/10s", "key": "ip",
             "path": "/accounts/login/", "methods": ["POST"]},
        ],
    }

Values are read on every access (never bound at import), so ``override_settings(HOTCACHE=...)``
works in tests. Every key is documented in README.md ("Settings").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.conf import settings as django_settings

__all__ = ["DEFAULTS", "FEATURES", "HotcacheSettings", "hotcache_settings", "hotcache_source"]

T = TypeVar("T")
# LazySettings keeps each setting it has read in its own instance dict, and empties that same dict object whenever
# the settings change (a setting assigned or deleted, override_settings swapping the wrapped settings).
_READ_SETTINGS: dict[str, Any] = object.__getattribute__(django_settings, "__dict__")
_UNREAD = object()


def hotcache_source() -> object:
    """``getattr(settings, "HOTCACHE", None)``, from LazySettings' own record of it when it has one.

    The per-request paths compare it with what their derived values were built for on every call: a dict lookup
    instead of LazyObject's Python-level attribute hooks (0.04 against 0.25 µs here). The same object getattr gives."""
    value = _READ_SETTINGS.get("HOTCACHE", _UNREAD)
    return getattr(django_settings, "HOTCACHE", None) if value is _UNREAD else value

# The features hotcache ships; HOTCACHE["FEATURES"] may name a subset.
FEATURES = ("ratelimit", "users", "sessions", "mfa", "apikeys", "workbench", "analytics")

DEFAULTS: dict[str, Any] = {
    # --- Redis (foundation) ---
    "REDIS_ALIAS": "default",  # django-redis alias whose server, credentials and TLS hotcache uses
    "REDIS_URL": None,  # redis://, rediss:// (TLS), unix://: hotcache's own Redis, used instead of REDIS_ALIAS
    "REDIS_CLUSTER": False,  # True: REDIS_URL names a node of a Redis Cluster (hotcache builds a RedisCluster)
    "KEY_PREFIX": "hc",  # every hotcache key starts with "<KEY_PREFIX>:"
    # Hash tags (buckets) that workbench sessions and API keys' touched index are spread over (1-1024). None: 64
    # when REDIS_CLUSTER, else 1 (the single-tag layout). Changing it later: docs/operations/redis-cluster.md.
    "KEY_BUCKETS": None,
    # Timeouts fit a TLS Redis in another region (round trip up to 125 ms: timeout >= 4 x round trip; rule in
    # docs/operations/resilience.md); a hanging Redis costs at most this per call until the gate opens.
    "REDIS_SOCKET_TIMEOUT": 0.5,  # seconds: a reply, and the TLS handshake
    "REDIS_CONNECT_TIMEOUT": 0.5,  # seconds: the TCP connect
    "HEALTH_FAILURE_THRESHOLD": 3,  # consecutive timeouts (or server-state errors) that open the gate
    "HEALTH_COOLDOWN": 5.0,  # seconds the gate stays open before one probe
    "HEALTH_QUOTA_COOLDOWN": 300.0,  # seconds after a provider quota error (a daily quota: until the next UTC day)
    "REDIS_DAILY_COMMAND_BUDGET": 10_000,  # billed commands per UTC day (Upstash's former free tier)
    "REDIS_MONTHLY_COMMAND_BUDGET": 500_000,  # billed commands per UTC month (Upstash free tier since 2025)
    "REDIS_MEMORY_LIMIT": 256 * 1024 * 1024,  # bytes (Upstash free tier)
    "METER_FLUSH_EVERY": 500,  # commands buffered in-process before the meter is written (one command)
    "FEATURES": None,  # None = all of FEATURES; or a list naming the enabled ones
    # --- MongoDB (foundation) ---
    "MONGO_URL": None,  # mongodb://, mongodb+srv://, or mongomock://<db> (tests, embedded default)
    "MONGO_DATABASE": None,  # default: the database in MONGO_URL's path, else "hotcache"
    "MONGO_MAX_POOL_SIZE": 10,  # pymongo maxPoolSize per process
    # pymongo serverMonitoringMode: "poll" keeps 1 monitoring connection per process and server, "stream" (and
    # "auto" outside FaaS) 2; poll notices a topology change on its next check (heartbeatFrequencyMS, 10 s) or
    # when an operation fails on it. A serverMonitoringMode option in MONGO_URL wins over this setting.
    "MONGO_SERVER_MONITORING_MODE": "poll",
    "MONGO_WAIT_QUEUE_TIMEOUT_MS": 2000,  # an exhausted pool fails fast instead of hanging
    "MONGO_SERVER_SELECTION_TIMEOUT_MS": 2000,
    "MONGO_CONNECT_TIMEOUT_MS": 2000,
    "MONGO_SOCKET_TIMEOUT_MS": 5000,
    "MONGO_SERVER_CONNECTION_LIMIT": 500,  # the server's connection limit (Atlas M0: 500), for reports
    # MongoDB calls one process runs at once while Redis is healthy (its health gate closed): the request path's
    # rare MongoDB calls (cold API-key loads, reports, the durable writer) then share this many pooled
    # connections instead of growing the pool to one per thread. While the gate is open (an outage) the limit
    # steps aside: the fallbacks get all MONGO_MAX_POOL_SIZE. 0 = no healthy limit (the pool grows as calls overlap).
    "MONGO_HEALTHY_POOL_SIZE": 1,
    # A call that waited this long for the healthy limit goes ahead on the full pool (counted as an overflow):
    # the limit saves connections, it never turns a slow MongoDB into failures. As long as a call may wait for
    # a pooled connection (MONGO_WAIT_QUEUE_TIMEOUT_MS's default): shorter opens connections on every stall.
    "MONGO_HEALTHY_WAIT_MS": 2000,
    # Of those, at most this many at once (per process): a call past MONGO_HEALTHY_WAIT_MS that finds
    # MONGO_HEALTHY_POOL_SIZE + MONGO_HEALTHY_MAX_OVERFLOW calls in flight waits MONGO_WAIT_QUEUE_TIMEOUT_MS
    # more, as for a pooled connection, then fails (MongoUnavailable): a stalled MongoDB with Redis healthy
    # costs each process at most this many extra connections. No cap of its own while the gate is open.
    "MONGO_HEALTHY_MAX_OVERFLOW": 2,
    # pymongo maxIdleTimeMS: a pooled connection idle this long is closed, so an outage's extra connections
    # are shed after Redis recovers. 0 = never (pymongo's default). A maxIdleTimeMS in MONGO_URL wins.
    "MONGO_MAX_IDLE_TIME_MS": 60_000,
    # --- Periodic jobs (foundation) ---
    "SYNC_SCHEDULER": "celery",  # what runs the syncs: "celery" (beat entries, checked) | "cron" (manage.py commands)
    # --- Rate limiting ---
    "RATELIMIT_RULES": [],  # list of rule dicts, see README "Rate limiting"
    "RATELIMIT_STATUS_CODE": 429,  # status of a denied request (403 for django-ratelimit's behaviour)
    "RATELIMIT_DEFAULT_POLICY": "local",  # outage policy: open | closed | local
    "RATELIMIT_LEGACY_HEADERS": False,  # also send X-RateLimit-Limit/Remaining/Reset
    "RATELIMIT_DENY_CACHE_SIZE": 10_000,  # process-local cache of known denials
    "RATELIMIT_ON_MISSING_KEY": "shared",  # decorator API, key gives no identifier: skip | shared | deny
    "TRUSTED_PROXIES": [],  # CIDRs (and "unix") whose X-Forwarded-For / Forwarded are believed
    "TRUSTED_PROXY_HEADER": "x-forwarded-for",  # which header your proxies append: x-forwarded-for | forwarded
    "IPV6_PREFIX": 64,  # IPv6 clients are grouped by this network prefix
    "IPV4_PREFIX": 32,
    # --- Cached users ---
    "USER_CACHE_TTL": 300,  # seconds a cached user lives; also bounds out-of-band writes (no signals)
    "USER_LOADER": "hotcache.users.DjangoUserLoader",  # or "hotcache.users.MongoUserLoader", or your subclass
    # --- MFA codes ---
    "MFA_CODE_TTL": 300,
    "MFA_DIGITS": 6,
    "MFA_MAX_ATTEMPTS": 5,
    "MFA_USER_FAILURE_LIMIT": 10,
    "MFA_USER_FAILURE_WINDOW": 900,
    "MFA_RESEND_COOLDOWN": 30,
    "MFA_HOURLY_SEND_CAP": 5,
    # --- API keys ---
    "APIKEY_USAGE_RETENTION_DAYS": 30,  # days a per-key daily counter lives in Redis (MongoDB keeps the history)
    "APIKEY_CACHE_TTL": 300,  # seconds a key record stays cached in Redis (revocation does not wait for it)
    "APIKEY_INVALID_CACHE_TTL": 60,  # seconds an unknown key is remembered, so floods of made-up keys skip MongoDB
    "APIKEY_HEADER": "X-Api-Key",  # header read when Authorization carries no "Api-Key <key>"
    # --- Workbench sessions ---
    "WORKBENCH_IDLE_TIMEOUT": 3600,  # seconds; a session's Redis lifetime after its last save or load
    "WORKBENCH_MAX_STATE_BYTES": 1_000_000,  # largest state, as UTF-8 JSON
    "WORKBENCH_MAX_DEPTH": 64,  # deepest nesting of objects and arrays in a state, checked before encoding
    "WORKBENCH_PERSIST_IDLE_AFTER": 2700,  # seconds unused before the persister moves a session to history
    "WORKBENCH_PERSIST_INTERVAL": 300,  # seconds between persister runs (the beat schedule uses this)
    "WORKBENCH_CLAIM_TIMEOUT": 300,  # seconds before a crashed persister's claims are taken over
    "WORKBENCH_ENDED_TTL": 86_400,  # seconds an ended session waits in Redis for the persister (MongoDB outages)
    "WORKBENCH_PERSIST_BATCH": 1000,  # sessions per claim and per MongoDB bulk write
    "WORKBENCH_DURABLE_SAVES": True,  # copy every Redis save to MongoDB workbench_active (visible in a Redis outage)
    # seconds between this process's bulk writes of the durable copies (newest version per session), off the
    # request path; 0 writes each copy on the request path. A killed process loses at most one interval of copies.
    "WORKBENCH_DURABLE_INTERVAL": 1.0,
    # --- Analytics ---
    "ANALYTICS_RETENTION_HOURS": 168,  # TTL of Redis counters, pending batches and HLLs: the sync must run within it
    "ANALYTICS_MAX_COUNTERS_PER_HOUR": 5000,  # (event, path) counters per hour before "(other)" takes new paths
    "ANALYTICS_MAX_EVENTS_PER_DAY": 200,  # distinct event names per day with their own visitor HLL
    "ANALYTICS_MAX_PATH_LENGTH": 200,  # characters of a normalised path that are kept
    "ANALYTICS_SYNC_GRACE": 300,  # seconds after an hour ends before the sync claims it
    "ANALYTICS_SYNC_CHUNK": 1000,  # counters per MongoDB bulk write (at most 1000)
    "ANALYTICS_SYNC_LOCK_TIMEOUT": 900,  # seconds; saves duplicate work only (0 disables the lock)
    "ANALYTICS_BATCH_SECONDS": 0,  # 0: one script per event; > 0: events summed per process, one script per interval
    "ANALYTICS_FALLBACK_BUFFER_SIZE": 1000,  # counters buffered in-process while Redis is down
    "ANALYTICS_FALLBACK_FLUSH_INTERVAL": 2.0,  # seconds between bulk flushes of that buffer to MongoDB
    "ANALYTICS_TRACK_MAX_BODY": 4096,  # bytes accepted by POST /hotcache/analytics/track
    "ANALYTICS_MIDDLEWARE_INCLUDE": ["/"],  # path prefixes AnalyticsMiddleware tracks
    "ANALYTICS_MIDDLEWARE_EXCLUDE": ["/static/", "/media/", "/admin/", "/hotcache/", "/favicon.ico"],
    # --- Reports ---
    "REPORTS_DAYS": 30,  # days the admin reports and hotcache_status show (1-40; the meter keeps 40)
    "REPORTS_WARNING_PERCENT": 80,  # share of a budget or limit at which the reports warn
    "REPORTS_PERMISSION": None,  # "app_label.codename" staff also need to see the reports; None: any staff
}


class HotcacheSettings:
    """Attribute access to HOTCACHE with defaults; reads django.conf.settings on every access.

    Values derived from the settings that are too costly to recompute per request (compiled rate-limit
    rules, the per-request settings view) are built once with ``derived()`` and kept for the HOTCACHE
    dict they came from: assigning a new dict (override_settings, ``settings.HOTCACHE = ...``) or
    ``reload()`` (wired to Django's setting_changed in HotcacheConfig.ready) drops them.
    """

    def __init__(self) -> None:
        self._derived_lock = threading.Lock()
        self._derived_source: object = None
        self._derived: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            msg = f"hotcache has no setting {name!r}; known settings are listed in hotcache.conf.DEFAULTS"
            raise AttributeError(msg)
        return self.user_settings.get(name, DEFAULTS[name])

    @property
    def user_settings(self) -> dict[str, Any]:
        value = hotcache_source() or {}
        return value if isinstance(value, dict) else {}

    def derived(self, name: str, build: Callable[[], T]) -> T:
        """``build()``'s value for the current HOTCACHE dict, built once per dict (one identity check per call)."""
        source = _READ_SETTINGS.get("HOTCACHE", _UNREAD)  # hotcache_source(), inlined: once per derived value
        if source is _UNREAD:
            source = getattr(django_settings, "HOTCACHE", None)
        if self._derived_source is source:
            try:
                return cast(T, self._derived[name])  # stored by build() for this name
            except KeyError:
                pass
        value = build()
        with self._derived_lock:
            if self._derived_source is not source:
                # The snapshot holds a reference to its source dict, so id() reuse cannot fool the check.
                self._derived_source = source
                self._derived = {}
            # Two threads building at once: the first stored value wins, so state another thread already
            # holds (a deny cache, a local limiter) is never replaced by a second, empty copy.
            return cast(T, self._derived.setdefault(name, value))

    def reload(self) -> None:
        """Forget every derived value (settings changed)."""
        with self._derived_lock:
            self._derived_source = None
            self._derived = {}

    def enabled(self, feature: str) -> bool:
        """Whether a feature is enabled by HOTCACHE['FEATURES'] (None enables all).

        A value that is not a list or tuple enables nothing (hotcache.E006 reports it) rather than raising
        from every feature's system check, or matching substrings of a string.
        """
        features = self.FEATURES
        if features is None:
            return True
        return isinstance(features, list | tuple) and feature in features


hotcache_settings = HotcacheSettings()
