"""SessionStore: Django's database sessions with their reads served from Redis (SESSION_ENGINE "hotcache.sessions").

A subclass of ``django.contrib.sessions.backends.db.SessionStore``: the database row stays the source of
truth and is written first, as Django's ``cached_db`` engine does, so a Redis outage loses no session and
logs nobody out (reads fall back to the database while the health gate is open). Unlike ``cached_db`` the
Redis copy is versioned (hotcache.sessions.cache), so concurrent saves, a delete racing a read, or a reply
lost on the way back never leave Redis serving a session the database no longer holds. See docs/sessions.md.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, router, transaction
from django.utils import timezone

from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName
from hotcache.sessions import aio, cache, combined
from hotcache.sessions.entries import FEATURE, valid_key

__all__ = ["SessionStore"]


class SessionStore(DBStore):
    """Django's ``db`` session store, read through hotcache's Redis path and written through to both."""

    # The cached user's raw values read in the session's round trip (None: not read with it); hotcache.users'
    # get_user() takes them instead of reading again when they are for the session's user.
    hotcache_user: cache.UserRead | None = None
    # Set by CachedAuthenticationMiddleware on the request's session: read the user with the session.
    hotcache_user_wanted = False

    # --- reads ---

    def load(self) -> dict[str, Any]:
        session_key = self.session_key
        if not valid_key(session_key):
            self._session_key = None  # never a Redis key name, and no row of Django's can have it
            return {}
        lookup = self._lookup(session_key) if self._redis_enabled() else None
        if lookup is not None and lookup.entry is not None:
            return self.decode(lookup.entry.data)
        row = self._get_session_from_db()  # type: ignore[attr-defined]  # Django's, not in django-stubs
        if row is None:
            return {}
        data = self.decode(row.session_data)
        if lookup is not None:
            ttl = self.get_expiry_age(expiry=row.expire_date)
            cache.fill(session_key, lookup.version, row.session_data, _ms(row.expire_date), _user_part(data), ttl)
        return data

    def _lookup(self, session_key: str) -> cache.Lookup | None:
        """The Redis read: a combined read already made for this request (``prefetch``), else the session alone,
        or the session and its cached user in one round trip when hotcache.users' middleware will want the user."""
        prefetched = self._take_prefetched(session_key)
        if prefetched is not None:
            return self._kept(prefetched)
        if self._with_user():
            return self._kept(combined.read_with_user(session_key))
        return cache.read(session_key)

    def _take_prefetched(self, session_key: str) -> tuple[cache.Lookup, cache.UserRead | None] | None:
        """The combined read handed over by prefetched() for this session, taken (used once); None: none."""
        prefetched = self.__dict__.pop("_hotcache_prefetched", None)
        return prefetched[1] if prefetched is not None and prefetched[0] == session_key else None

    def _with_user(self) -> bool:
        """Read the cached user with the session: hotcache.users' middleware wants it, and no invalidation is owed
        (the plain read replays those first)."""
        return combined.wanted(self) and not cache.pending_invalidations

    def _kept(self, found: tuple[cache.Lookup, cache.UserRead | None] | None) -> cache.Lookup | None:
        """A combined read's session lookup; its user's part is kept for get_user(). None: Redis unavailable."""
        if found is None:
            return None
        lookup, self.hotcache_user = found
        return lookup

    def prefetched(self, session_key: str, found: tuple[cache.Lookup, cache.UserRead | None]) -> None:
        """Hand this store a combined read made in another feature's round trip (hotcache.combined)."""
        self._hotcache_prefetched = (session_key, found)

    async def aload(self) -> dict[str, Any]:
        """load() for async code: the Redis read awaited on the event loop (no thread hop on a hit); the database
        only on a miss, through Django's async ORM."""
        session_key = self.session_key
        if not valid_key(session_key):
            self._session_key = None
            return {}
        lookup = await self._alookup(session_key) if self._redis_enabled() else None
        if lookup is not None and lookup.entry is not None:
            return self.decode(lookup.entry.data)
        row = await self._aget_session_from_db()  # type: ignore[attr-defined]  # Django's, not in django-stubs
        if row is None:
            return {}
        data = self.decode(row.session_data)
        if lookup is not None:
            ttl = self.get_expiry_age(expiry=row.expire_date)
            await aio.afill(session_key, lookup.version, row.session_data, _ms(row.expire_date), _user_part(data), ttl)
        return data

    async def _alookup(self, session_key: str) -> cache.Lookup | None:
        """_lookup() awaited: the prefetched combined read, else the session with its user, else the session."""
        prefetched = self._take_prefetched(session_key)
        if prefetched is not None:
            return self._kept(prefetched)
        if self._with_user():
            return self._kept(await aio.aread_with_user(session_key))
        return await aio.aread(session_key)

    # --- writes: the database first (it is the session), then Redis ---

    def save(self, must_create: bool = False) -> None:
        """Django's ``db`` save, with the Redis version reserved inside its transaction and published after commit.

        The reservation runs after the INSERT/UPDATE holds the row, so concurrent saves of one session get
        versions in the order the database applies them, and only the newest is published to Redis.
        """
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)  # type: ignore[attr-defined]  # Django's, not in django-stubs
        obj = self.create_model_instance(data)
        using = router.db_for_write(self.model, instance=obj)
        session_key = obj.session_key
        redis = self._redis_enabled() and valid_key(session_key)
        ttl = self.get_expiry_age(expiry=obj.expire_date)
        try:
            with transaction.atomic(using=using):
                obj.save(force_insert=must_create, force_update=not must_create, using=using)
                version = cache.reserve(session_key, ttl) if redis else None
                if version is not None:
                    expiry_ms, user = _ms(obj.expire_date), _user_part(data)
                    transaction.on_commit(
                        lambda: cache.publish(session_key, version, obj.session_data, expiry_ms, user, ttl),
                        using=using,
                    )
        except IntegrityError as exc:
            if must_create:
                raise CreateError from exc
            raise
        except DatabaseError as exc:
            if not must_create:
                raise UpdateError from exc
            raise
        return None

    async def asave(self, must_create: bool = False) -> None:
        # One hop: the transaction (like Django's own asave) and the Redis calls are synchronous.
        await sync_to_async(self.save)(must_create)

    def delete(self, session_key: str | None = None) -> None:
        """Delete the row, then the Redis copy (owed and retried if Redis is unavailable): logout is final."""
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        super().delete(session_key)
        if valid_key(session_key) and self._redis_enabled():
            cache.invalidate(session_key)

    async def adelete(self, session_key: str | None = None) -> None:
        await sync_to_async(self.delete)(session_key)

    # exists(), clear_expired() and their async twins are the database's (the source of truth). Redis
    # entries expire by themselves: their TTL is the session's expiry age.

    @staticmethod
    def _redis_enabled() -> bool:
        return hotcache_settings.enabled(FEATURE)


def _ms(when: dt.datetime) -> int:
    if timezone.is_naive(when):  # USE_TZ = False: Django stores local time (TIME_ZONE)
        when = timezone.make_aware(when)
    return int(when.timestamp() * 1000)


def _user_part(data: dict[str, Any]) -> str | None:
    """The logged-in user's key part in hotcache.users' keys, for a later combined session + user read."""
    value = data.get(SESSION_KEY)
    if value is None:
        return None
    from hotcache.users import entries as user_entries
    from hotcache.users.loaders import get_loader

    try:
        return user_entries.user_id(value, get_loader().model).key
    except (InvalidName, ImproperlyConfigured, ImportError, LookupError):
        return None
