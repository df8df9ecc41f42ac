"""The keys a warm authenticated request reads, for round-trip figures on either Redis target: on one server one
pipeline; on a Redis Cluster the session's, the user's and the rate-limit decision's keys each on its node
(hotcache.sessions.combined), one round trip per node holding them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from hotcache.ratelimit import Limit, limit_keys
from hotcache.sessions.entries import entry_key
from hotcache.users import entries as user_entries
from tests.support.targets import nodes_holding


def request_keys(client: Client, user: Any, *, ip: str | None = None, rate: int = 5) -> list[str]:
    """The session's entry, the user's entry, and (with ``ip``) the profile rule's rate-limit key."""
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    keys = [entry_key(session_key), user_entries.entry_key(user_entries.user_id(user.pk, get_user_model()).key)]
    if ip is not None:
        keys.append(limit_keys(Limit("profile", ip, rate, 60))[0])
    return keys


def request_nodes(client: Client, user: Any, *, ip: str | None = None, rate: int = 5) -> int:
    """Round trips of one combined send: 1 on one server, the masters holding the request's keys on a cluster."""
    return nodes_holding(*request_keys(client, user, ip=ip, rate=rate))
