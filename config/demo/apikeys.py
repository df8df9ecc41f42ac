"""API keys in the demo: calls with several keys (some run past their daily limit, one revoked, some made up)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario, one_op_per_request
from hotcache import apikeys

__all__ = ["scenario"]

NAME = "apikeys"
_PATH = "/api/usage/"
# label -> (share of the API calls, daily limit as a share of the expected API calls; None = unlimited)
_KEYS: dict[str, tuple[float, float | None]] = {
    "acme (unlimited)": (0.35, None),
    "startup": (0.25, 0.10),
    "hobby": (0.15, 0.03),
    "trial": (0.10, 0.01),
    "revoked": (0.05, None),
    "made-up key": (0.05, None),
    "malformed header": (0.05, None),
}


def _setup(ctx: DemoContext) -> None:
    expected = max(1, ctx.total_requests // 2)  # the runner mixes this scenario with the others
    data: dict[str, Any] = {"keys": {}, "statuses": {label: Counter() for label in _KEYS}}
    for label, (_, share) in _KEYS.items():
        if label in ("made-up key", "malformed header"):
            continue
        limit = None if share is None else max(2, int(expected * share))
        new = apikeys.create(f"demo-{label.split()[0]}", name=label, daily_limit=limit)
        data["keys"][label] = new
    apikeys.revoke(data["keys"]["revoked"].key_id)
    ctx.data[NAME] = data


def _request(ctx: DemoContext, i: int) -> DemoRequest:
    labels = list(_KEYS)
    label = ctx.rng.choices(labels, weights=[_KEYS[k][0] for k in labels])[0]
    new = ctx.data[NAME]["keys"].get(label)
    if label == "made-up key":
        headers = {"HTTP_X_API_KEY": "zzzzzzzz." + "".join(ctx.rng.choices("ABCDEFGH", k=43))}
    elif label == "malformed header":
        headers = {"HTTP_AUTHORIZATION": ctx.rng.choice(["Api-Key ", "Api-Key  x", "Api-Key " + "k" * 10_240])}
    elif ctx.rng.random() < 0.5:
        headers = {"HTTP_AUTHORIZATION": f"Api-Key {new.raw_key}"}
    else:
        headers = {"HTTP_X_API_KEY": new.raw_key}
    return DemoRequest("GET", _PATH, headers=headers, tag=label)


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    ctx.data[NAME]["statuses"][req.tag][resp.status] += 1


def _finish(ctx: DemoContext) -> list[Figure]:
    result = apikeys.sync_usage()
    return [
        Figure(
            "usage_sync_written",
            "Usage sync: totals written",
            result.written,
            "(key, day) totals",
            "the usage sync's writes to MongoDB: one per key and day, not one per call",
        ),
        Figure(
            "usage_sync_redis_available",
            "Usage sync: Redis available",
            result.redis_available,
            "",
            "whether the sync could read the counters from Redis",
        ),
    ]


def _slug(label: str) -> str:
    return label.split(" (")[0].replace("-", "_").replace(" ", "_")


def _report(ctx: DemoContext) -> list[Figure]:
    data = ctx.data[NAME]
    used = {k.key_id: k for k in apikeys.list_keys()}
    figures: list[Figure] = []
    for label in _KEYS:
        statuses = {str(code): n for code, n in sorted(data["statuses"][label].items())}
        seen = ", ".join(f"{code} x{n:,}" for code, n in statuses.items()) or "no calls"
        new = data["keys"].get(label)
        if new is None:
            figures.append(
                Figure(
                    _slug(label),
                    f"Calls with a {label}",
                    {"responses": statuses},
                    "calls",
                    f"calls with a {label} (must be refused with 401)",
                    text=f"answered {seen}",
                )
            )
            continue
        info = used[new.key_id]
        limit = "no daily limit" if info.daily_limit is None else f"daily limit {info.daily_limit:,}"
        meaning = {
            "revoked": "a key revoked before the run: every call must be refused with 401",
        }.get(label, f"a key with {limit}: calls past the limit are refused with 429")
        figures.append(
            Figure(
                f"key_{_slug(label)}",
                f"Key '{label}' ({info.prefix})",
                {
                    "prefix": info.prefix,
                    "used_today": info.used_today,
                    "daily_limit": info.daily_limit,
                    "responses": statuses,
                },
                "calls",
                meaning,
                text=f"{info.used_today:,} used today ({limit}); answered {seen}",
            )
        )
    return figures


def _verify(ctx: DemoContext) -> list[str]:
    problems = []
    statuses = ctx.data[NAME]["statuses"]
    for label in ("revoked", "made-up key", "malformed header"):
        accepted = statuses[label][200]
        if accepted:
            problems.append(f"{accepted} call(s) with a {label} were accepted")
    return problems


def scenario() -> Scenario:
    return Scenario(
        name=NAME,
        make_request=_request,
        expected_statuses=frozenset({200, 401, 429}),  # 401: revoked, made up, malformed; 429: over the limit
        weight=1.0,
        setup=_setup,
        on_response=_on_response,
        finish=_finish,
        report=_report,
        verify=_verify,
        # The "before" path: a MongoDB query on every API call (to find the key and count its use).
        mongo_ops_without_hotcache=one_op_per_request(NAME),
    )
