"""Cached users: ``request.user`` from one Redis command, with every check Django's get_user() makes.

The public API lives here; docs/users.md says how it works, what it costs and how it fails. Modules:
``entries`` (user ids, keys, the sealed entry), ``cache`` (read, fill, invalidate, deferred
invalidations), ``loaders`` (ORM, MongoDB, MongoUserBackend), ``core`` (get_cached_user,
invalidate_user(s)), ``session`` (Django's session checks), ``middleware``, ``signals``.
"""

from __future__ import annotations

# Outside __all__ but importable from here as before: FEATURE, log, get_user (the session path), connect().
from hotcache.users.cache import log as log
from hotcache.users.core import get_cached_user, invalidate_user, invalidate_users
from hotcache.users.entries import FEATURE as FEATURE
from hotcache.users.loaders import DjangoUserLoader, MongoUserBackend, MongoUserLoader, UserLoader, get_loader
from hotcache.users.middleware import CachedAuthenticationMiddleware
from hotcache.users.session import get_user as get_user
from hotcache.users.signals import connect as connect

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
