"""Report arms: what one report page's figures cost (latency, Redis commands, round trips, MongoDB operations)."""

from __future__ import annotations

from config.demo.bench.runner import Arm
from hotcache import metering, reports

__all__ = ["arms"]


def _seed() -> None:
    # A realistic meter: a few features with events, flushed, so the reads return data.
    for name, n in (("allowed", 900), ("denied", 40), ("allowed:login", 300), ("denied:login", 30)):
        metering.event("ratelimit", name, n)
    metering.event("users", "hit", 5000)
    metering.event("users", "miss", 200)
    metering.flush()


def arms() -> dict[str, list[Arm]]:
    return {
        "reports: figures for one page": [
            Arm(
                "overview(30 days): meter pipeline + INFO memory",
                lambda i: reports.overview(30),
                setup=_seed,
            ),
            Arm("overview(7 days)", lambda i: reports.overview(7), setup=_seed),
            Arm(
                "feature_summary('ratelimit', 30)",
                lambda i: reports.feature_summary("ratelimit", 30),
                setup=_seed,
            ),
        ]
    }
