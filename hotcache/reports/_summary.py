"""A feature's page: its meter events per day and over the period, its Redis billed commands beside round trips
and commands sent (the overview's wording), the figures it derives from them and the detail sections it
registered (hotcache.reports._registry). See docs/reports.md."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from hotcache.conf import FEATURES, hotcache_settings
from hotcache.exceptions import BackendUnavailable
from hotcache.reports import _meter, _registry
from hotcache.reports._figures import FEATURE_EVENTS, FEATURE_TITLES, Figure, Section

__all__ = ["FeatureSummary", "feature_summary"]

log = logging.getLogger("hotcache.reports")


@dataclass(slots=True)
class FeatureSummary:
    feature: str
    title: str
    enabled: bool
    days: int
    redis_available: bool
    redis_note: str
    events: list[str]  # the columns of the per-day table
    per_day: list[tuple[dt.date, dict[str, int]]]  # newest first
    totals: dict[str, int]
    today: dict[str, int]
    commands: int  # Redis commands sent
    mongo_ops: int
    figures: list[Figure]
    sections: list[Section]
    filters: dict[str, str] = field(default_factory=dict)  # the detail filters applied (e.g. analytics event)
    notes: list[str] = field(default_factory=list)  # e.g. a filter that was ignored, and why
    billed: int = 0  # Redis billed commands over the period: what REDIS_DAILY_COMMAND_BUDGET counts
    round_trips: int = 0
    billed_today: int = 0
    # Per day, newest first, aligned with per_day: (billed, round trips, commands sent).
    redis_per_day: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return any(self.totals.values()) or self.commands > 0 or self.billed > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "title": self.title,
            "enabled": self.enabled,
            "days": self.days,
            "redis_available": self.redis_available,
            "totals": self.totals,
            "today": self.today,
            "billed": self.billed,
            "billed_today": self.billed_today,
            "round_trips": self.round_trips,
            "commands": self.commands,
            "mongo_ops": self.mongo_ops,
            "figures": [asdict(f) for f in self.figures],
            "filters": self.filters,
            "notes": self.notes,
            "per_day": [
                {"day": d.isoformat(), **counts, "billed": b, "round_trips": rt, "commands": c}
                for (d, counts), (b, rt, c) in zip(self.per_day, self.redis_per_day, strict=True)
            ],
            "sections": [
                {"title": s.title, "columns": s.columns, "rows": s.rows, "note": s.note} for s in self.sections
            ],
        }


def feature_summary(feature: str, days: int | None = None, filters: dict[str, str] | None = None) -> FeatureSummary:
    """Per-day event counts for ``feature`` from the meter, derived figures, and its detail sections.

    ``filters`` (e.g. ``{"event": "signup"}`` for analytics) go to the detail functions that declare them.
    """
    if feature not in FEATURES:
        msg = f"unknown feature {feature!r}; expected one of {FEATURES}"
        raise ValueError(msg)
    n_days = _meter.report_days(days)
    view = _meter.read(n_days)
    prefix = f"ev:{feature}:"
    per_day: list[tuple[dt.date, dict[str, int]]] = []
    totals: Counter[str] = Counter()
    redis_per_day: list[tuple[int, int, int]] = []
    mongo_ops = 0
    for u in view.meter.days:
        counts = {k[len(prefix) :]: n for k, n in u.fields.items() if k.startswith(prefix) and n}
        per_day.append((_meter.day_of(u.day), counts))
        totals.update(counts)
        redis_per_day.append(
            (u.fields.get(f"billed:{feature}", 0), u.fields.get(f"rt:{feature}", 0), u.fields.get(f"cmd:{feature}", 0))
        )
        mongo_ops += u.fields.get(f"mongo:{feature}", 0)
    known = FEATURE_EVENTS[feature]
    # Per-rule events (allowed:<rule>) go to their own section, not the per-day columns.
    extra = sorted(e for e in totals if e not in known and ":" not in e)
    events = list(known) + extra
    summary = FeatureSummary(
        feature=feature,
        title=FEATURE_TITLES[feature],
        enabled=hotcache_settings.enabled(feature),
        days=n_days,
        redis_available=view.redis_ok,
        redis_note=view.redis_note,
        events=events,
        per_day=[(d, {e: c.get(e, 0) for e in events}) for d, c in per_day],
        totals={e: totals.get(e, 0) for e in events},
        today={e: per_day[0][1].get(e, 0) for e in events},
        commands=sum(c for _, _, c in redis_per_day),
        mongo_ops=mongo_ops,
        figures=[],
        sections=[],
        billed=sum(b for b, _, _ in redis_per_day),
        round_trips=sum(rt for _, rt, _ in redis_per_day),
        billed_today=redis_per_day[0][0] if redis_per_day else 0,
        redis_per_day=redis_per_day,
    )
    derive = _registry.figures_for(feature)
    if derive is not None:
        derive(summary, totals)
    for fn in _registry.details_for(feature):
        try:
            summary.sections.extend(_run_detail(fn, n_days, dict(filters or {}), summary))
        except BackendUnavailable as exc:
            title = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
            summary.sections.append(Section(title, [], note=f"{exc.backend} unavailable: {exc}"))
            log.warning("hotcache: report detail %s for %s unavailable: %s", fn.__name__, feature, exc)
    return summary


def _run_detail(
    fn: _registry.DetailFunction, days: int, filters: dict[str, str], summary: FeatureSummary
) -> list[Section]:
    """``fn(days, **its filters)``; a filter it refuses (InvalidFilter) is dropped with a note and
    ``fn(days)`` runs instead."""
    kwargs = {k: filters[k] for k in _registry.filters_of(fn) if filters.get(k)}
    if kwargs:
        try:
            out = fn(days, **kwargs)
        except _registry.InvalidFilter as exc:
            summary.notes.append(f"Ignored the {exc.name} filter: {exc}")
            summary.filters.pop(exc.name, None)
        else:
            summary.filters.update(kwargs)
            return out
    return fn(days)
