"""Where users live: the loaders (ORM, MongoDB), the MongoDB auth backend, and the configured loader.

A loader loads one user by primary key, says which auth backends it serves, and dumps/rebuilds the
cached fields (never the password hash). See docs/users.md ("Loaders").
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ImproperlyConfigured
from django.db import models, router
from django.utils.module_loading import import_string

from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.users import cache
from hotcache.users.entries import FEATURE

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["DjangoUserLoader", "MongoUserBackend", "MongoUserLoader", "UserLoader", "get_loader"]


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

    def cached_fields(self) -> list[models.Field[Any, Any]]:
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
        except model.DoesNotExist:  # type: ignore[attr-defined]  # the user model is concrete; the stubs' Model is not
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
        _invalidate(user.pk)

    def delete(self, user: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        deleted = self._collection().delete_one({"_id": user.pk})
        _invalidate(user.pk)
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
        from django.contrib.auth.hashers import check_password, make_password

        model = auth.get_user_model()
        if username is None:
            username = kwargs.get(model.USERNAME_FIELD)
        if username is None or password is None:
            return None
        loader = MongoUserLoader()
        doc = loader._collection().find_one({model.USERNAME_FIELD: username})
        if doc is None:
            make_password(password)  # the hasher's work, as for a wrong password (timing), as ModelBackend does
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


def get_loader() -> UserLoader:
    """The loader named by HOTCACHE['USER_LOADER'] (built once per HOTCACHE setting)."""
    return hotcache_settings.derived("users.loader", _configured_loader)


def _configured_loader() -> UserLoader:
    path = str(hotcache_settings.USER_LOADER)
    cls = import_string(path)
    if not (isinstance(cls, type) and issubclass(cls, UserLoader)):
        msg = f"HOTCACHE['USER_LOADER']={path!r} is not a hotcache.users.UserLoader subclass"
        raise ImproperlyConfigured(msg)
    return cls()


def _invalidate(pk: Any) -> None:
    # hotcache.users.invalidate_user(pk), without importing the package that imports this module.
    cache.invalidate([pk], get_loader().model)
