"""What the analytics glue reads from a request: the signed-in user's id and the anonymous visitor.
See docs/analytics.md ("Public API").
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from hotcache import clientip
from hotcache.analytics._events import check_user_id
from hotcache.exceptions import InvalidName

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["anonymous_visitor", "request_user_id", "user_id_of"]


def request_user_id(request: HttpRequest) -> object:
    """The signed-in user's pk if track() takes it as a user_id, else None (the visitor id counts instead)."""
    return user_id_of(getattr(request, "user", None))


def user_id_of(user: Any) -> object:
    """request_user_id() for a user already resolved (``await request.auser()`` in async code)."""
    if user is None or not user.is_authenticated:
        return None
    try:
        return check_user_id(user.pk)
    except InvalidName:
        return None


def anonymous_visitor(request: HttpRequest) -> str:
    """A visitor id for a request without user or session: a digest of the client's address (hotcache.clientip:
    REMOTE_ADDR, or the trusted proxies' header) and its User-Agent, never stored raw."""
    addr = clientip.client_ip(request)
    raw = f"{'' if addr is None else addr}|{request.META.get('HTTP_USER_AGENT', '')}"
    return "a:" + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
