"""A new Redis connection's set-up in one round trip: ``HELLO 3 [AUTH user pass] SETNAME hotcache``.

redis-py's own set-up of a RESP3 connection is five round trips before the first command: HELLO (with AUTH),
CLIENT MAINT_NOTIFICATIONS, CLIENT SETNAME and CLIENT SETINFO LIB-NAME / LIB-VER. Over a managed Redis 25 ms
away that is 250 ms on every new connection (the pool's, each thread's lean one, each event loop's, each cluster
node's), on top of TCP and TLS. hotcache keeps what it needs and drops the rest:

- the name (``CLIENT LIST`` shows hotcache's connections by it: the runbook, the e2e harness) goes with HELLO,
  which takes ``SETNAME`` since Redis 6.0, as HELLO itself does;
- CLIENT SETINFO is not sent (``driver_info=None``): it only labels the connection in CLIENT LIST;
- maintenance notifications are off (``MaintNotificationsConfig(enabled=False)``): they let Redis Enterprise
  move a connection during its maintenance; a server without them (redis-server 7.0 here) answers with an
  error, a round trip spent for nothing. hotcache's short timeouts and health gate handle a node going away.

Credentials, TLS, the database (SELECT, only when it is not 0) and the RESP version are as configured. On RESP2
(no HELLO) redis-py's CLIENT SETNAME is sent as before. docs/operations/managed-redis.md has the figures.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import check_protocol_version

__all__ = ["AsyncNameWithHello", "NameWithHello", "connection_class", "options"]

# Set-up options hotcache replaces, whatever the connection source (the django-redis alias's pool) held: its
# driver labels, and its pool's maintenance-notification machinery (objects of that pool, not hotcache's).
_REPLACED = ("lib_name", "lib_version", "maint_notifications_pool_handler")


def options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` (a pool's or client's) with the set-up hotcache sends: no CLIENT SETINFO, no maintenance
    notifications; every other option (credentials, TLS, db, protocol, client_name) untouched."""
    out = {k: v for k, v in kwargs.items() if k not in _REPLACED}
    out["driver_info"] = None
    out["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return out


def _take_name(conn: Any) -> str | None:
    """The name to send with HELLO, taken off ``conn`` for the set-up (so redis-py sends no CLIENT SETNAME); None
    where redis-py sends no HELLO (RESP2) or there is no name."""
    name: str | None = conn.client_name
    if not name or not check_protocol_version(conn.protocol, 3):
        return None
    conn.client_name = None
    conn._hotcache_hello_name = name
    return name


def _give_back(conn: Any, name: str) -> None:
    conn.client_name = name
    conn._hotcache_hello_name = None


def _hello(conn: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with ``SETNAME <name>`` when they are the set-up's HELLO."""
    name = getattr(conn, "_hotcache_hello_name", None)
    if name and args and args[0] == "HELLO":
        return (*args, "SETNAME", name)
    return args


class NameWithHello:
    """Mixin for a redis-py connection class: the client name goes with HELLO (see the module docstring)."""

    def on_connect_check_health(self, check_health: bool = True) -> None:
        name = _take_name(self)
        try:
            super().on_connect_check_health(check_health)  # type: ignore[misc]  # redis-py's, after this mixin
        finally:
            if name is not None:
                _give_back(self, name)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        super().send_command(*_hello(self, args), **kwargs)  # type: ignore[misc]


class AsyncNameWithHello:
    """``NameWithHello`` for a redis.asyncio connection class."""

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        name = _take_name(self)
        try:
            await super().on_connect_check_health(check_health)  # type: ignore[misc]
        finally:
            if name is not None:
                _give_back(self, name)

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        await super().send_command(*_hello(self, args), **kwargs)  # type: ignore[misc]


@cache
def connection_class(base: type) -> type:
    """``base`` (a sync redis-py connection class) sending its name with HELLO; for connections hotcache opens
    without its meter (hotcache_check's timing of a new connection)."""
    made = type(f"Named{base.__name__}", (NameWithHello, base), {})
    made.__module__ = __name__
    return made
