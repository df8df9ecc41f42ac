"""The frame of hotcache's middleware that serve WSGI and ASGI alike (Django's sync- and async-capable
middleware), in one place: each middleware keeps only its own ``__call__`` and ``__acall__``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

__all__ = ["HybridMiddleware"]


class HybridMiddleware:
    """Decides the mode once, at startup: under ASGI Django hands a coroutine function as ``get_response``, and
    the instance is marked one too, so Django awaits it. A subclass's ``__call__`` starts with
    ``if self.async_mode: return self.__acall__(request)`` (a plain attribute read: nothing added per request)."""

    sync_capable = True
    async_capable = True
    __call__: Callable[[HttpRequest], Any]  # each subclass's: the response, or under ASGI an awaitable of it

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
