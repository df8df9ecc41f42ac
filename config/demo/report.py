"""Text rendering of a demo result: tables with units, a glossary under each, the headline first, the verdict last.

Each figure is printed once. The last line is the verdict ("PASS: ..." or "FAIL: ..."), so a script can read it
with ``tail -n 1``; ``--json`` carries the same figures (docs/demo.md).
"""

from __future__ import annotations

import textwrap
from http import HTTPStatus
from typing import Any

from config.demo.figures import Figure, render_value
from config.demo.logs import expected_because
from config.demo.runner import DemoResult

__all__ = ["format_report"]

# What each feature row of the Redis/MongoDB tables is: the metering attributes every command to one.
FEATURE_MEANINGS: dict[str, str] = {
    "analytics": "event counters (AnalyticsMiddleware, the track endpoint) and the hourly sync",
    "apikeys": "API key lookups, daily usage counters, the usage sync",
    "demo": "the demo's own work: clearing its keys at start, reading MongoDB to check the syncs' results",
    "meter": "the meter writing its counts to Redis (one EVALSHA per flush)",
    "mfa": "MFA codes: issue, verify, resend cooldown",
    "other": "calls made outside any feature",
    "ratelimit": "the sliding-window check of every matching rule (one EVALSHA per request)",
    "reports": "the admin report pages and the overview reading the meter",
    "status": "INFO and serverStatus calls for the reports' memory and connection gauges",
    "users": "request.user from the user cache, invalidations",
    "workbench": "workbench sessions: save, load, end, the persister",
}

# What each scenario sends (config/demo/<scenario>.py); a scenario passed with --scenarios has no line here.
SCENARIO_MEANINGS: dict[str, str] = {
    "analytics": "browser beacons to POST /hotcache/analytics/track (3% from a broken client)",
    "apikeys": "GET /api/usage/ with API keys: unlimited, limited, revoked, made up, malformed",
    "mfa": "MFA logins: codes issued and typed (typos, replays, resends, an attacker guessing)",
    "pages": "anonymous page views of / from a pool of IPs",
    "ratelimit": "logins and API calls through RateLimitMiddleware (a credential stuffer, a scraper)",
    "reports": "a staff user opening the admin report pages (every 100th request)",
    "users": "logged-in users browsing with session cookies; renames; one account closed halfway",
    "workbench": "workbench sessions opened, edited, ended and abandoned",
}

