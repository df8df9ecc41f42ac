"""The API keys page: requests allowed and over their limit, keys created and revoked (from the meter);
keys by use today, keys near or at their daily limit, revoked and expired keys, and uses per day of the
busiest keys (from hotcache.apikeys). See docs/reports.md#api-keys-page."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING, Any

from hotcache import clock
from hotcache.reports import _meter
from hotcache.reports._figures import Chart, Figure, Section, ratio
from hotcache.reports._registry import register_detail, register_figures

if TYPE_CHECKING:
    from hotcache.reports._summary import FeatureSummary

__all__ = ["APIKEYS_DAILY", "APIKEYS_READ", "APIKEYS_SHOWN"]

# Cost: apikeys.list_keys(limit=APIKEYS_READ) (2 MongoDB queries, 1 Redis round trip of one GET per key
# read: at most APIKEYS_READ, never growing with traffic) and apikeys.usage_many() for the APIKEYS_DAILY
# busiest keys (2 MongoDB queries, 1 Redis round trip of APIKEYS_DAILY x days GETs).
APIKEYS_SHOWN = 50  # keys listed (the most used today)
APIKEYS_READ = 1000  # keys read for the page, newest first: bounds its Redis GETs
APIKEYS_DAILY = 8  # keys charted per day (one colour each)


@register_figures("apikeys")
def _figures(s: FeatureSummary, totals: Counter[str]) -> None:
    allowed, over = totals["allowed"], totals["over_limit"]
    s.figures += [
        Figure("Requests allowed", allowed),
        Figure("Over their limit", over),
        Figure("Over-limit share", ratio(over, allowed + over)),
        Figure("Invalid keys presented", totals["invalid"]),
        Figure("Keys created", totals["created"]),
        Figure("Keys revoked", totals["revoked"]),
        Figure("Fallbacks", totals["fallback"]),
    ]


def _key_label(info: Any) -> str:
    return f"{info.prefix} {info.name}".strip()


def _busiest(days: list[tuple[dt.date, int]]) -> str:
    day, n = max(days, key=lambda dn: (dn[1], dn[0]))
    return day.isoformat() if n else ""


@register_detail("apikeys")
def _apikeys_detail(days: int) -> list[Section]:
    """API keys in MongoDB"""
    from hotcache import apikeys

    infos = apikeys.list_keys(limit=APIKEYS_READ)
    now = clock.utcnow()
    warn = _meter.warning_percent()

    def status(k: Any) -> str:
        if k.revoked_at is not None:
            return "revoked"
        if k.expires_at is not None and k.expires_at <= now:
            return "expired"
        if k.daily_limit and k.used_today >= k.daily_limit:
            return "at limit"
        if k.daily_limit and 100.0 * k.used_today / k.daily_limit >= warn:
            return "near limit"
        return "active"

    ranked = sorted(infos, key=lambda k: (-k.used_today, -k.created_at.timestamp(), k.key_id))
    shown = ranked[:APIKEYS_SHOWN]
    if len(infos) >= APIKEYS_READ:
        cap_note = f"Showing {len(shown)} of the {APIKEYS_READ:,} newest keys (the most used today among them)."
    elif len(infos) > len(shown):
        cap_note = f"Showing {len(shown)} of {len(infos)} keys (the most used today)."
    else:
        cap_note = ""
    rows = [
        [
            k.prefix,
            k.name,
            k.owner,
            f"{k.daily_limit:,}" if k.daily_limit else "none",
            k.used_today,
            ratio(k.used_today, k.daily_limit) if k.daily_limit else "",
            status(k),
        ]
        for k in shown
    ]
    near = [k for k in ranked if status(k) in ("at limit", "near limit")][:APIKEYS_SHOWN]
    gone = sorted(
        (k for k in infos if status(k) in ("revoked", "expired")),
        key=lambda k: k.revoked_at or k.expires_at or now,
        reverse=True,
    )[:APIKEYS_SHOWN]
    sections = [
        Section(
            "Keys by use today",
            ["Key", "Name", "Owner", "Daily limit", "Used today", "Of limit", "Status"],
            rows,
            note=cap_note,
            empty="No API keys yet.",
        ),
        Section(
            "Near or at their daily limit today",
            ["Key", "Name", "Owner", "Used today", "Daily limit", "Of limit", "Status"],
            [[k.prefix, k.name, k.owner, k.used_today, k.daily_limit, ratio(k.used_today, k.daily_limit or 0),
              status(k)] for k in near],
            note=f"Active keys at {warn:g}% (HOTCACHE['REPORTS_WARNING_PERCENT']) of their daily limit or more; "
            "requests refused over the limit are counted as over_limit above.",
            empty="No key is near its daily limit.",
        ),
        Section(
            "Revoked and expired keys",
            ["Key", "Name", "Owner", "Status", "Since (UTC)"],
            [[k.prefix, k.name, k.owner, status(k),
              (k.revoked_at or k.expires_at or now).strftime("%Y-%m-%d %H:%M")] for k in gone],
            empty="No revoked or expired keys.",
        ),
    ]
    busiest = shown[:APIKEYS_DAILY]
    per_key = apikeys.usage_many([k.key_id for k in busiest], days) if busiest else {}
    charted = [k for k in busiest if k.key_id in per_key]
    day_list = [d for d, _ in per_key[charted[0].key_id]][::-1] if charted else []
    series = [(_key_label(k), [n for _, n in per_key[k.key_id]][::-1]) for k in charted]
    daily_rows = [
        [_key_label(k), k.owner, sum(n for _, n in per_key[k.key_id]),
         _busiest(per_key[k.key_id])]
        for k in charted
    ]
    sections.append(
        Section(
            f"Uses per day, last {days} days",
            ["Key", "Owner", f"Uses in {days} days", "Busiest day"],
            daily_rows,
            chart=Chart(
                f"Uses per day of the {len(charted)} keys most used today",
                [d.strftime("%m-%d") for d in day_list],
                series,
                time_series=True,
            )
            if charted
            else None,
            note=f"The {APIKEYS_DAILY} keys most used today; the table beside the chart has each key's count per day."
            if charted
            else "",
            empty="No API keys yet.",
        )
    )
    return sections
