"""The only module that talks to pymongo (or the in-process stand-in). Every MongoDB call hotcache makes is here.

``HOTCACHE['MONGO_URL']`` picks the driver:

* ``mongodb://`` / ``mongodb+srv://``: a real server through pymongo. One MongoClient per process,
  created lazily and again after fork (gunicorn, Celery prefork), with a small ``maxPoolSize``, a
  ``waitQueueTimeoutMS`` so an exhausted pool fails fast, ``maxIdleTimeMS`` so an outage's extra
  connections are shed after it, and a ConnectionPoolListener counting open, checked-out, peak and
  failed check-outs, and which call site opened each connection (connection_origins()).
  While Redis is healthy (its health gate closed) at most MONGO_HEALTHY_POOL_SIZE calls of the process
  run at once (the healthy lane), so the pool stays at that size (MONGO_HEALTHY_MAX_OVERFLOW more when
  MongoDB is slow); while the gate is open the fallbacks get the whole pool (docs/operations/mongodb.md,
  "The pool while Redis is healthy").
* ``mongomock://<database>``: mongomock in this process (tests, the embedded default). It keeps
  no data across processes, ignores pool options and fires no pool events; calls to it are
  serialised because it is not thread-safe.

Features use collection(name, feature=...) and the small set of operations below, all of which real
MongoDB supports with the documented semantics. Driver errors become hotcache errors here:
network/selection/pool timeouts -> MongoUnavailable, E11000 -> DuplicateKey, other write errors ->
MongoWriteError. Each call counts one MongoDB operation for its feature (metering).

pymongo retries a read or a single-document/unordered write once after a network error, so a server that
stops answering fails a call after about 2 x MONGO_SOCKET_TIMEOUT_MS. A write that was sent and then timed
out may still be applied by the server (once: retryable writes carry one transaction number):
MongoUnavailable.maybe_applied says so (tests/mongo/test_fail_points.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import functools
import os
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pymongo
from pymongo import monitoring
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WriteConcernError,
    WriteError,
)

from hotcache import metering
from hotcache.backends.health import CLOSED, redis_gate
from hotcache.conf import hotcache_settings
from hotcache.exceptions import DuplicateKey, MongoUnavailable, MongoWriteError

__all__ = [
    "ASCENDING",
    "DESCENDING",
    "BulkResult",
    "Collection",
    "Insert",
    "PoolStats",
    "Update",
    "collection",
    "connection_origins",
    "database_name",
    "inject_failures",
    "is_process_local",
    "local_pool_stats",
    "ping",
    "pool_stats",
    "reset",
    "url_scheme",
]

T = TypeVar("T")
ASCENDING, DESCENDING = pymongo.ASCENDING, pymongo.DESCENDING
_DUPLICATE_KEY = 11000
SCHEMES = ("mongodb", "mongodb+srv", "mongomock")


# --- pool monitoring -----------------------------------------------------------------------------


@dataclass(slots=True)
class PoolStats:
    open: int = 0  # connections created and not closed
    checked_out: int = 0
    peak_checked_out: int = 0
    peak_open: int = 0
    failed_checkouts: int = 0
    max_pool_size: int = 0
    lane_waits: int = 0  # calls that waited for the healthy lane (MONGO_HEALTHY_POOL_SIZE) while Redis was healthy
    lane_overflows: int = 0  # of those, calls that waited MONGO_HEALTHY_WAIT_MS and went ahead on the full pool
    lane_refusals: int = 0  # of those, calls failed with MONGO_HEALTHY_POOL_SIZE + MONGO_HEALTHY_MAX_OVERFLOW in flight
    lane_wait_ms: int = 0  # time those calls spent waiting, in all (milliseconds)
    monitored: bool = True  # False for the stand-in, which has no pool

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


_calling = threading.local()  # .feature: the feature whose call this thread is making (connection_origins)
_PYMONGO_DIR = os.path.dirname(pymongo.__file__)
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]


def _call_site() -> str:
    """``<feature> <module>:<function>`` of the hotcache code whose MongoDB call is opening a connection now
    (the first frame outside pymongo, this module and the standard library); called on connection creation
    only, so the stack walk costs nothing on the calls that reuse a pooled connection."""
    feature = getattr(_calling, "feature", None) or "-"
    frame: Any = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        stdlib = name.startswith(_STDLIB_DIR) and "-packages" not in name  # not site-/dist-packages under it
        if not (stdlib or name.startswith(_PYMONGO_DIR) or name == __file__):
            module = name.rsplit("/hotcache/", 1)[-1] if "/hotcache/" in name else os.path.basename(name)
            return f"{feature} {module}:{frame.f_code.co_name}"
        frame = frame.f_back
    return f"{feature} pymongo (background)"


class _PoolListener(monitoring.ConnectionPoolListener):
    def __init__(self, stats: PoolStats, origins: Counter[str]) -> None:
        self.stats = stats
        self.origins = origins
        self._lock = threading.Lock()

    def connection_created(self, event: Any) -> None:
        site = _call_site()
        with self._lock:
            self.stats.open += 1
            self.stats.peak_open = max(self.stats.peak_open, self.stats.open)
            self.origins[site] += 1

    def connection_closed(self, event: Any) -> None:
        with self._lock:
            self.stats.open = max(0, self.stats.open - 1)

    def connection_checked_out(self, event: Any) -> None:
        with self._lock:
            self.stats.checked_out += 1
            self.stats.peak_checked_out = max(self.stats.peak_checked_out, self.stats.checked_out)

    def connection_checked_in(self, event: Any) -> None:
        with self._lock:
            self.stats.checked_out = max(0, self.stats.checked_out - 1)

    def connection_check_out_failed(self, event: Any) -> None:
        with self._lock:
            self.stats.failed_checkouts += 1

    # The remaining events carry nothing the reports use.
    def pool_created(self, event: Any) -> None: ...
    def pool_ready(self, event: Any) -> None: ...
    def pool_cleared(self, event: Any) -> None: ...
    def pool_closed(self, event: Any) -> None: ...
    def connection_ready(self, event: Any) -> None: ...
    def connection_check_out_started(self, event: Any) -> None: ...


# --- the client, per process ---------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    pid: int
    url: str
    client: Any
    stats: PoolStats
    lock: threading.RLock | None  # set for the in-process stand-in only
    origins: Counter[str] = field(default_factory=Counter)  # call site -> pooled connections it opened


_state_lock = threading.Lock()
_state: _State | None = None
_failures = threading.Event()  # set: every operation fails as if the network were down (fault injection)


def url_scheme(url: str | None) -> str:
    return urlsplit(url or "").scheme


def is_process_local(url: str | None = None) -> bool:
    """Whether ``url`` (default: ``HOTCACHE['MONGO_URL']``) is the in-process stand-in, whose data no other
    process sees and which is gone when this process exits (check W003; commands refuse to write to it)."""
    if url is None:
        url = str(hotcache_settings.MONGO_URL or "")
    return url_scheme(url) == "mongomock"


def database_name() -> str:
    configured = hotcache_settings.MONGO_DATABASE
    if configured:
        return str(configured)
    url = str(hotcache_settings.MONGO_URL or "")
    parts = urlsplit(url)
    name = parts.path.lstrip("/").split("?")[0]
    if not name and parts.scheme == "mongomock":
        # mongomock://<database> (the short form); mongomock://host/<database> reads like mongodb://.
        name = parts.netloc
    return name or "hotcache"


def _make_state(url: str) -> _State:
    scheme = url_scheme(url)
    if scheme == "mongomock":
        try:
            import mongomock
        except ImportError as exc:
            msg = (
                "HOTCACHE['MONGO_URL'] uses the in-process stand-in (mongomock://), which needs the embedded "
                "extra: pip install 'hotcache[embedded]' (or point MONGO_URL at a real MongoDB)"
            )
            raise MongoUnavailable(msg) from exc

        _patch_mongomock_bulk()
        stats = PoolStats(monitored=False, max_pool_size=0)
        return _State(os.getpid(), url, mongomock.MongoClient(tz_aware=True), stats, threading.RLock())
    if scheme not in ("mongodb", "mongodb+srv"):
        msg = f"HOTCACHE['MONGO_URL'] must start with mongodb://, mongodb+srv:// or mongomock://, not {scheme!r}"
        raise MongoUnavailable(msg)
    stats = PoolStats(max_pool_size=int(hotcache_settings.MONGO_MAX_POOL_SIZE))
    # One monitoring connection per process with "poll" (the default) instead of two: the connection budget
    # is processes x (monitoring + pool). Idle connections closed after MONGO_MAX_IDLE_TIME_MS: an outage's
    # extra connections are shed after it. An option written in the URL wins.
    query = urlsplit(url).query.lower()
    options: dict[str, Any] = (
        {} if "servermonitoringmode=" in query
        else {"serverMonitoringMode": str(hotcache_settings.MONGO_SERVER_MONITORING_MODE)}
    )
    idle_ms = int(hotcache_settings.MONGO_MAX_IDLE_TIME_MS)
    if idle_ms > 0 and "maxidletimems=" not in query:
        options["maxIdleTimeMS"] = idle_ms
    origins: Counter[str] = Counter()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url,
        **options,
        maxPoolSize=int(hotcache_settings.MONGO_MAX_POOL_SIZE),
        waitQueueTimeoutMS=int(hotcache_settings.MONGO_WAIT_QUEUE_TIMEOUT_MS),
        serverSelectionTimeoutMS=int(hotcache_settings.MONGO_SERVER_SELECTION_TIMEOUT_MS),
        connectTimeoutMS=int(hotcache_settings.MONGO_CONNECT_TIMEOUT_MS),
        socketTimeoutMS=int(hotcache_settings.MONGO_SOCKET_TIMEOUT_MS),
        event_listeners=[_PoolListener(stats, origins)],
        appname="hotcache",
        tz_aware=True,
        connect=False,  # no sockets until first use: safe to create before a fork
    )
    return _State(os.getpid(), url, client, stats, None, origins)


def _current() -> _State:
    global _state
    url = str(hotcache_settings.MONGO_URL or "")
    if not url:
        msg = "HOTCACHE['MONGO_URL'] is not set; hotcache keeps durable data in MongoDB"
        raise MongoUnavailable(msg)
    state = _state
    if state is not None and state.pid == os.getpid() and state.url == url:
        return state
    with _state_lock:
        state = _state
        if state is None or state.pid != os.getpid() or state.url != url:
            # A client inherited through fork is never reused (pymongo clients are not fork-safe);
            # it is dropped without close(), which would touch the parent's sockets.
            if state is not None and state.pid == os.getpid():
                state.client.close()
            state = _make_state(url)
            _state = state
    return state


def reset() -> None:
    """Close this process's client (settings changed; tests)."""
    global _state
    with _state_lock:
        if _state is not None and _state.pid == os.getpid():
            _state.client.close()
        _state = None
    _failures.clear()
    _indexed.clear()