BASELINES: dict[str, str] = {
    "analytics": "one write per event tracked",
    "apikeys": "one query per API call",
    "mfa": "one operation per code issued or checked",
    "workbench": "one operation per save, load, edit or end",
}


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]], *, indent: str = "  ") -> list[str]:
    """Rows under a header and a rule; numbers right-aligned, text left-aligned."""
    cells = [tuple(render_value(c) if not isinstance(c, str) else c for c in row) for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(header))
    ]
    widths = [max([len(header[i]), *(len(c[i]) for c in cells)]) for i in range(len(header))]

    def line(values: tuple[str, ...]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    out = [line(header), indent + "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells] if cells else [indent + "(none)"]
    return out


def _glossary(entries: list[tuple[str, str]], *, indent: str = "  ") -> list[str]:
    """One line per label ("label: meaning"), wrapped at 110 columns with a hanging indent."""
    out: list[str] = []
    for label, meaning in entries:
        out += textwrap.wrap(f"{label}: {meaning}", width=110, initial_indent=indent, subsequent_indent=indent * 2)
    return out


def _section(title: str) -> list[str]:
    return ["", title, "-" * len(title)]


def _headline(r: DemoResult) -> list[Figure]:
    without, with_hotcache = sum(r.mongo_ops_without_hotcache.values()), sum(r.mongo_ops_with_hotcache.values())
    today = r.redis_billed_today
    budget = f"{100 * today / max(r.daily_budget, 1):.1f}% of the daily budget of {r.daily_budget:,}"
    return [
        Figure(
            "requests",
            "Requests",
            r.requests,
            "requests",
            f"HTTP requests through Django's WSGI handler and the full middleware stack, in {r.seconds:.1f} s "
            f"({r.requests / max(r.seconds, 1e-9):,.0f} requests/s on this machine)",
        ),
        Figure(
            "redis_commands_per_1000_requests",
            "Redis commands per 1,000 requests",
            r.redis_commands_per_1000_requests,
            "commands",
            "every Redis command hotcache sent while serving the requests, per 1,000 requests",
        ),
        Figure(
            "billed_commands_per_1000_requests",
            "Redis billed commands per 1,000 requests",
            r.billed_commands_per_1000_requests,
            "commands",
            "what a per-command provider bills for the same requests: every command the server ran, those inside "
            "scripts included (docs/operations/budgets.md)",
        ),
        Figure(
            "round_trips_per_request",
            "Redis round trips per request",
            r.round_trips_per_request,
            "round trips",
            "network round trips to Redis per request, on average (a pipeline or a script is one)",
        ),
        Figure(
            "mongo_ops_saved",
            "MongoDB operations saved",
            r.mongo_ops_saved,
            "operations",
            f"{without:,} on the path before hotcache minus {with_hotcache:,} with it (table below)",
        ),
        Figure(
            "redis_billed_today",
            "Redis billed commands today",
            today,
            "commands",
            f"the meter's billed count for today under the demo's key prefix, read after the run: {budget} "
            f"(REDIS_DAILY_COMMAND_BUDGET; {r.redis_commands_today:,} commands sent)",
        ),
        Figure(
            "failures",
            "Unexpected failures",
            len(r.failures),
            "failures",
            "5xx, statuses a scenario did not expect, DisallowedHost, outcomes a scenario expected and did not see",
        ),
    ]


def _status_rows(r: DemoResult) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    rows, glossary = [], []
    for code, n in r.statuses.items():
        try:
            phrase = HTTPStatus(int(code)).phrase
        except ValueError:
            phrase = "unknown status"
        rows.append((f"{code} {phrase}", n))
    meanings = {
        200: "served",
        204: "analytics beacon accepted",
        400: "a broken client's analytics beacon (the body names the field)",
        401: "API call with a revoked, made-up or malformed key; a wrong MFA code; the closed account",
        409: "a workbench edit that lost a race (the client retries)",
        429: "rate limit, API key daily limit, MFA resend cooldown or a burnt MFA code (with Retry-After)",
    }
    for code in r.statuses:
        glossary.append((str(code), meanings.get(int(code), "not expected by any scenario (see Failures)")))
    return rows, glossary


def _feature_rows(r: DemoResult) -> list[tuple[Any, ...]]:
    names = sorted(
        set(r.redis_on_request_path)
        | set(r.redis_billed_on_request_path)
        | set(r.redis_sync)
        | set(r.mongo_ops_on_request_path)
        | set(r.mongo_ops_sync)
    )
    return [
        (
            name,
            r.redis_on_request_path.get(name, 0),
            r.redis_billed_on_request_path.get(name, 0),
            r.redis_sync.get(name, 0),
            r.mongo_ops_on_request_path.get(name, 0),
            r.mongo_ops_sync.get(name, 0),
        )
        for name in names
    ]


def _figures_table(figures: list[Figure]) -> list[str]:
    rows = [(f.label, f.text if f.text is not None else f.value, f.unit) for f in figures]
    return [*_table(("Figure", "Value", "Unit"), rows), "", *_glossary([(f.label, f.meaning) for f in figures])]


def format_report(r: DemoResult) -> str:
    settings_line = r.settings_module
    if r.launched_from:
        settings_line += (
            f" (the demo's own;\n            started under {r.launched_from}, whose database it never opens)"
        )
    lines = [
        "hotcache demo report",
        "====================",
        f"  Settings  {settings_line}",
        "  Database  an in-memory SQLite database created for this run (its users are gone when it exits)",
        f"  Redis     {r.redis_backend}, key prefix hcdemo",
        f"  MongoDB   {r.mongo_backend}, database hotcache_demo",
    ]
    lines += _section("Headline")
    lines += _figures_table(_headline(r))

    rows, glossary = _status_rows(r)
    lines += _section("HTTP responses")
    lines += _table(("Status", "Requests"), rows)
    lines += ["", *_glossary(glossary)]
    lines += ["", *_table(("Scenario", "Requests"), list(r.requests_by_scenario.items()))]
    lines += ["", *_glossary([(name, SCENARIO_MEANINGS.get(name, "a scenario given with --scenarios"))
                              for name in r.requests_by_scenario])]  # fmt: skip

    lines += _section("Redis commands and MongoDB operations by feature")
    feature_rows = _feature_rows(r)
    lines += _table(
        ("Feature", "Redis, requests", "Billed, requests", "Redis, syncs", "MongoDB, requests", "MongoDB, syncs"),
        feature_rows,
    )
    lines += [
        "",
        *_glossary(
            [
                ("Redis, requests", "Redis commands sent while serving the requests (commands)"),
                (
                    "Billed, requests",
                    "of those, what the server ran and a per-command provider bills, commands "
                    "inside scripts included, free ones (PING, INFO, ...) not (commands)",
                ),
                ("Redis, syncs", "Redis commands sent by the syncs and the persister after the traffic (commands)"),
                (
                    "MongoDB, requests / syncs",
                    "MongoDB operations in the same two phases (operations); with Redis "
                    "up, the request path reads MongoDB only for first loads of API keys, durable workbench copies "
                    "(WORKBENCH_DURABLE_SAVES) and the admin report pages",
                ),
            ]
        ),
        *_glossary([(row[0], FEATURE_MEANINGS.get(row[0], "a feature of this run")) for row in feature_rows]),
        f"  Round trips on the request path: {r.redis_round_trips_on_request_path:,} round trips in all.",
    ]

    lines += _section("MongoDB operations saved")
    saved_rows = [
        (
            name,
            without,
            r.mongo_ops_with_hotcache.get(name, 0),
            without - r.mongo_ops_with_hotcache.get(name, 0),
            BASELINES.get(name, ""),
        )
        for name, without in r.mongo_ops_without_hotcache.items()
    ]
    lines += _table(("Feature", "Without hotcache", "With hotcache", "Saved", "Without hotcache means"), saved_rows)
    lines += [
        "",
        "  Without hotcache: MongoDB operations the same traffic costs on the path the background document",
        "  describes before hotcache (operations). With hotcache: MongoDB operations measured in this run, request",
        "  path and syncs (operations). Rate limiting had no MongoDB before (an in-memory map); the user cache",
        "  saves queries on the user table instead (see Users).",
    ]

    lines += _section("Health gate")
    health = r.health
    lines += _figures_table(
        [
            Figure("state", "State", health["state"], "", "closed: Redis answering; open: calls skipped for a while"),
            Figure("opens", "Opened", health["opens"], "times", "how often failures opened the gate"),
            Figure("recoveries", "Recovered", health["recoveries"], "times", "how often a probe closed it again"),
            Figure(
                "calls_skipped_while_open",
                "Calls skipped while open",
                health["calls_skipped_while_open"],
                "calls",
                "Redis calls not attempted while the gate was open (their fallbacks ran)",
            ),
            Figure(
                "fallbacks",
                "Fallbacks used",
                health["fallbacks"],
                "calls",
                "feature calls served by their fallback (MongoDB or the database) instead of Redis, by feature",
                text=", ".join(
                    f"{k.replace(':fallback', '').replace(':', ' ')} {v:,}"
                    for k, v in sorted(health["fallbacks"].items())
                )
                or "none",
            ),
        ]
    )

    for name, figures in r.features.items():
        lines += _section(f"Feature: {name}")
        lines += _figures_table(figures)

    lines += _section("Logged during the run (kept off the console)")
    lines += _table(
        ("Logger", "Level", "Records", "First message"),
        [(rec.logger, rec.level, rec.count, rec.message[:100]) for rec in r.logged],
    )
    lines += [
        "",
        "  Records: how many records of that kind were logged (Django's request log grouped by kind, without the",
        '  path). Django logs every 4xx as a warning ("Unauthorized: /api/usage/"); the scenarios expect those.',
        "  Any other error is a failure, listed under Failures"
        + (", except:" if any(expected_because(rec) for rec in r.logged) else "."),
        *(f"  - {rec.logger}: {why}" for rec in r.logged if rec.is_error and (why := expected_because(rec))),
    ]

    lines += _section("Failures")
    lines += [f"  - {f}" for f in r.failures] or ["  none"]
    lines += ["", r.verdict]
    return "\n".join(lines) + "\n"
