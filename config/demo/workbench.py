"""Workbench demo: users open sessions, edit them (versioned read-modify-write), end some and abandon others;
the sync phase jumps the clock past the idle threshold (simulated time, the demo cannot wait 45 minutes),
runs the persister twice and checks that every ended and abandoned session reached history exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario, one_op_per_request
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
        body = {
            "state": {"title": f"analysis {sid}", "cells": []},
            "owner": f"user{rng.randrange(20)}",
            "expected_version": 0,
        }
        return DemoRequest(
            "POST", f"/workbench/{sid}/save", data=_json(body), content_type="application/json", tag="open"
        )
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
        return DemoRequest(
            "POST", f"/workbench/{sid}/edit", data=_json(body), content_type="application/json", tag="edit"
        )
    return DemoRequest("GET", f"/workbench/{sid}/", tag="load")


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    d = _data(ctx)
    if resp.status == 409:
        d["conflicts"] += 1
    elif resp.status >= 400:
        d["errors"] += 1
    elif req.tag == "edit":
        d["edits"] += 1


def _finish(ctx: DemoContext) -> list[Figure]:
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
    run1 = {
        "ended": first.ended,
        "abandoned": first.idle,
        "from_mongodb_fallback": first.from_fallback,
        "mongodb_bulk_writes": first.batches,
        "errors": first.errors,
    }
    d["checks"] = {
        "duplicates": sum(n - 1 for n in ids.values() if n > 1),
        "missing": len(expected - set(ids)),
        "wrongly_in_history": len(set(d["open"]) & set(ids)),
        "second_run_moved": second.persisted,
        "persist_errors": list(first.errors) + list(second.errors),
    }
    return [
        Figure(
            "persist_run_1",
            "Persister, first run",
            run1,
            "sessions",
            "sessions the first persist() moved to MongoDB history (ended, abandoned past "
            "WORKBENCH_PERSIST_IDLE_AFTER, taken from the MongoDB fallback) in how many bulk writes",
            text=f"{first.ended:,} ended + {first.idle:,} abandoned ({first.from_fallback:,} from fallback), "
            f"{first.batches:,} bulk write(s), {len(first.errors)} error(s)",
        ),
        Figure(
            "persist_run_2_moved",
            "Persister, second run",
            second.persisted,
            "sessions",
            "sessions a second persist() right after moved: must be 0 (each reaches history once)",
        ),
        Figure(
            "history_records",
            "History records",
            sum(ids.values()),
            "records",
            "documents in MongoDB workbench_history after both runs",
        ),
        Figure(
            "history_duplicates",
            "History duplicates",
            d["checks"]["duplicates"],
            "records",
            "sessions with more than one history record: must be 0",
        ),
        Figure(
            "ended_or_abandoned_missing_from_history",
            "Ended or abandoned, missing from history",
            d["checks"]["missing"],
            "sessions",
            "ended or abandoned sessions not in history: must be 0",
        ),
        Figure(
            "open_sessions_still_hot",
            "Open sessions still in Redis",
            still_open,
            "sessions",
            "sessions still in use that load after the clock jump",
        ),
        Figure(
            "open_sessions_wrongly_in_history",
            "Open sessions wrongly in history",
            d["checks"]["wrongly_in_history"],
            "sessions",
            "sessions still in use moved to history: must be 0",
        ),
    ]


def _report(ctx: DemoContext) -> list[Figure]:
    d = _data(ctx)
    return [
        Figure("sessions_opened", "Sessions opened", d["opened"], "sessions", "first saves (expected_version 0)"),
        Figure("edits", "Edits", d["edits"], "requests", "read-modify-write edits that saved a new version"),
        Figure(
            "edit_conflicts_409",
            "Edit conflicts",
            d["conflicts"],
            "requests",
            "edits answered 409 because another write came first (retried by the client)",
        ),
        Figure("errors", "Errors", d["errors"], "requests", "workbench requests answered 4xx/5xx other than 409"),
        Figure("ended", "Sessions ended", len(d["ended"]), "sessions", "POST .../end"),
        Figure(
            "abandoned",
            "Sessions abandoned",
            len(d["abandoned"]),
            "sessions",
            "sessions the user walked away from (persisted once idle)",
        ),
        Figure("still_open", "Sessions still open", len(d["open"]), "sessions", "in use when the traffic stopped"),
    ]


def _verify(ctx: DemoContext) -> list[str]:
    checks = _data(ctx).get("checks")
    if checks is None:
        return ["the persister did not run"]
    problems = []
    if checks["duplicates"]:
        problems.append(f"{checks['duplicates']} duplicate history record(s)")
    if checks["missing"]:
        problems.append(f"{checks['missing']} ended or abandoned session(s) missing from history")
    if checks["wrongly_in_history"]:
        problems.append(f"{checks['wrongly_in_history']} open session(s) moved to history")
    if checks["second_run_moved"]:
        problems.append(f"a second persist() moved {checks['second_run_moved']} session(s) again")
    errors = [str(e) for e in checks["persist_errors"]]
    if ctx.redis_was_unavailable:  # the persister waits for Redis: its sessions stay for the next run
        errors = [e for e in errors if not e.startswith("redis:")]
    if errors:
        problems.append(f"persist() reported errors: {'; '.join(errors)}")
    return problems


def scenario() -> Scenario:
    return Scenario(
        name=NAME,
        make_request=_request,
        expected_statuses=frozenset({200, 409}),
        weight=1.0,
        on_response=_on_response,
        finish=_finish,
        report=_report,
        verify=_verify,
        # The "before" path kept active sessions in MongoDB: one operation per save, load, edit or end.
        mongo_ops_without_hotcache=one_op_per_request(NAME),
    )