def pool_stats() -> PoolStats:
    try:
        return _current().stats
    except MongoUnavailable:
        return PoolStats(monitored=False)


def connection_origins() -> dict[str, int]:
    """Pooled connections this process's client opened, per call site (``<feature> <module>:<function>``),
    from pymongo's connection_created events; the monitoring connection (one per process with "poll") is not
    a pooled connection and is not counted. Empty before the first call and for the stand-in."""
    state = _state
    if state is None or state.pid != os.getpid():
        return {}
    return dict(state.origins)


def local_pool_stats() -> PoolStats | None:
    """This process's pool figures if it has a monitored client already (never creates one)."""
    state = _state
    if state is None or state.pid != os.getpid() or not state.stats.monitored:
        return None
    return state.stats


@contextlib.contextmanager
def inject_failures() -> Iterator[None]:
    """Make every MongoDB operation in this process fail like a lost network, until the block exits."""
    _failures.set()
    try:
        yield
    finally:
        _failures.clear()


def set_failing(failing: bool) -> None:
    """Switch fault injection on or off (for long-running load tests driving it from outside)."""
    if failing:
        _failures.set()
    else:
        _failures.clear()


# --- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """An update_one for bulk(): filter, update document, upsert."""

    filter: Mapping[str, Any]
    update: Mapping[str, Any]
    upsert: bool = False


