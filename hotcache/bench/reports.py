"""Report arms: what one report page's figures cost (latency, Redis commands, round trips, MongoDB operations)."""

from __future__ import annotations

from hotcache import metering, reports
from hotcache.bench.runner import Arm

__all__ = ["arms"]


def _seed() -> None:
    # A realistic meter: a few features with events, flushed, so the reads return data.
    for name, n in (("allowed", 900), ("denied", 40), ("allowed:login", 300), ("denied:login", 30)):
        metering.event("ratelimit", name, n)
    metering.event("users", "hit", 5000)
    metering.event("users", "miss", 200)
    metering.flush()


def _meter_reads() -> dict[str, int]:
    # The runner leaves out the feature "meter" (flush overhead), but the report's own meter read runs under
    # it: count it here so the table shows the whole cost.
    snap = metering.snapshot()
    return {"meter cmds": snap["cmd:meter"], "meter RT": snap["rt:meter"]}


def arms() -> dict[str, list[Arm]]:
    return {
        "reports: figures for one page": [
            Arm(
                "overview(30 days): meter pipeline + INFO memory",
                lambda i: reports.overview(30),
                setup=_seed,
                counts=_meter_reads,
            ),
            Arm("overview(7 days)", lambda i: reports.overview(7), setup=_seed, counts=_meter_reads),
            Arm(
                "feature_summary('ratelimit', 30)",
                lambda i: reports.feature_summary("ratelimit", 30),
                setup=_seed,
                counts=_meter_reads,
            ),
        ]
    }
