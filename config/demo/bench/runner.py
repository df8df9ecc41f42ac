"""The benchmark harness. Arms of one group run interleaved (round-robin, shuffled each round) so drift
in the machine's load hits every arm alike. Per arm it reports latency p50/p99 over all operations, the
spread of per-round medians, and Redis billed commands, commands sent, round trips and MongoDB operations per
operation (from the metered connections and the counts hotcache's scripts report, so they are exact counts,
not estimates; hotcache's own meter flushes excluded).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hotcache import metering
from hotcache.testing import count_redis

__all__ = ["Arm", "ArmResult", "run_group"]


@dataclass(slots=True)
class Arm:
    name: str
    op: Callable[[int], Any]  # one operation; receives the operation index
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    counts: Callable[[], dict[str, int]] | None = None  # extra per-arm counters (e.g. DB queries), read before/after
    note: str = ""
    # The op times itself and returns its µs (an async op timed inside its event loop, as a server runs it,
    # without the loop's start and stop around each call).
    self_timed: bool = False


@dataclass(slots=True)
class ArmResult:
    name: str
    ops: int
    p50_us: float
    p99_us: float
    mean_us: float
    spread_us: float  # max - min of the per-round medians
    redis_commands_per_op: float
    redis_round_trips_per_op: float
    mongo_ops_per_op: float
    # What a per-command provider bills per operation: every command the server ran, those inside hotcache's
    # scripts, pipelines and transactions included (count_redis().billed); a foreign client's (e.g.
    # django-ratelimit's own connection) are not metered: 0 here, see the arm's extra columns.
    redis_billed_per_op: float
    extra_per_op: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def run_group(arms: list[Arm], *, rounds: int = 5, ops_per_round: int = 200, warmup: int = 20) -> list[ArmResult]:
    rng = random.Random(7)
    timings: dict[str, list[float]] = {a.name: [] for a in arms}
    round_medians: dict[str, list[float]] = {a.name: [] for a in arms}
    counters: dict[str, dict[str, int]] = {a.name: {"cmd": 0, "rt": 0, "mongo": 0, "billed": 0} for a in arms}
    extras: dict[str, dict[str, int]] = {a.name: {} for a in arms}
    for arm in arms:
        if arm.setup:
            arm.setup()
        for i in range(warmup):
            arm.op(i)
    index = warmup
    for _ in range(rounds):
        order = arms[:]
        rng.shuffle(order)
        for arm in order:
            before = metering.snapshot()
            extra_before = arm.counts() if arm.counts else {}
            samples = []
            with count_redis() as redis_count:
                for _ in range(ops_per_round):
                    t0 = time.perf_counter()
                    out = arm.op(index)
                    samples.append(float(out) if arm.self_timed else (time.perf_counter() - t0) * 1e6)
                    index += 1
            counters[arm.name]["billed"] += redis_count.billed - redis_count.billed_by_feature["meter"]
            delta = metering.snapshot()
            delta.subtract(before)
            if arm.counts:
                for k, v in arm.counts().items():
                    extras[arm.name][k] = extras[arm.name].get(k, 0) + v - extra_before.get(k, 0)
            for k, v in delta.items():
                kind = k.split(":", 1)[0]
                if kind in ("cmd", "rt", "mongo") and not k.endswith(":meter"):
                    counters[arm.name][kind] += v
            timings[arm.name].extend(samples)
            round_medians[arm.name].append(statistics.median(samples))
    for arm in arms:
        if arm.teardown:
            arm.teardown()
    results = []
    for arm in arms:
        values = sorted(timings[arm.name])
        n = len(values)
        c = counters[arm.name]
        results.append(
            ArmResult(
                name=arm.name,
                ops=n,
                p50_us=round(_quantile(values, 0.5), 1),
                p99_us=round(_quantile(values, 0.99), 1),
                mean_us=round(statistics.fmean(values), 1),
                spread_us=round(max(round_medians[arm.name]) - min(round_medians[arm.name]), 1),
                redis_commands_per_op=round(c["cmd"] / n, 3),
                redis_round_trips_per_op=round(c["rt"] / n, 3),
                mongo_ops_per_op=round(c["mongo"] / n, 3),
                redis_billed_per_op=round(c["billed"] / n, 3),
                extra_per_op={k: round(v / n, 3) for k, v in extras[arm.name].items()},
                note=arm.note,
            )
        )
    return results