@dataclass(frozen=True, slots=True)
class Insert:
    document: Mapping[str, Any]


@dataclass(slots=True)
class BulkResult:
    matched: int = 0
    modified: int = 0
    upserted: int = 0
    inserted: int = 0
    duplicates: list[int] = field(default_factory=list)  # indexes of operations that hit E11000


class _Lane:
    """At most MONGO_HEALTHY_POOL_SIZE MongoDB calls of this process at once while Redis's health gate is
    closed (healthy); no limit of its own while the gate is open or probing, where the fallbacks get the whole
    pool and pymongo's wait queue (MONGO_WAIT_QUEUE_TIMEOUT_MS) governs as before.

    pymongo's pool opens a connection only when a call finds none idle and reuses the most recently used one,
    so with at most N calls in flight the pool holds at most N connections. Waiting calls go first come,
    first served (a new call never overtakes one already waiting); a waiting call re-reads the gate every
    50 ms (an outage starting lets the waiters go at once). After MONGO_HEALTHY_WAIT_MS a call may go ahead
    (an overflow, counted) while fewer than MONGO_HEALTHY_POOL_SIZE + MONGO_HEALTHY_MAX_OVERFLOW calls are in
    flight; past that cap it waits like a call for a pooled connection, MONGO_WAIT_QUEUE_TIMEOUT_MS more, and
    then fails as pymongo's wait queue does (counted as a refusal): a stalled MongoDB must not make every
    process open connections while Redis is healthy. A thread already holding the lane is not queued again."""

    _RECHECK = 0.05

    def __init__(self) -> None:
        self._forget()
        os.register_at_fork(after_in_child=self._forget)  # a parent's calls in flight are not the child's

    def _forget(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[object] = collections.deque()
        self.in_flight = 0
        _calling.in_lane = False

    @staticmethod
    def limit() -> int:
        """The current limit; 0 = none (Redis's gate not closed, or MONGO_HEALTHY_POOL_SIZE 0)."""
        if redis_gate.state != CLOSED:
            return 0
        return max(0, int(hotcache_settings.MONGO_HEALTHY_POOL_SIZE))

    def enter(self, stats: PoolStats) -> bool:
        """Admit one call, waiting while the limit is reached; False if no limit applies (nothing to leave).
        Raises pymongo's WaitQueueTimeoutError (MongoUnavailable to the caller) if the overflow cap stayed full."""
        if getattr(_calling, "in_lane", False):
            return False  # a call made while this thread holds the lane must not queue behind itself
        limit = self.limit()
        if limit <= 0:
            return False
        with self._cond:
            if self.in_flight >= limit or self._queue:
                self._wait(limit, stats)
            self.in_flight += 1
        _calling.in_lane = True
        return True

    def _wait(self, limit: int, stats: PoolStats) -> None:
        """Wait in line (the condition held) until this call may go ahead; see the class docstring."""
        stats.lane_waits += 1
        started = time.monotonic()
        overflow_at = started + int(hotcache_settings.MONGO_HEALTHY_WAIT_MS) / 1000
        give_up_at = overflow_at + int(hotcache_settings.MONGO_WAIT_QUEUE_TIMEOUT_MS) / 1000
        ticket = object()
        self._queue.append(ticket)
        try:
            while limit > 0:
                now = time.monotonic()
                late = now >= overflow_at
                room = limit + (max(0, int(hotcache_settings.MONGO_HEALTHY_MAX_OVERFLOW)) if late else 0)
                if self._queue[0] is ticket and self.in_flight < room:
                    stats.lane_overflows += 1 if late else 0  # went ahead after its healthy wait
                    break
                if now >= give_up_at:
                    stats.lane_refusals += 1
                    msg = (
                        f"waited {round((now - started) * 1000)} ms for the healthy limit: "
                        f"MONGO_HEALTHY_POOL_SIZE + MONGO_HEALTHY_MAX_OVERFLOW ({room}) calls of this process "
                        "in flight while Redis is healthy (MongoDB slow or stalled)"
                    )
                    raise WaitQueueTimeoutError(msg)
                self._cond.wait(min((give_up_at if late else overflow_at) - now, self._RECHECK))
                limit = self.limit()
        finally:
            self._queue.remove(ticket)
            self._cond.notify_all()  # the next in line may go now
            stats.lane_wait_ms += round((time.monotonic() - started) * 1000)

    def leave(self) -> None:
        _calling.in_lane = False
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()


_lane = _Lane()


def _run(feature: str, op: Callable[[], T]) -> T:
    state = _current()
    metering.mongo_op(feature)
    if _failures.is_set():
        metering.event(feature, "mongo_error")
        raise MongoUnavailable(f"mongodb call for {feature} failed: hotcache fault injection: MongoDB unreachable")
    try:
        if state.lock is not None:
            with state.lock:
                return op()
        admitted = _lane.enter(state.stats)
        _calling.feature = feature
        try:
            return op()
        finally:
            _calling.feature = None
            if admitted:
                _lane.leave()
    except DuplicateKeyError as exc:
        raise DuplicateKey(str(exc), code=_DUPLICATE_KEY) from exc
    except WriteConcernError as exc:
        # The primary applied the write but could not confirm it as asked (stepping down, shutting down,
        # replication timeout): an availability problem, and the write may stand.
        metering.event(feature, "mongo_error")
        raise MongoUnavailable(f"mongodb write for {feature} not confirmed: {exc}", maybe_applied=True) from exc
    except (ConnectionFailure, ExecutionTimeout) as exc:
        metering.event(feature, "mongo_error")
        # Lost after sending (a read timeout, a dropped connection), the server may have run it; not when
        # no server was selected or the server refused it as not primary.
        sent = isinstance(exc, AutoReconnect) and not isinstance(exc, NotPrimaryError | ServerSelectionTimeoutError)
        raise MongoUnavailable(f"mongodb call for {feature} failed: {exc}", maybe_applied=sent) from exc
    except (WriteError, OperationFailure) as exc:
        if getattr(exc, "code", None) == _DUPLICATE_KEY:
            raise DuplicateKey(str(exc), code=_DUPLICATE_KEY) from exc
        raise MongoWriteError(str(exc), code=getattr(exc, "code", None)) from exc
    except PyMongoError as exc:
        metering.event(feature, "mongo_error")
        raise MongoUnavailable(f"mongodb call for {feature} failed: {exc}") from exc


class Collection:
    """A MongoDB collection as hotcache uses it: a few operations, each counted and error-mapped."""

    def __init__(self, name: str, feature: str) -> None:
        self.name = name
        self.feature = feature

    def _raw(self) -> pymongo.collection.Collection[dict[str, Any]]:
        # A pymongo collection, or mongomock's (the in-process stand-in), which has the same interface.
        collection: pymongo.collection.Collection[dict[str, Any]] = _current().client[database_name()][self.name]
        return collection

    def insert_one(self, document: Mapping[str, Any]) -> Any:
        return _run(self.feature, lambda: self._raw().insert_one(dict(document)).inserted_id)

    def find_one(
        self, filter: Mapping[str, Any], projection: Mapping[str, Any] | None = None, *, shared: bool = False
    ) -> dict[str, Any] | None:
        """``shared``: a call made while the same query of this process is in flight waits for that one's
        answer instead of sending its own (a cold start's herd of misses for one key would otherwise take a
        pooled connection each). Only for reads whose caller tolerates an answer read just before its call
        began (nothing it wrote itself a moment ago)."""
        if shared:
            marker = (str(hotcache_settings.MONGO_URL), database_name(), self.name, repr(filter), repr(projection))
            return _shared_reads.run(self.feature, marker, lambda: self.find_one(filter, projection))
        return _run(self.feature, lambda: self._raw().find_one(dict(filter), projection))

    def find(
        self,
        filter: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        projection: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        def op() -> list[dict[str, Any]]:
            cursor = self._raw().find(dict(filter), projection)
            if sort:
                cursor = cursor.sort(list(sort))
            if limit:
                cursor = cursor.limit(limit)
            return list(cursor)

        return _run(self.feature, op)

    def count(self, filter: Mapping[str, Any]) -> int:
        return _run(self.feature, lambda: self._raw().count_documents(dict(filter)))

    def aggregate(self, pipeline: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return _run(self.feature, lambda: list(self._raw().aggregate([dict(s) for s in pipeline])))

    def update_one(self, filter: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool = False) -> int:
        """Returns the number of documents matched (1 for an upsert that inserted)."""

        def op() -> int:
            result = self._raw().update_one(dict(filter), dict(update), upsert=upsert)
            return result.matched_count + (1 if result.upserted_id is not None else 0)

        return _run(self.feature, op)

    def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any],
        *,
        upsert: bool = False,
        return_new: bool = True,
        projection: Mapping[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] | None = None,
    ) -> dict[str, Any] | None:
        document = pymongo.ReturnDocument.AFTER if return_new else pymongo.ReturnDocument.BEFORE
        return _run(
            self.feature,
            lambda: self._raw().find_one_and_update(
                dict(filter), dict(update), projection=projection, sort=list(sort) if sort else None,
                upsert=upsert, return_document=document,
            ),
        )

    def find_one_and_delete(self, filter: Mapping[str, Any]) -> dict[str, Any] | None:
        return _run(self.feature, lambda: self._raw().find_one_and_delete(dict(filter)))

    def delete_one(self, filter: Mapping[str, Any]) -> int:
        return _run(self.feature, lambda: self._raw().delete_one(dict(filter)).deleted_count)

    def delete_many(self, filter: Mapping[str, Any]) -> int:
        return _run(self.feature, lambda: self._raw().delete_many(dict(filter)).deleted_count)

    def bulk(self, operations: Sequence[Update | Insert], *, ordered: bool = False) -> BulkResult:
        """One bulk_write (pymongo splits it into server batches). E11000 errors are reported, not raised."""
        if not operations:
            return BulkResult()
        requests = [
            pymongo.UpdateOne(dict(o.filter), dict(o.update), upsert=o.upsert)
            if isinstance(o, Update)
            else pymongo.InsertOne(dict(o.document))
            for o in operations
        ]

        def op() -> BulkResult:
            try:
                r = self._raw().bulk_write(requests, ordered=ordered)
                return BulkResult(r.matched_count, r.modified_count, r.upserted_count, r.inserted_count)
            except BulkWriteError as exc:
                details = exc.details
                errors = details.get("writeErrors", [])
                others = [e for e in errors if e.get("code") != _DUPLICATE_KEY]
                if others:
                    raise MongoWriteError(str(others[0].get("errmsg")), code=others[0].get("code")) from exc
                if details.get("writeConcernErrors"):
                    # Applied on the primary, not confirmed as asked: unavailable, maybe applied (as above).
                    raise WriteConcernError(str(details["writeConcernErrors"][0].get("errmsg")),
                                            details["writeConcernErrors"][0].get("code"), details) from exc
                return BulkResult(
                    details.get("nMatched", 0),
                    details.get("nModified", 0),
                    details.get("nUpserted", 0),
                    details.get("nInserted", 0),
                    sorted(e["index"] for e in errors),
                )

        return _run(self.feature, op)

    def create_index(
        self,
        keys: Sequence[tuple[str, int]],
        *,
        unique: bool = False,
        expire_after_seconds: int | None = None,
        name: str | None = None,
    ) -> str:
        options: dict[str, Any] = {"unique": unique}
        if expire_after_seconds is not None:
            options["expireAfterSeconds"] = expire_after_seconds
        if name:
            options["name"] = name
        return _run(self.feature, lambda: self._raw().create_index(list(keys), **options))

    def index_information(self) -> Mapping[str, Any]:
        return _run(self.feature, lambda: self._raw().index_information())


class _SharedReads:
    """Identical reads in flight in this process, each answered once to every caller that asked meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Any, concurrent.futures.Future[Any]] = {}
        os.register_at_fork(after_in_child=self._forget)  # a flight of the parent never lands in a child

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._flights = {}

    def run(self, feature: str, marker: Any, read: Callable[[], T]) -> T:
        with self._lock:
            flight = self._flights.get(marker)
            leader = flight is None
            if flight is None:
                flight = self._flights[marker] = concurrent.futures.Future()
        if not leader:
            metering.event(feature, "mongo_read_shared")  # a query not sent
            shared: T = copy.deepcopy(flight.result())  # each caller its own document, as if it had read it
            return shared
        try:
            value = read()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            with self._lock:
                self._flights.pop(marker, None)


_shared_reads = _SharedReads()
_collections: dict[tuple[str, str], Collection] = {}
_indexed: set[tuple[str, str, str]] = set()
_indexing_lock = threading.Lock()


def collection(name: str, *, feature: str) -> Collection:
    coll = _collections.get((name, feature))
    if coll is None:
        coll = _collections.setdefault((name, feature), Collection(name, feature))
    return coll


def ensure_indexes(name: str, *, feature: str, create: Callable[[Collection], object]) -> Collection:
    """Run ``create`` (index creation) once per process, database and collection; return the collection.

    Single-flight: the threads of a process that starts under load wait for one creation instead of each
    sending it (each would hold a pooled connection: a burst that stays in the pool)."""
    coll = collection(name, feature=feature)
    marker = (str(hotcache_settings.MONGO_URL), database_name(), name)
    if marker not in _indexed:
        with _indexing_lock:
            if marker not in _indexed:
                create(coll)
                _indexed.add(marker)
    return coll


def ping() -> float:
    """Round-trip time of a ping in seconds; raises MongoUnavailable."""
    import time

    state = _current()
    start = time.perf_counter()
    _run("status", lambda: state.client.admin.command("ping"))
    return time.perf_counter() - start


def server_status_connections() -> dict[str, int] | None:
    """The server's own connection counts (serverStatus.connections), or None where not available."""
    state = _current()
    if state.lock is not None:
        return None
    try:
        status = _run("status", lambda: state.client.admin.command("serverStatus"))
    except (MongoUnavailable, MongoWriteError):
        return None
    conns = status.get("connections") or {}
    return {k: int(v) for k, v in conns.items() if isinstance(v, int | float)}


@functools.cache
def _patch_mongomock_bulk() -> None:
    """mongomock 4.3 + pymongo >= 4.11: bulk_write passes ``sort=`` that mongomock rejects (mongomock#912)."""
    from mongomock.collection import BulkOperationBuilder

    def drop_sort(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
            if sort:
                msg = "sort in bulk updates is not supported by mongomock"
                raise NotImplementedError(msg)
            return fn(self, *args, **kwargs)

        return wrapper

    for name in ("add_update", "add_replace"):
        setattr(BulkOperationBuilder, name, drop_sort(getattr(BulkOperationBuilder, name)))


def drop_demo_database(name: str) -> None:
    """Drop the demo's own database (and only a database whose name ends in '_demo')."""
    if not name.endswith("_demo"):
        msg = f"refusing to drop {name!r}: only the demo's own *_demo database may be dropped"
        raise ValueError(msg)
    state = _current()
    _run("demo", lambda: state.client.drop_database(name))
    _indexed.difference_update({m for m in _indexed if m[1] == name})
