"""Counting thread hops: every ``sync_to_async`` call (asgiref's SyncToAsync, which Django's own async code and
``database_sync_to_async`` use too) made inside the block, with the function it ran."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any
from unittest import mock

from asgiref.sync import SyncToAsync


def _name(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


class Hops(list[str]):
    """The functions run in a worker thread, by dotted name, in call order."""

    def hotcache(self) -> list[str]:
        """Those of hotcache's own code (not Django's, not the test's)."""
        return [name for name in self if name.startswith("hotcache.")]


@contextlib.contextmanager
def count_hops() -> Iterator[Hops]:
    hops = Hops()
    original = SyncToAsync.__call__

    async def spy(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(_name(self.func))
        return await original(self, *args, **kwargs)

    with mock.patch.object(SyncToAsync, "__call__", spy):
        yield hops
