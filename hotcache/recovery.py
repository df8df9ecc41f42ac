"""The lost-reply and recovery protocol, written once; design and state diagram in docs/design/lost-replies.md.

Redis may apply a command whose reply never comes back (``RedisUnavailable.maybe_applied``). A feature
that must count exactly once names each call with a *writer* (this process and thread) so a later
call can ask Redis whether the lost one ran, keeps the call *in doubt* until it is settled, and keeps
the writes it owes Redis after an outage (*deferred writes*) until Redis takes them. A process that
wrote to MongoDB because Redis was unreachable owes Redis an *outage notice* (MFA's "MongoDB may hold
live codes until T", the workbench fence) with its next successful call, and may keep what it knows
without Redis in a *watermark* (MFA's T itself). Bulk writes that meet a duplicate key are retried
once as the feature says. Each feature declares only what is specific to it: how to settle its doubt
and what to replay.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hotcache import clock
from hotcache.backends import mongo

__all__ = [
    "Deferred",
    "DeferredCounts",
    "InDoubt",
    "LastApplied",
    "OutageNotice",
    "ProcessLocal",
    "Recent",
    "RetriedBulk",
    "Watermark",
    "bulk_retrying_duplicates",
    "forget_all",
    "process_nonce",
    "writer",
]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# --- writer identity --------------------------------------------------------------------------------

_nonce = secrets.token_hex(6)


def process_nonce() -> str:
    """A random name for this process, new in every forked child (a reused pid never inherits state)."""
    return _nonce


def writer() -> str:
    """``<process nonce>:<thread ident>``: one writer per thread, unique across processes and forks."""
    return f"{_nonce}:{threading.get_ident()}"


# Every registry below forgets the parent's state in a forked child: the parent settles its own doubts
# and replays its own deferred writes; the child starts as a new writer with nothing owed.
_registries: weakref.WeakSet[_ForkLocal] = weakref.WeakSet()


class _ForkLocal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        _registries.add(self)

    def _forget(self) -> None:
        raise NotImplementedError

    def _renew_locks(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork time stays held in the child

    def clear(self) -> None:
        """Forget everything (tests; a forked child)."""
        with self._lock:
            self._forget()


def _after_fork_in_child() -> None:
    global _nonce
    _nonce = secrets.token_hex(6)
    for registry in list(_registries):
        registry._renew_locks()
        registry._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def forget_all() -> None:
    """Forget every doubt, deferred write, outage notice and other ProcessLocal state of this process
    (tests: "another process")."""
    for registry in list(_registries):
        registry.clear()


# --- calls in doubt ---------------------------------------------------------------------------------


class InDoubt(_ForkLocal, Generic[T]):
    """Calls whose reply was lost, at most one per writer, until the feature settles them.

    A writer settles its own doubt before it sends anything else, so "did the lost call run?" has one
    answer in Redis (the feature's token under the writer). Entries are compared by identity on
    removal, so a doubt registered again meanwhile is never dropped by a stale settle.
    """

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, T] = {}

    def _forget(self) -> None:
        self._items.clear()

    def add(self, writer_id: str, doubt: T) -> None:
        with self._lock:
            self._items[writer_id] = doubt

    def get(self, writer_id: str) -> T | None:
        with self._lock:
            return self._items.get(writer_id)

    def settled(self, writer_id: str, doubt: T) -> bool:
        """Remove ``doubt`` if it is still the one registered for ``writer_id``; True when it was."""
        with self._lock:
            if self._items.get(writer_id) is doubt:
                del self._items[writer_id]
                return True
            return False

    def items(self) -> list[tuple[str, T]]:
        with self._lock:
            return list(self._items.items())

    def values(self) -> list[T]:
        with self._lock:
            return list(self._items.values())

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)


class LastApplied(_ForkLocal, Generic[T]):
    """What each writer last knows Redis applied (its last token, and when), forgotten with the writer.

    The baseline for settling a doubt: when the writer's record in Redis holds neither the lost call's
    token nor this one, someone else wrote it, and applied or not cannot be told.
    """

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, T] = {}

    def _forget(self) -> None:
        self._items.clear()

    def set(self, writer_id: str, value: T) -> None:
        with self._lock:
            self._items[writer_id] = value

    def get(self, writer_id: str) -> T | None:
        with self._lock:
            return self._items.get(writer_id)

    def forget(self, writer_id: str) -> None:
        with self._lock:
            self._items.pop(writer_id, None)

    def __len__(self) -> int:
        return len(self._items)


# --- deferred writes --------------------------------------------------------------------------------


class Deferred(_ForkLocal, Generic[K]):
    """Writes this process owes Redis after an outage (an invalidation, a tombstone), replayed when it answers.

    ``snapshot()`` then ``done(items)``: an item added again while a replay runs stays owed. Optionally
    bounded: beyond ``max_items`` the oldest are dropped (``add``/``update`` return how many), and
    ``snapshot(max_age=s)`` first forgets items owed for more than ``s`` seconds (moot by then).
    """

    def __init__(self, max_items: int | None = None) -> None:
        super().__init__()
        self.max_items = max_items
        self._items: dict[K, float] = {}  # item -> when it was first owed (clock.monotonic); oldest first

    def _forget(self) -> None:
        self._items.clear()

    def add(self, *items: K) -> int:
        return self.update(items)

    def update(self, items: Iterable[K]) -> int:
        """Owe ``items`` (one already owed keeps its age); returns how many of the oldest were dropped."""
        now = clock.monotonic()
        with self._lock:
            for item in items:
                self._items.setdefault(item, now)
            dropped = 0 if self.max_items is None else max(0, len(self._items) - self.max_items)
            for item in list(itertools.islice(self._items, dropped)):
                del self._items[item]
        return dropped

    def snapshot(self, max_age: float | None = None) -> set[K]:
        """What is owed now; with ``max_age``, items owed for longer are forgotten first."""
        with self._lock:
            if max_age is not None:
                oldest = clock.monotonic() - max_age
                for item in [item for item, since in self._items.items() if since < oldest]:
                    del self._items[item]
            return set(self._items)

    def done(self, items: Iterable[K]) -> None:
        with self._lock:
            for item in items:
                self._items.pop(item, None)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[K]:
        """The items owed, oldest first (a copy: safe while others add)."""
        with self._lock:
            return iter(list(self._items))


class DeferredCounts(_ForkLocal, Generic[K]):
    """Like Deferred, for amounts owed per key (e.g. reservations to take back); ``done`` subtracts, ``take``
    claims them all."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[K, int] = {}

    def _forget(self) -> None:
        self._counts.clear()

    def add(self, key: K, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def snapshot(self) -> dict[K, int]:
        with self._lock:
            return dict(self._counts)

    def take(self) -> dict[K, int]:
        """Everything owed, removed at once: for writes that must not be applied twice (an ``$inc``), so two
        threads replaying together never both send them. ``add`` back what could not be written."""
        with self._lock:
            taken, self._counts = self._counts, {}
            return taken

    def done(self, counts: Mapping[K, int]) -> None:
        with self._lock:
            for key, n in counts.items():
                left = self._counts.get(key, 0) - n
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def __len__(self) -> int:
        return len(self._counts)


# --- outage notices ---------------------------------------------------------------------------------


class OutageNotice(_ForkLocal):
    """A notice this process owes Redis after it wrote to MongoDB because Redis was unreachable.

    ``owe(value)`` records the outage (a new generation); the feature sends ``owed()``'s value with its
    next call that reaches Redis and then calls ``sent(generation)``, which clears the debt only if no
    newer outage happened meanwhile. ``value`` is the feature's: a fence token, a "live until" time.
    Optionally a gate-watcher (``gate_opens``: a callable giving how often the Redis gate has opened)
    makes any gate opening seen by this process owe a notice too.
    """

    def __init__(self, gate_opens: Callable[[], int] | None = None) -> None:
        super().__init__()
        self._gate_opens = gate_opens
        self._forget()

    def _forget(self) -> None:
        self.generation = 0
        self.value: object = None
        self.is_owed = False
        self._seen_opens = self._gate_opens() if self._gate_opens is not None else 0

    def owe(self, value: object = None) -> int:
        with self._lock:
            self.generation += 1
            self.is_owed = True
            self.value = value
            return self.generation

    def owed(self) -> tuple[int, bool, object]:
        """(generation, whether a notice is owed, its value); notices a gate that opened since the last call."""
        if self._gate_opens is not None:
            opens = self._gate_opens()
            if opens != self._seen_opens:
                with self._lock:
                    if opens != self._seen_opens:
                        self._seen_opens = opens
                        self.generation += 1
                        self.is_owed = True
        return self.generation, self.is_owed, self.value

    def sent(self, generation: int) -> bool:
        """The notice of ``generation`` reached Redis; True if that settled the debt."""
        with self._lock:
            if generation == self.generation and self.is_owed:
                self.is_owed = False
                self.value = None
                return True
            return False


class Watermark(_ForkLocal):
    """A value that only rises, known to this process alone until a notice carries it to Redis.

    MFA keeps "MongoDB may hold live codes until T" here: the notice publishes T, but the process keeps
    knowing it without Redis. ``raise_to(v)`` keeps the larger value; ``value`` is 0 until raised, and
    0 again in a new process (a forked child; tests: ``hotcache.testing.new_process()``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def _forget(self) -> None:
        self.value = 0

    def raise_to(self, value: int) -> int:
        """Keep ``value`` if it is larger than the current one; return the value now held."""
        with self._lock:
            if value > self.value:
                self.value = value
            return self.value


class Recent(_ForkLocal, Generic[K, V]):
    """What this process saw last per key, at most ``max_items`` (the least recently stored is dropped first).

    For hints only (the workbench's last seen envelope per session): a missing entry costs the feature a
    round trip, never a wrong answer. Forgotten in a forked child and by ``hotcache.testing.new_process()``.
    """

    def __init__(self, max_items: int) -> None:
        super().__init__()
        self.max_items = max_items
        self._items: OrderedDict[K, V] = OrderedDict()

    def _forget(self) -> None:
        self._items.clear()

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._items.get(key)

    def pop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


# --- other process-local state ----------------------------------------------------------------------


class ProcessLocal(_ForkLocal):
    """Base for other state a feature keeps for this process alone (an outage buffer of writes owed to MongoDB).

    Like the registries above, a forked child starts without it (its parent writes it out) and
    forget_all() clears it. Subclasses guard their state with ``self._lock`` and implement ``_forget()``;
    one that holds more locks recreates them too in ``_renew_locks()`` (called in the child first).
    """


# --- bulk writes that meet a duplicate key ----------------------------------------------------------


@dataclass(slots=True)
class RetriedBulk:
    """What a bulk write and its one retry of duplicate-key rows did."""

    first: mongo.BulkResult
    second: mongo.BulkResult | None = None
    still_duplicate: set[int] = field(default_factory=set)  # indexes into the original ops

    @property
    def round_trips(self) -> int:
        return 1 if self.second is None else 2

    @property
    def applied(self) -> int:
        total = self.first.modified + self.first.upserted + self.first.inserted
        if self.second is not None:
            total += self.second.modified + self.second.upserted + self.second.inserted
        return total


def bulk_retrying_duplicates(
    coll: mongo.Collection,
    ops: Sequence[mongo.Update | mongo.Insert],
    retry: Callable[[mongo.Update | mongo.Insert], mongo.Update | mongo.Insert],
) -> RetriedBulk:
    """One unordered bulk; rows that hit E11000 are retried once in a second bulk, as ``retry`` rewrites them.

    E11000 proves the document exists: ``retry`` turns an upsert into a plain or guarded update. A row
    whose retry hits E11000 again is in ``still_duplicate`` (the feature decides what that means: usually
    "already written"). Raises BackendUnavailable / MongoWriteError like Collection.bulk.
    """
    if not ops:
        return RetriedBulk(mongo.BulkResult())
    first = coll.bulk(list(ops), ordered=False)
    if not first.duplicates:
        return RetriedBulk(first)
    again = [retry(ops[i]) for i in first.duplicates]
    second = coll.bulk(again, ordered=False)
    return RetriedBulk(first, second, {first.duplicates[i] for i in second.duplicates})
