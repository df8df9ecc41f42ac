"""Running async test code on one long-lived event loop, as an ASGI server does (uvicorn, daphne), and counting
database queries from any thread (the ORM's async calls run them in a worker thread)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from unittest import mock

from django.db.backends.utils import CursorWrapper

T = TypeVar("T")


def serve(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new event loop of its own (not asgiref's per-call loop of ``async_to_sync``, on which hotcache
    takes the sync path: hotcache.backends.aredis.client)."""
    return asyncio.run(coro)


@contextlib.contextmanager
def recording_queries() -> Iterator[list[str]]:
    """Every SQL statement executed inside the block, from any thread."""
    sql: list[str] = []
    execute, executemany = CursorWrapper.execute, CursorWrapper.executemany

    def spy(self: CursorWrapper, query: str, *args: Any, **kwargs: Any) -> Any:
        sql.append(query)
        return execute(self, query, *args, **kwargs)

    def spy_many(self: CursorWrapper, query: str, *args: Any, **kwargs: Any) -> Any:
        sql.append(query)
        return executemany(self, query, *args, **kwargs)

    with mock.patch.object(CursorWrapper, "execute", spy), mock.patch.object(CursorWrapper, "executemany", spy_many):
        yield sql
