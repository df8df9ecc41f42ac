"""A MongoDB wire-protocol server whose storage is mongomock, for multi-process end-to-end runs.

No mongod can be installed on these machines. In-process mongomock cannot be shared by gunicorn
workers and a Celery worker, so end-to-end runs start this server instead: mockupdb speaks the wire
protocol (OP_MSG) and every command is executed on one mongomock client under a lock. The processes
under test use real pymongo (``mongodb://127.0.0.1:<port>/db``): connection pools, pool events,
timeouts and error replies are the driver's own. Only the commands hotcache uses are implemented;
anything else is answered with CommandNotFound (59), as a server would.

Run standalone: ``python -m tests.support.mongo_wire --port 27099``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections import OrderedDict
from typing import Any

import mongomock
import pymongo
from mockupdb import MockupDB
from pymongo.errors import DuplicateKeyError, OperationFailure

HELLO = {
    "ismaster": True,
    "isWritablePrimary": True,
    "helloOk": True,
    "minWireVersion": 0,
    "maxWireVersion": 21,
    "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48_000_000,
    "maxWriteBatchSize": 100_000,
    # No logicalSessionTimeoutMinutes: the driver then sends no sessions (none are implemented here).
}


def _patch_mongomock_bulk() -> None:
    from hotcache.backends.mongo import _patch_mongomock_bulk as patch

    patch()


class MongoWireServer:
    def __init__(self, port: int = 0) -> None:
        _patch_mongomock_bulk()
        self._lock = threading.RLock()
        self._store = mongomock.MongoClient()
        self._server = MockupDB(port=port, request_timeout=30, max_wire_version=21)
        self._server.autoresponds(self._handle)
        self.commands = 0

    def run(self) -> str:
        self._server.run()
        return self.uri

    @property
    def uri(self) -> str:
        return self._server.uri

    @property
    def port(self) -> int:
        return self._server.port

    def stop(self) -> None:
        self._server.stop()

    # --- dispatch ---------------------------------------------------------------------------------
    def _handle(self, request: Any) -> bool:
        name = request.command_name
        if name in ("ismaster", "isMaster", "hello"):
            return request.ok(HELLO)
        if name in ("ping", "endSessions", "killCursors"):
            return request.ok()
        if name == "buildInfo":
            return request.ok(version="7.0.0-mongomock-wire", versionArray=[7, 0, 0, 0])
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            return request.command_err(code=59, errmsg=f"no such command: '{name}'")
        doc = request.doc
        db = self._store[doc["$db"]]
        try:
            with self._lock:
                self.commands += 1
                reply = handler(db, doc)
        except OperationFailure as exc:
            return request.command_err(code=exc.code or 8, errmsg=str(exc))
        except Exception as exc:
            return request.command_err(code=8, errmsg=f"{type(exc).__name__}: {exc}")
        return request.ok(reply)

    # --- commands ---------------------------------------------------------------------------------
    def _cmd_insert(self, db: Any, doc: dict) -> dict:
        coll = db[doc["insert"]]
        ordered = doc.get("ordered", True)
        n, errors = 0, []
        for i, d in enumerate(doc.get("documents", [])):
            try:
                coll.insert_one(d)
                n += 1
            except DuplicateKeyError as exc:
                errors.append({"index": i, "code": 11000, "errmsg": str(exc)})
                if ordered:
                    break
        return _write_reply(n, errors)

    def _cmd_update(self, db: Any, doc: dict) -> dict:
        coll = db[doc["update"]]
        ordered = doc.get("ordered", True)
        n = modified = 0
        upserted, errors = [], []
        for i, stmt in enumerate(doc.get("updates", [])):
            q, u = stmt.get("q", {}), stmt["u"]
            try:
                if stmt.get("multi"):
                    r = coll.update_many(q, u, upsert=stmt.get("upsert", False))
                elif not any(k.startswith("$") for k in u):
                    r = coll.replace_one(q, u, upsert=stmt.get("upsert", False))
                else:
                    r = coll.update_one(q, u, upsert=stmt.get("upsert", False))
            except DuplicateKeyError as exc:
                errors.append({"index": i, "code": 11000, "errmsg": str(exc)})
                if ordered:
                    break
                continue
            except OperationFailure as exc:
                errors.append({"index": i, "code": exc.code or 2, "errmsg": str(exc)})
                if ordered:
                    break
                continue
            if r.upserted_id is not None:
                upserted.append({"index": i, "_id": r.upserted_id})
                n += 1
            else:
                n += r.matched_count
                modified += r.modified_count
        reply = _write_reply(n, errors)
        reply["nModified"] = modified
        if upserted:
            reply["upserted"] = upserted
        return reply

    def _cmd_delete(self, db: Any, doc: dict) -> dict:
        coll = db[doc["delete"]]
        n = 0
        for stmt in doc.get("deletes", []):
            if stmt.get("limit", 0) == 1:
                n += coll.delete_one(stmt.get("q", {})).deleted_count
            else:
                n += coll.delete_many(stmt.get("q", {})).deleted_count
        return {"n": n}

    def _cmd_find(self, db: Any, doc: dict) -> dict:
        coll = db[doc["find"]]
        cursor = coll.find(doc.get("filter", {}), doc.get("projection"))
        if doc.get("sort"):
            cursor = cursor.sort(list(doc["sort"].items()))
        if doc.get("skip"):
            cursor = cursor.skip(doc["skip"])
        if doc.get("limit"):
            cursor = cursor.limit(abs(doc["limit"]))
        return _cursor(db, doc["find"], list(cursor))

    def _cmd_aggregate(self, db: Any, doc: dict) -> dict:
        docs = list(db[doc["aggregate"]].aggregate(list(doc.get("pipeline", []))))
        return _cursor(db, doc["aggregate"], docs)

    def _cmd_count(self, db: Any, doc: dict) -> dict:
        return {"n": db[doc["count"]].count_documents(doc.get("query") or {})}

    def _cmd_findAndModify(self, db: Any, doc: dict) -> dict:
        coll = db[doc["findAndModify"]]
        query = doc.get("query") or {}
        sort = list(doc["sort"].items()) if doc.get("sort") else None
        fields = doc.get("fields")
        if doc.get("remove"):
            value = coll.find_one_and_delete(query, projection=fields, sort=sort)
            return {"lastErrorObject": {"n": int(value is not None)}, "value": value}
        existing = coll.find_one(query, sort=sort) if sort else coll.find_one(query)
        upsert = bool(doc.get("upsert"))
        before = pymongo.ReturnDocument.BEFORE
        after = pymongo.ReturnDocument.AFTER
        value = coll.find_one_and_update(
            query, doc["update"], projection=fields, sort=sort, upsert=upsert,
            return_document=after if doc.get("new") else before,
        )
        last: dict[str, Any] = {"n": 1 if (existing is not None or upsert) else 0,
                                "updatedExisting": existing is not None}
        if existing is None and upsert:
            inserted = coll.find_one(query)
            if inserted is not None:
                last["upserted"] = inserted["_id"]
        return {"lastErrorObject": last, "value": value}

    def _cmd_createIndexes(self, db: Any, doc: dict) -> dict:
        coll = db[doc["createIndexes"]]
        for spec in doc.get("indexes", []):
            options = {k: v for k, v in spec.items() if k in ("name", "unique", "expireAfterSeconds", "sparse")}
            coll.create_index(list(spec["key"].items()), **options)
        return {"numIndexesAfter": len(coll.index_information())}

    def _cmd_listIndexes(self, db: Any, doc: dict) -> dict:
        info = db[doc["listIndexes"]].index_information()
        docs = []
        for name, spec in info.items():
            entry = OrderedDict(v=2, key=OrderedDict(spec["key"]), name=name)
            entry.update({k: v for k, v in spec.items() if k not in ("key", "v")})
            docs.append(entry)
        return _cursor(db, doc["listIndexes"], docs)

    def _cmd_drop(self, db: Any, doc: dict) -> dict:
        db.drop_collection(doc["drop"])
        return {}

    def _cmd_dropDatabase(self, db: Any, doc: dict) -> dict:
        self._store.drop_database(db.name)
        return {}


def _write_reply(n: int, errors: list[dict]) -> dict:
    reply: dict[str, Any] = {"n": n}
    if errors:
        reply["writeErrors"] = errors
    return reply


def _cursor(db: Any, coll: str, docs: list[dict]) -> dict:
    return {"cursor": {"id": 0, "ns": f"{db.name}.{coll}", "firstBatch": docs}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = MongoWireServer(args.port)
    print(server.run(), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
