"""Text rendering of a demo result."""

from __future__ import annotations

from typing import Any

from config.demo.runner import DemoResult

__all__ = ["format_report"]


def _table(rows: list[tuple[str, Any]], indent: str = "  ") -> list[str]:
    if not rows:
        return [f"{indent}(none)"]
    width = max(len(str(k)) for k, _ in rows)
    return [f"{indent}{k!s:<{width}}  {v}" for k, v in rows]


def format_report(r: DemoResult) -> str:
    lines = [
        "hotcache demo report",
        "====================",
        f"Redis:   {r.redis_backend}",
        f"MongoDB: {r.mongo_backend}",
        "",
        f"Requests served: {r.requests} in {r.seconds:.2f}s ({r.requests / max(r.seconds, 1e-9):.0f}/s)",
        *_table([(f"HTTP {k}", v) for k, v in r.statuses.items()]),
        "",
        "Redis commands on the request path (per feature):",
        *_table(list(r.redis_on_request_path.items())),
        f"  round trips: {r.redis_round_trips_on_request_path}",
        "",
        "MongoDB operations on the request path (with Redis healthy, only first loads of API keys, durable",
        "workbench copies (WORKBENCH_DURABLE_SAVES) and the admin report pages read MongoDB):",
        *_table(list(r.mongo_ops_on_request_path.items())),
        "",
        "Sync phase: Redis commands / MongoDB operations:",
        *_table(list(r.redis_sync.items())),
        *_table([(f"mongo {k}", v) for k, v in r.mongo_ops_sync.items()]),
        "",
        f"Redis commands today: {r.redis_commands_today} of the daily budget {r.daily_budget} "
        f"({100 * r.redis_commands_today / max(r.daily_budget, 1):.1f}%)",
        "",
        f"Health gate: {r.health['state']} (opened {r.health['opens']}x, recovered {r.health['recoveries']}x, "
        f"{r.health['calls_skipped_while_open']} Redis calls skipped while open)",
    ]
    if r.health["fallbacks"]:
        lines.append("Fallbacks used:")
        lines += _table(list(r.health["fallbacks"].items()))
    for name, figures in r.features.items():
        lines += ["", f"[{name}]", *_table(list(figures.items()))]
    return "\n".join(lines) + "\n"
