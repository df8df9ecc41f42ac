"""Runs inside the cluster's environment after the load: final syncs, then what the stores hold, as JSON."""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import time
from pathlib import Path

import django


def _until_quiet(run, done, attempts: int = 60, pause: float = 0.5):  # type: ignore[no-untyped-def]
    """Repeat a sync until it reports nothing left (another sync may hold the lock meanwhile)."""
    results = []
    for _ in range(attempts):
        result = run()
        results.append(result)
        if done(result):
            return results
        time.sleep(pause)  # waiting for a sync in the worker to finish and release its lock
    return results


def collect() -> dict:
    from hotcache import analytics, apikeys, workbench
    from hotcache.backends import mongo

    syncs = _until_quiet(lambda: analytics.sync(include_current_hour=True),
                         lambda r: not r.error and not r.locked_out and r.batches == 0 and r.pending_left == 0)
    today = dt.datetime.now(dt.UTC)
    report = analytics.report(today - dt.timedelta(days=1), today + dt.timedelta(hours=1))
    apikeys.sync_usage()
    # Two days, so a run that crosses UTC midnight still adds up.
    usage = {k.key_id: sum(n for _, n in apikeys.usage(k.key_id, days=2)) for k in apikeys.list_keys()}
    persists = _until_quiet(workbench.persist, lambda r: r.persisted == 0 and not r.errors)
    history = collections.Counter(
        d["session_id"] for d in mongo.collection("workbench_history", feature="e2e").find(
            {"owner": "e2e"}, projection={"session_id": 1})
    )
    return {
        "analytics": {"totals": dict(report.top_events), "unsynced": report.unsynced,
                      "syncs": [r.as_dict() for r in syncs[-3:]], "sync_runs": len(syncs)},
        "apikeys": {"usage_today": usage},
        "workbench": {"history": dict(history), "persist_runs": len(persists),
                      "persisted_now": sum(r.persisted for r in persists)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    django.setup()
    args.out.write_text(json.dumps(collect(), default=str))


if __name__ == "__main__":
    main()
