"""The two MongoDB stores a contract test can run on (the ``mongo_store`` fixture): the in-process stand-in
(mongomock, today's default) and a real server (``tests/support/secantus.py``). Both give ``kind``,
``url``, ``database``, ``client()`` and ``db()`` for raw assertions; only the real one has fail points."""

from __future__ import annotations

from typing import Any, Protocol

from hotcache.backends import mongo

__all__ = ["MongoStore", "StandInMongo"]


class MongoStore(Protocol):
    kind: str  # "standin" | "real"
    url: str
    database: str

    def client(self) -> Any: ...

    def db(self) -> Any: ...


class StandInMongo:
    """hotcache's in-process MongoDB stand-in (``mongomock://``), as configured by config.settings.test."""

    kind = "standin"

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = mongo.database_name()

    def client(self) -> Any:
        """The stand-in's own client: the same in-process store hotcache writes to (not metered)."""
        return mongo._current().client

    def db(self) -> Any:
        return self.client()[self.database]
