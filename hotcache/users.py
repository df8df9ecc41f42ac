"""Cached user loading: ``request.user`` from one Redis command, with every check Django's get_user() makes.

A cached entry is a record sealed with hotcache.signing (purpose ``users.entry``, bound to the user
id): JSON of the user's concrete fields minus ``password`` (and minus ``last_login`` for the ORM
loader), the derived session auth hash (never the password hash), the model label, the format and an
expiry. A shared or compromised Redis can neither run code in the web process (JSON, no pickles) nor
hand it a forged, swapped or long-replayed user: an entry that fails verification or decoding, is of
another format or model, misses a field, is past its expiry or cannot be rebuilt is a miss, counted
as ``users:tampered`` and refilled from the source of truth.

Each user also has a version counter. Invalidation INCRs it and deletes the entry in one script; a load
that missed writes back only if the counter is still what it read before loading (user_fill.lua), so a
stale write-back racing an invalidation is dropped. The counter is not signed (a Lua INCR cannot sign):
it only decides *whether* a freshly loaded, signed user is written back, never what a process trusts;
README "Cached users" says what tampering with it can and cannot do.

Hit path: one MGET (entry + version), zero database queries, then Django's checks in-process: the
session's backend must be in AUTHENTICATION_BACKENDS, the backend's user_can_authenticate() (ModelBackend
rejects inactive users), and the session's HASH_SESSION_KEY compared in constant time. Any mismatch is
settled by the source of truth, exactly as django.contrib.auth.get_user() does (SECRET_KEY_FALLBACKS,
session cycling, flush -> AnonymousUser).

Redis down: the user is loaded from the database as Django would, through the health gate: one attempt
per request at most, never a 500; invalidations that could not reach Redis are retried by this process on
its next successful call.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import models, router
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject
from django.utils.module_loading import import_string

from hotcache import clock, keys, metering, signing
from hotcache.backends import mongo
from hotcache.backends import redis as redis_backend
from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName, RedisUnavailable

__all__ = [
    "CachedAuthenticationMiddleware",
    "DjangoUserLoader",
    "MongoUserBackend",
    "MongoUserLoader",
    "UserLoader",
    "get_cached_user",
    "get_loader",
    "invalidate_user",
    "invalidate_users",
]

log = logging.getLogger("hotcache.users")

FEATURE = "users"
# Bump when the entry layout changes; entries of another format are then distrusted and refilled.
# 2: sealed with hotcache.signing and carrying an expiry (1: users.py's own HMAC, no expiry).
_FORMAT = 2
_ENTRY = "users.entry"  # hotcache.signing purpose of an entry; its identity is the user id's key part
_VERSION_TTL = 86400  # the version counter outlives any entry (USER_CACHE_TTL) and any in-flight load
_SKEW_MS = 60_000  # an entry is trusted this long past its expiry: app clocks may disagree by that much
_MAX_ID_LENGTH = 255  # characters of a user id given as text
_FILL = redis_backend.Script("user_fill")
_INVALIDATE = redis_backend.Script("user_invalidate")
_MISS = object()
_SURROGATE = re.compile("[\ud800-\udfff]")

# Invalidations this process could not send (Redis unavailable), replayed before its next read:
# user id key -> when it was first queued (clock.monotonic). Bounded, so an outage cannot grow it
# without limit: one older than USER_CACHE_TTL is moot (every entry it could remove has expired), and
# beyond _PENDING_MAX the oldest are dropped (a stale entry then lives USER_CACHE_TTL at most).
_pending_lock = threading.Lock()
_pending: dict[str, float] = {}
_PENDING_MAX = 10_000
_REPLAY_BATCH = 500  # invalidations per pipeline when replaying (one round trip each)


# --- loaders -------------------------------------------------------------------------------------


class UserLoader:
    """Where users live. Subclasses load one user by primary key and say which auth backends they serve."""

    #: fields never put in Redis. The password hash is always one of them.
    uncached_fields: tuple[str, ...] = ("password",)

    @property
    def model(self) -> type[models.Model]:
        return auth.get_user_model()

    def load(self, user_id: Any) -> Any | None:
        """The user with this primary key from the source of truth, or None."""
        raise NotImplementedError

    def handles(self, backend: Any) -> bool:
        """Whether ``backend.get_user(pk)`` is "load(pk), then user_can_authenticate()" for this loader."""
        raise NotImplementedError

    def cached_fields(self) -> list[models.Field]:
        return [f for f in self.model._meta.concrete_fields if f.attname not in self.uncached_fields]

    def dump(self, user: Any) -> dict[str, Any]:
        return {f.attname: getattr(user, f.attname) for f in self.cached_fields()}

    def rebuild(self, fields: dict[str, Any]) -> Any:
        """A model instance from cached fields, without a query; uncached fields are left out (see subclasses)."""
        raise NotImplementedError

    def _values(self, fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        names, values = [], []
        for f in self.model._meta.concrete_fields:
            if f.attname in fields:
                names.append(f.attname)
                values.append(f.to_python(fields[f.attname]))
        return names, values


class DjangoUserLoader(UserLoader):
    """The user model through the ORM (the default). Serves ModelBackend and subclasses that keep its get_user().

    Rebuilt users have ``password`` and ``last_login`` *deferred*, as with ``.only()``: reading them costs
    one query (check_password in a password-change form works), and save() writes only the loaded fields,
    so saving a cached user can never blank the password hash. ``last_login`` is not cached so the
    save() in every login does not touch the cache at all.
    """

    uncached_fields = ("password", "last_login")

    def load(self, user_id: Any) -> Any | None:
        model = self.model
        try:
            return model._default_manager.get(pk=user_id)
        except model.DoesNotExist:
            return None

    def handles(self, backend: Any) -> bool:
        return isinstance(backend, ModelBackend) and type(backend).get_user is ModelBackend.get_user

    def rebuild(self, fields: dict[str, Any]) -> Any:
        model = self.model
        names, values = self._values(fields)
        return model.from_db(router.db_for_read(model), names, values)


class MongoUserLoader(UserLoader):
    """Users kept in a MongoDB ``users`` collection (the seed's getUserCached), through hotcache.backends.mongo.

    A document is ``{"_id": <pk>, <field attname>: value, ...}`` for the user model's concrete fields. Users
    from here are documents, not ORM rows: their save() and delete() write the document and invalidate
    (a rebuilt user's missing password is never written). Writes made elsewhere must call
    invalidate_user(pk), or are seen after USER_CACHE_TTL. Pair it with MongoUserBackend in AUTHENTICATION_BACKENDS.
    """

    collection_name = "users"

    def _collection(self) -> mongo.Collection:
        return mongo.collection(self.collection_name, feature=FEATURE)

    def load(self, user_id: Any) -> Any | None:
        doc = self._collection().find_one({"_id": user_id})
        if doc is None:
            return None
        return self.from_document(doc)

    def handles(self, backend: Any) -> bool:
        return isinstance(backend, MongoUserBackend) and type(backend).get_user is MongoUserBackend.get_user

    def from_document(self, doc: dict[str, Any]) -> Any:
        model = self.model
        pk = model._meta.pk
        fields = {f.attname: doc.get(f.attname, f.get_default()) for f in model._meta.concrete_fields}
        fields[pk.attname] = doc["_id"]
        names, values = self._values(fields)
        return self._bind(model.from_db(None, names, values))

    def rebuild(self, fields: dict[str, Any]) -> Any:
        model = self.model
        names, values = self._values(fields)
        names.append("password")
        values.append(None)  # unusable: check_password() is False, and save() is refused below
        ordered = dict(zip(names, values, strict=True))
        attnames = [f.attname for f in model._meta.concrete_fields if f.attname in ordered]
        return self._bind(model.from_db(None, attnames, [ordered[a] for a in attnames]))

    def _bind(self, user: Any) -> Any:
        # These users are documents, not ORM rows: save() and delete() go to MongoDB (and invalidate).
        user.save = partial(self.save, user)
        user.delete = partial(self.delete, user)
        return user

    def save(self, user: Any, *, update_fields: Iterable[str] | None = None, **kwargs: Any) -> None:
        """Write the user's fields to its document. A rebuilt user's missing password is never written."""
        fields = [f.attname for f in self.model._meta.concrete_fields if f.attname != self.model._meta.pk.attname]
        if update_fields is not None:
            fields = [f for f in fields if f in set(update_fields)]
        if user.password is None:
            fields = [f for f in fields if f != "password"]
        if fields:
            self._collection().update_one({"_id": user.pk}, {"$set": {f: getattr(user, f) for f in fields}})
        invalidate_user(user.pk)

    def delete(self, user: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        deleted = self._collection().delete_one({"_id": user.pk})
        invalidate_user(user.pk)
        return deleted, {self.model._meta.label: deleted}

    def insert(self, user: Any) -> None:
        """Store a user instance as a document (tests, demos, migrations). Call invalidate_user() after updates."""
        doc = {f.attname: getattr(user, f.attname) for f in self.model._meta.concrete_fields}
        doc["_id"] = doc.pop(self.model._meta.pk.attname)
        self._collection().update_one({"_id": doc["_id"]}, {"$set": doc}, upsert=True)


class MongoUserBackend(ModelBackend):
    """An auth backend over MongoUserLoader: authenticate() checks the document's password hash; get_user() loads it."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any | None:
        from django.contrib.auth.hashers import check_password

        model = auth.get_user_model()
        if username is None:
            username = kwargs.get(model.USERNAME_FIELD)
        if username is None or password is None:
            return None
        loader = MongoUserLoader()
        doc = loader._collection().find_one({model.USERNAME_FIELD: username})
        if doc is None:
            check_password(password, None)  # same work as a wrong password (timing)
            return None
        user = loader.from_document(doc)
        # hashers.check_password, not user.check_password: the latter would upgrade the hash through the ORM.
        if check_password(password, user.password) and self.user_can_authenticate(user):
            return user
        return None

    def get_user(self, user_id: Any) -> Any | None:
        loader = get_loader()
        if not isinstance(loader, MongoUserLoader):
            loader = MongoUserLoader()
        user = loader.load(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None


_loaders: dict[str, UserLoader] = {}


def get_loader() -> UserLoader:
    """The loader named by HOTCACHE['USER_LOADER'] (one instance per dotted path)."""
    path = str(hotcache_settings.USER_LOADER)
    loader = _loaders.get(path)
    if loader is None:
        cls = import_string(path)
        if not (isinstance(cls, type) and issubclass(cls, UserLoader)):
            msg = f"HOTCACHE['USER_LOADER']={path!r} is not a hotcache.users.UserLoader subclass"
            raise ImproperlyConfigured(msg)
        loader = _loaders.setdefault(path, cls())
    return loader


# --- the cache -----------------------------------------------------------------------------------


class _Cached:
    __slots__ = ("auth_hash", "user")

    def __init__(self, user: Any, auth_hash: str | None) -> None:
        self.user = user
        self.auth_hash = auth_hash


@dataclass(frozen=True, slots=True)
class _UserId:
    value: Any  # the primary key as the user model's pk field gives it (what the loader is asked for)
    key: str  # its text in Redis keys and signatures: one per user, however the id was spelled


def _user_id(user_id: object, loader: UserLoader) -> _UserId:
    """The one boundary for user ids (callers' and sessions'): a primary key of the user model, or InvalidName.

    An int, a str (printable, at most _MAX_ID_LENGTH characters) or (for a UUID pk) a UUID that the pk
    field accepts, canonicalised, so ``"7"`` and ``7`` share one entry and a bool, a float or ``b"7"``
    is refused rather than cached under a key no invalidation of user 7 would reach.
    """
    if isinstance(user_id, bool) or not isinstance(user_id, int | str | uuid.UUID):
        msg = f"user_id must be an int, a str or a UUID, not {type(user_id).__name__}"
        raise InvalidName(msg)
    if isinstance(user_id, str):
        keys.text(user_id, what="user_id", max_length=_MAX_ID_LENGTH)
    pk = loader.model._meta.pk
    try:
        value = pk.to_python(user_id)
        pk.run_validators(value)
        text = str(value)
    except (ValidationError, TypeError, ValueError, OverflowError) as exc:
        msg = f"user_id is not a valid primary key of {loader.model._meta.label} (a {type(user_id).__name__})"
        raise InvalidName(msg) from exc
    if value is None or len(text) > _MAX_ID_LENGTH or (isinstance(user_id, uuid.UUID) and value != user_id):
        msg = f"user_id is not a valid primary key of {loader.model._meta.label}"
        raise InvalidName(msg)
    return _UserId(value, keys.part(text))


def _entry_key(user_id: str) -> str:
    return keys.tagged(FEATURE, user_id, "u")


def _version_key(user_id: str) -> str:
    return keys.tagged(FEATURE, user_id, "v")


def _encode(user_id: str, user: Any, loader: UserLoader, ttl: int) -> str:
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else None
    body = json.dumps(
        {
            "f": _FORMAT,
            "m": user._meta.label_lower,
            "h": auth_hash,
            "x": _now_ms() + ttl * 1000,  # expiry: a replayed old entry is refused after it (app clock)
            "d": loader.dump(user),
        },
        default=_json_default,
        separators=(",", ":"),
    )
    return signing.seal(_ENTRY, user_id, body)


def _now_ms() -> int:
    return int(clock.time() * 1000)


def _json_default(value: Any) -> Any:
    # Full precision (DjangoJSONEncoder would cut datetimes to milliseconds, and a save() would write that back).
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    msg = f"{type(value).__name__} is not a JSON-cacheable user field"
    raise TypeError(msg)


def _decode(user_id: str, raw: bytes, loader: UserLoader) -> _Cached | None:
    """The cached user, or None when the entry is not ours to trust (then counted as tampered)."""
    data, why = _unseal_entry(user_id, raw, loader)
    if data is not None:
        try:
            return _Cached(loader.rebuild(data["d"]), data["h"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:  # a field changed type since it was cached
            why = f"could not be rebuilt ({type(exc).__name__})"
    signing.tampered(FEATURE, _entry_key(user_id), why)
    return None


def _unseal_entry(user_id: str, raw: bytes, loader: UserLoader) -> tuple[dict[str, Any] | None, str]:
    """(fields, "") for an entry this process may trust, else (None, why not)."""
    body = signing.unseal(_ENTRY, user_id, raw)
    if body is None:
        return None, "failed verification"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, "is not JSON"
    if not isinstance(data, dict) or data.get("f") != _FORMAT:
        return None, f"is not a format-{_FORMAT} entry"
    if data.get("m") != loader.model._meta.label_lower:
        return None, f"is for another user model than {loader.model._meta.label_lower}"
    if not isinstance(data.get("d"), dict) or not isinstance(data.get("h", 0), str | None):
        return None, "misses a field"
    expiry = data.get("x")
    if isinstance(expiry, bool) or not isinstance(expiry, int):
        return None, "misses a field"
    if _now_ms() > expiry + _SKEW_MS:
        return None, "is past its expiry (replayed?)"
    return data, ""


def _invalidate(r: Any, ids: list[str]) -> list[str]:
    """Invalidate each user; returns the users whose version counter was not one (reset by the script).

    One script per user, so each touches one hash slot (Redis Cluster); several users go in pipelines of
    _REPLAY_BATCH, after the first one's script made sure the server knows the script (EVAL on NOSCRIPT).
    """
    if not ids:
        return []
    resets = [int(_INVALIDATE(r, [_entry_key(ids[0]), _version_key(ids[0])], [_VERSION_TTL]))]
    for start in range(1, len(ids), _REPLAY_BATCH):
        pipe = r.pipeline(transaction=False)
        for uid in ids[start : start + _REPLAY_BATCH]:
            pipe.evalsha(_INVALIDATE.sha, 2, _entry_key(uid), _version_key(uid), _VERSION_TTL)
        resets += [int(n) for n in pipe.execute()]
    return [uid for uid, reset in zip(ids, resets, strict=True) if reset]


def _queue(ids: list[str]) -> None:
    """Keep invalidations that could not reach Redis for replay (bounded: see _pending)."""
    now = clock.monotonic()
    with _pending_lock:
        for uid in ids:
            _pending.setdefault(uid, now)
        dropped = len(_pending) - _PENDING_MAX
        for uid in list(_pending)[: max(0, dropped)]:  # insertion order: the oldest first
            del _pending[uid]
    if dropped > 0:
        metering.event(FEATURE, "pending_dropped", dropped)
        log.warning("hotcache: %d invalidations kept for replay were dropped (over %d)", dropped, _PENDING_MAX)


def _to_replay() -> dict[str, float]:
    """The invalidations to replay now; those older than USER_CACHE_TTL are moot and forgotten."""
    oldest = clock.monotonic() - float(hotcache_settings.USER_CACHE_TTL) - _SKEW_MS / 1000
    with _pending_lock:
        for uid in [uid for uid, since in _pending.items() if since < oldest]:
            del _pending[uid]
        return dict(_pending)


def _replayed(taken: dict[str, float]) -> None:
    with _pending_lock:
        for uid, since in taken.items():
            if _pending.get(uid) == since:  # not queued again meanwhile
                del _pending[uid]


def _counters_reset(ids: Iterable[str]) -> None:
    for uid in ids:
        signing.tampered(FEATURE, _version_key(uid), "was not a version counter; reset")


def _read(user_id: str) -> tuple[bytes | None, bytes | None]:
    """(entry, version) in one command; first replays invalidations that missed an outage, if any."""
    pending = _to_replay() if _pending else {}
    reset: list[str] = []

    def op(r: Any) -> Any:
        if pending:
            reset.extend(_invalidate(r, list(pending)))
        return r.mget([_entry_key(user_id), _version_key(user_id)])

    entry, version = redis_backend.call(FEATURE, op)
    if pending:
        _replayed(pending)
        _counters_reset(reset)
    return entry, version


def _fill(user_id: str, version: bytes | None, user: Any, loader: UserLoader) -> bool:
    # The version goes back byte for byte: whatever Redis held is compared, never decoded.
    seen = version if version is not None else b""
    ttl = int(hotcache_settings.USER_CACHE_TTL)
    payload = _encode(user_id, user, loader, ttl)
    try:
        stored, replaced = redis_backend.call(
            FEATURE,
            lambda r: _FILL(r, [_entry_key(user_id), _version_key(user_id)], [seen, payload, ttl, _VERSION_TTL]),
        )
    except RedisUnavailable:
        return False
    if replaced:  # the script found a key of the wrong type (only a write from outside hotcache makes one)
        which, _, kind = _text(replaced).partition(":")
        key = _entry_key(user_id) if which == "entry" else _version_key(user_id)
        signing.tampered(FEATURE, key, f"was a Redis {kind}, not a string; replaced")
    return bool(stored)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _lookup(user_id: _UserId, loader: UserLoader) -> tuple[_Cached | None, Any]:
    """(cached, fill) where fill(user) writes a freshly loaded user back, or is None when Redis is unavailable."""
    uid = user_id.key
    try:
        raw, version = _read(uid)
    except RedisUnavailable:
        metering.event(FEATURE, "fallback")
        return None, None
    cached = _decode(uid, raw, loader) if raw is not None else None
    if cached is not None:
        metering.event(FEATURE, "hit")
        return cached, None
    metering.event(FEATURE, "miss")
    return None, partial(_fill, uid, version, loader=loader)


def get_cached_user(user_id: Any) -> Any | None:
    """The user with this primary key: from Redis when cached, else from the loader (and cached). None if not found.

    No session or is_active checks here (there is no session); the middleware makes those. Raises
    InvalidName (a ValueError) for an id that cannot be a primary key of the user model.
    """
    loader = get_loader()
    uid = _user_id(user_id, loader)
    cached, fill = _lookup(uid, loader)
    if cached is not None:
        return cached.user
    user = loader.load(uid.value)
    if user is not None and fill is not None:
        fill(user)
    return user


def invalidate_users(user_ids: Iterable[Any]) -> int:
    """Bump the version and drop the entry of each user. Returns how many reached Redis now (the rest are retried).

    Raises InvalidName, before touching Redis, if any id cannot be a primary key of the user model.
    """
    loader = get_loader()
    ids = sorted({_user_id(u, loader).key for u in user_ids})
    if not ids:
        return 0
    try:
        reset = redis_backend.call(FEATURE, lambda r: _invalidate(r, ids))
    except RedisUnavailable:
        log.warning(
            "hotcache: could not invalidate %d cached user(s) (%s) now; retrying on the next Redis call",
            len(ids),
            ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else ""),
        )
        _queue(ids)
        return 0
    _counters_reset(reset)
    metering.event(FEATURE, "invalidated", len(ids))
    return len(ids)


def invalidate_user(user_id: Any) -> bool:
    """Remove a user's cached entry and bump its version so no in-flight load can write the old data back."""
    return invalidate_users([user_id]) == 1


# --- the request path ----------------------------------------------------------------------------


def _verify(request: HttpRequest, user: Any, auth_hash: str | None, *, authoritative: bool) -> Any | None:
    """Django's session check. ``authoritative``: ``user`` came from the source of truth (fallbacks apply)."""
    if auth_hash is None and not hasattr(user, "get_session_auth_hash"):
        return user
    session_hash = request.session.get(auth.HASH_SESSION_KEY)
    if auth_hash and _same(session_hash, auth_hash):
        return user
    if not authoritative:
        return _MISS  # let the source of truth decide (password changed elsewhere, SECRET_KEY_FALLBACKS)
    if any(_same(session_hash, fallback) for fallback in user.get_session_auth_fallback_hash()):
        request.session.cycle_key()
        request.session[auth.HASH_SESSION_KEY] = auth_hash
        return user
    request.session.flush()
    return None


def _same(given: object, expected: str) -> bool:
    """A session hash against ours, in constant time; any value a session can hold is just False when unequal."""
    if not isinstance(given, str) or not given:
        return False
    # Bytes, not str: hmac.compare_digest refuses non-ASCII text (a TypeError, i.e. a 500, before this).
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def get_user(request: HttpRequest) -> Any:
    """django.contrib.auth.get_user() with the user taken from Redis when it is cached.

    A session whose user id is not a primary key of the user model (a list, a huge or unprintable
    string) is anonymous, where Django's own get_user() would raise.
    """
    try:
        session_id = request.session[auth.SESSION_KEY]
        backend_path = request.session[auth.BACKEND_SESSION_KEY]
    except KeyError:
        return AnonymousUser()
    if not isinstance(backend_path, str) or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    loader = get_loader()
    try:
        user_id = _user_id(session_id, loader)
    except InvalidName:
        return AnonymousUser()
    backend = auth.load_backend(backend_path)
    if not loader.handles(backend):
        # A backend with its own get_user(): Django's path, uncached. Django encodes the session hash to
        # compare it and raises on a lone surrogate; such a hash can match nothing: log out, as Django would.
        session_hash = request.session.get(auth.HASH_SESSION_KEY)
        if isinstance(session_hash, str) and _SURROGATE.search(session_hash):
            request.session.flush()
            return AnonymousUser()
        return auth.get_user(request)
    can_authenticate = getattr(backend, "user_can_authenticate", lambda u: True)

    cached, fill = _lookup(user_id, loader)
    if cached is not None:
        if not can_authenticate(cached.user):
            return AnonymousUser()
        verified = _verify(request, cached.user, cached.auth_hash, authoritative=False)
        if verified is not _MISS:
            return verified or AnonymousUser()
        fill = None  # the cached entry is current; the mismatch is the session's
    user = loader.load(user_id.value)
    if user is None:
        return AnonymousUser()
    if fill is not None:
        fill(user)
    if not can_authenticate(user):
        return AnonymousUser()
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else None
    return _verify(request, user, auth_hash, authoritative=True) or AnonymousUser()


def _request_user(request: HttpRequest) -> Any:
    if not hasattr(request, "_cached_user"):
        request._cached_user = get_user(request)
    return request._cached_user


async def _arequest_user(request: HttpRequest) -> Any:
    if hasattr(request, "_cached_user"):
        return request._cached_user
    if not hasattr(request, "_acached_user"):
        # Redis and the session store are used synchronously; one hop to the sync thread per request.
        request._acached_user = await sync_to_async(get_user)(request)
    return request._acached_user


class CachedAuthenticationMiddleware(AuthenticationMiddleware):
    """Drop-in for django.contrib.auth.middleware.AuthenticationMiddleware; sync and async capable.

    A subclass of Django's, so checks that require it (admin.E408) accept this one in its place.
    """

    def process_request(self, request: HttpRequest) -> None:
        if not hasattr(request, "session"):
            msg = (
                "hotcache's CachedAuthenticationMiddleware requires session middleware to be installed. "
                "Put 'django.contrib.sessions.middleware.SessionMiddleware' before it in MIDDLEWARE."
            )
            raise ImproperlyConfigured(msg)
        request.user = SimpleLazyObject(lambda: _request_user(request))
        request.auser = partial(_arequest_user, request)


# --- signal receivers (wired in hotcache.signals) ------------------------------------------------


def _on_user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    uncached = set(get_loader().uncached_fields) - {"password"}
    if update_fields is not None and update_fields and set(update_fields) <= uncached:
        return  # e.g. the login's save(update_fields=["last_login"]): nothing cached changed
    _invalidate_now_and_on_commit([instance.pk], using=kwargs.get("using"))


def _on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    _invalidate_now_and_on_commit([instance.pk], using=kwargs.get("using"))


def _on_m2m_changed(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any) -> None:
    if action not in ("post_add", "post_remove", "pre_clear", "post_clear"):
        return
    if not reverse:  # user.groups.add(...): the instance is the user
        if action != "pre_clear":
            _invalidate_now_and_on_commit([instance.pk], using=kwargs.get("using"))
        return
    if action == "pre_clear":  # group.user_set.clear(): remember whom it affects before the rows go
        instance._hotcache_cleared_users = list(
            getattr(instance, _reverse_accessor(sender, kwargs["model"])).values_list("pk", flat=True)
        )
        return
    ids = list(pk_set or ()) if action != "post_clear" else getattr(instance, "_hotcache_cleared_users", [])
    _invalidate_now_and_on_commit(ids, using=kwargs.get("using"))


def _reverse_accessor(through: Any, user_model: Any) -> str:
    user = auth.get_user_model()
    for name in ("groups", "user_permissions"):
        field = user._meta.get_field(name)
        if field.remote_field.through is through:
            return field.remote_field.get_accessor_name()
    msg = f"{through} is not a user m2m table"
    raise LookupError(msg)


def _invalidate_now_and_on_commit(ids: list[Any], *, using: str | None) -> None:
    from django.db import connections, transaction

    loader = get_loader()
    ids = [pk for pk in ids if _is_user_id(pk, loader)]  # an id the boundary refuses is never cached
    if not ids:
        return
    invalidate_users(ids)
    # Inside a transaction another request can still read the old row and fill the cache with it (with the
    # bumped version); invalidating again once the change is visible removes that fill.
    alias = using or router.db_for_write(auth.get_user_model())
    if connections[alias].in_atomic_block:
        transaction.on_commit(lambda: invalidate_users(ids), using=alias)


def _is_user_id(value: Any, loader: UserLoader) -> bool:
    try:
        _user_id(value, loader)
    except InvalidName:
        return False
    return True


def connect() -> None:
    """Connect the receivers for the current user model (idempotent)."""
    from django.db.models.signals import m2m_changed, post_delete, post_save

    user = auth.get_user_model()
    post_save.connect(_on_user_saved, sender=user, dispatch_uid="hotcache.users.saved")
    post_delete.connect(_on_user_deleted, sender=user, dispatch_uid="hotcache.users.deleted")
    for name in ("groups", "user_permissions"):
        try:
            through = user._meta.get_field(name).remote_field.through
        except FieldDoesNotExist:  # a custom user model without PermissionsMixin
            continue
        m2m_changed.connect(_on_m2m_changed, sender=through, dispatch_uid=f"hotcache.users.m2m.{name}")
