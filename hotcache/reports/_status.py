"""``manage.py hotcache_status``: the overview as terminal text or JSON, and the limits it exceeds (the
command exits 1 naming them: billed commands today over REDIS_DAILY_COMMAND_BUDGET, the month projected over
REDIS_MONTHLY_COMMAND_BUDGET, memory, MongoDB connections). See docs/reports.md#hotcache_status."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hotcache.reports._overview import Overview, overview

__all__ = ["StatusReport", "status_report"]


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The lines to print and, when a budget or limit is exceeded, the error naming them (else "")."""

    overview: Overview
    lines: list[str]
    error: str


def status_report(days: int | None = None, *, as_json: bool = False) -> StatusReport:
    """overview(days) rendered for the terminal (``as_json``: one indented JSON document)."""
    ov = overview(days)
    lines = [json.dumps(ov.as_dict(), indent=2)] if as_json else _text(ov)
    error = "hotcache limit exceeded: " + "; ".join(lim.message() for lim in ov.exceeded) if ov.exceeded else ""
    return StatusReport(ov, lines, error)


def _text(ov: Overview) -> list[str]:
    out: list[str] = []
    w = out.append
    width = max(30, *(len(lim.name) for lim in ov.limits))
    if not ov.redis_available:
        w(
            f"!! {ov.redis_note} Health gate: {ov.gate.state}. {ov.gate_reason + '. ' if ov.gate_reason else ''}"
            "Run hotcache_check."
        )
    for lim in ov.limits:
        value = "unknown" if lim.value is None else f"{lim.value:,}"
        pct = "" if lim.percent is None else f"  {lim.percent}%"
        flag = {"exceeded": "  EXCEEDED", "warning": "  WARNING"}.get(lim.level, "")
        w(f"{lim.name:<{width}} {value:>14} of {lim.limit:,}{pct}{flag}  (HOTCACHE[{lim.setting!r}])")
        if lim.note:
            w(f"{'':<{width}} {lim.note}")
    if ov.redis_nodes:
        w(f"{'Redis Cluster masters':<{width}} memory and server's billed commands are their sums:")
        for node in ov.redis_nodes:
            mem = "unknown" if node.used_memory is None else f"{node.used_memory:,}"
            billed = "unknown" if node.server_billed is None else f"{node.server_billed:,}"
            w(
                f"  {node.address:<{width - 2}} memory {mem:>14}  server billed {billed:>12}  "
                f"sent by this process {node.commands_sent:>9,}  gate {node.gate}"
            )
        total_sent = sum(n.commands_sent for n in ov.redis_nodes)
        w(f"  {'sum':<{width - 2}} memory {ov.memory.value if ov.memory.value is not None else 'unknown':>14}  "
          f"sent by this process {total_sent:>9,}")
    server = ov.server_commands
    server_value = "unknown" if server.billed is None else f"{server.billed:,}"
    w(f"{'Redis server, billed commands':<{width}} {server_value:>14}  {server.note}")
    w(
        f"{'Health gate':<{width}} {ov.gate.state}; fallback events today {sum(ov.fallbacks_today.values())}, "
        f"last {len(ov.days)} days {sum(ov.fallbacks.values())}"
    )
    if ov.gate_reason:
        w(f"{'':<{width}} {ov.gate_reason}")
    w("")
    w(
        f"{'Feature':<20} {'enabled':>7} {'billed today':>12} {'billed':>10} {'cmds':>9} {'RT':>9} {'mongo':>7} "
        f"{'fallbacks':>9}"
    )
    for f in ov.features:
        enabled = ("yes" if f.enabled else "no") if f.shipped else "-"
        w(
            f"{f.feature:<20} {enabled:>7} {f.billed_today:>12,} {f.billed:>10,} {f.commands:>9,} "
            f"{f.round_trips:>9,} {f.mongo_ops:>7,} {f.fallbacks:>9,}"
        )
    w("")
    w("Redis per day (UTC):      billed   round trips")
    for d in ov.days:
        if d.commands or d.billed:
            w(f"  {d.day.isoformat()} {d.billed:>12,} {d.round_trips:>13,}")
    for warning in ov.warnings:
        w(f"warning: {warning}")
    return out
