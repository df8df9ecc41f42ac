"""The users' signal receivers: a saved, deleted or regrouped user is invalidated (again on commit).

connect() is called from hotcache.signals.connect_signals() (HotcacheConfig.ready). See docs/users.md.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib import auth
from django.core.exceptions import FieldDoesNotExist
from django.db import router
from django.db.models import ManyToManyRel

from hotcache.exceptions import InvalidName
from hotcache.users import entries
from hotcache.users.core import invalidate_users
from hotcache.users.loaders import UserLoader, get_loader

__all__ = ["connect"]


def connect() -> None:
    """Connect the receivers for the current user model (idempotent)."""
    from django.db.models.signals import m2m_changed, post_delete, post_save

    user = auth.get_user_model()
    post_save.connect(_on_user_saved, sender=user, dispatch_uid="hotcache.users.saved")
    post_delete.connect(_on_user_deleted, sender=user, dispatch_uid="hotcache.users.deleted")
    for name in ("groups", "user_permissions"):
        try:
            # groups and user_permissions are PermissionsMixin's many-to-many fields
            through = cast(ManyToManyRel, user._meta.get_field(name).remote_field).through
        except FieldDoesNotExist:  # a custom user model without PermissionsMixin
            continue
        m2m_changed.connect(_on_m2m_changed, sender=through, dispatch_uid=f"hotcache.users.m2m.{name}")


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
        rel = cast(ManyToManyRel, user._meta.get_field(name).remote_field)
        accessor = rel.get_accessor_name()
        if rel.through is through and accessor is not None:
            return accessor
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
        entries.user_id(value, loader.model)
    except InvalidName:
        return False
    return True
