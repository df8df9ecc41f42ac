"""Workbench demo: users open sessions, edit them (versioned read-modify-write), end some and abandon others;
the sync phase jumps the clock past the idle threshold (simulated time, the demo cannot wait 45 minutes),
runs the persister twice and checks that every ended and abandoned session reached history exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Scenario
from hotcache import workbench
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import BackendUnavailable
from hotcache.testing import frozen_clock

__all__ = ["scenario"]

NAME = "workbench"


def _data(ctx: DemoContext) -> dict[str, Any]:
    data = ctx.data[NAME]
    if not data:
        data.update(opened=0, open=[], ended=[], abandoned=[], edits=0, conflicts=0, errors=0, end_calls=0)
    return data


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload)


def _request(ctx: DemoContext, i: int) -> DemoRequest:
    d = _data(ctx)
    rng = ctx.rng
    roll = rng.random()
    if len(d["open"]) < 5 or roll < 0.12:
        sid = f"wb-{d['opened']}"
        d["opened"] += 1
        d["open"].append(sid)
        body = {"state": {"title": f"analysis {sid}", "cells": []}, "owner": f"user{rng.randrange(20)}",
                "expected_version": 0}
        return DemoRequest("POST", f"/workbench/{sid}/save", data=_json(body), content_type="application/json",
                           tag="open")
    sid = rng.choice(d["open"])
    if roll < 0.20:
        d["open"].remove(sid)
        d["ended"].append(sid)
        return DemoRequest("POST", f"/workbench/{sid}/end", tag="end")
    if roll < 0.26:
        d["open"].remove(sid)
        d["abandoned"].append(sid)  # the user walks away: never touched again
        return DemoRequest("GET", f"/workbench/{sid}/", tag="last-look")
    if roll < 0.75:
        body = {"cell": f"x = {rng.randrange(1000)}"}
        return DemoRequest("POST", f"/workbench/{sid}/edit", data=_json(body), content_type="application/json",
                           tag="edit")
    return DemoRequest("GET", f"/workbench/{sid}/", tag="load")


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    d = _data(ctx)
    if resp.status == 409:
        d["conflicts"] += 1
    elif resp.status >= 400:
        d["errors"] += 1
    elif req.tag == "edit":
        d["edits"] += 1


def _finish(ctx: DemoContext) -> dict[str, Any]:
    d = _data(ctx)
    jump = float(hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER) + 60
    with frozen_clock(time.time() + jump):
        # Sessions still open are in use "now" (after the jump); the abandoned ones were last seen before it.
        still_open = sum(1 for sid in d["open"] if workbench.load(sid) is not None)
        first = workbench.persist()
        second = workbench.persist()
    ids: dict[str, int] = {}
    try:
        for doc in mongo.collection(workbench.HISTORY, feature="demo").find({}, projection={"session_id": 1}):
            ids[doc["session_id"]] = ids.get(doc["session_id"], 0) + 1
    except BackendUnavailable:
        pass
    expected = set(d["ended"]) | set(d["abandoned"])
    return {
        "persist_run_1": {
            "ended": first.ended, "abandoned": first.idle, "from_mongodb_fallback": first.from_fallback,
            "mongodb_bulk_writes": first.batches, "errors": first.errors,
        },
        "persist_run_2_moved": second.persisted,
        "history_records": sum(ids.values()),
        "history_duplicates": sum(n - 1 for n in ids.values() if n > 1),
        "ended_or_abandoned_missing_from_history": len(expected - set(ids)),
        "open_sessions_still_hot": still_open,
        "open_sessions_wrongly_in_history": len(set(d["open"]) & set(ids)),
    }


def _report(ctx: DemoContext) -> dict[str, Any]:
    d = _data(ctx)
    return {
        "sessions_opened": d["opened"],
        "edits": d["edits"],
        "edit_conflicts_409": d["conflicts"],
        "errors": d["errors"],
        "ended": len(d["ended"]),
        "abandoned": len(d["abandoned"]),
        "still_open": len(d["open"]),
    }


def scenario() -> Scenario:
    return Scenario(name=NAME, make_request=_request, weight=1.0, on_response=_on_response, finish=_finish,
                    report=_report)
