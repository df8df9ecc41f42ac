"""The users' service functions: a user by primary key through the cache, and invalidation (docs/users.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hotcache.users import cache, entries
from hotcache.users.loaders import get_loader

__all__ = ["get_cached_user", "invalidate_user", "invalidate_users"]


def get_cached_user(user_id: Any) -> Any | None:
    """The user with this primary key: from Redis when cached, else from the loader (and cached). None if not found.

    No session or is_active checks here (there is no session); the middleware makes those. Raises
    InvalidName (a ValueError) for an id that cannot be a primary key of the user model.
    """
    loader = get_loader()
    uid = entries.user_id(user_id, loader.model)
    cached, fill = cache.lookup(uid, loader)
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
    return cache.invalidate(user_ids, get_loader().model)


def invalidate_user(user_id: Any) -> bool:
    """Remove a user's cached entry and bump its version so no in-flight load can write the old data back."""
    return invalidate_users([user_id]) == 1
