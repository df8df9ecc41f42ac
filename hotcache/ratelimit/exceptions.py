"""``Ratelimited``, what ``@ratelimit(block=True)`` raises: django-ratelimit's ``django_ratelimit.exceptions``.

A ``PermissionDenied`` (Django answers 403 unless something handles it); ``RateLimitMiddleware`` turns it into
``RATELIMIT_VIEW``'s answer or a 429 with ``Retry-After``. See docs/ratelimit.md ("Per view").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied

from hotcache.exceptions import HotcacheError

if TYPE_CHECKING:
    from hotcache.ratelimit.limits import Decision

__all__ = ["Ratelimited"]


class Ratelimited(HotcacheError, PermissionDenied):
    """Raised by ``@ratelimit(block=True)``; a PermissionDenied, so Django answers 403 unless handled.

    ``retry_after`` is whole seconds (>= 1) until the request would be admitted; ``decision`` is the check's
    ``Decision`` (the RateLimit headers of the 429 come from it). Both are None when raised by hand.
    """

    def __init__(
        self, message: str = "rate limited", *, retry_after: int | None = None, decision: Decision | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.decision = decision
