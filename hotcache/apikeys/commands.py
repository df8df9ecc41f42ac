"""The services behind ``manage.py apikeys create|revoke|list|usage``: each returns the lines to print.

Errors are raised, not printed: KeyNotFound for an unknown id, ValueError for a bad argument (the command
turns both into CommandError). See docs/apikeys.md ("Command").
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from hotcache import clock
from hotcache.apikeys._lifecycle import create, revoke
from hotcache.apikeys._reads import list_keys, usage
from hotcache.apikeys._results import KeyInfo

__all__ = ["create_key", "list_report", "revoke_key", "run", "usage_report"]


def run(action: str, options: Mapping[str, Any]) -> list[str]:
    """The lines ``manage.py apikeys <action>`` prints, given its parsed options."""
    if action == "create":
        return create_key(
            options["owner"], name=options["name"], daily_limit=options["daily_limit"],
            expires_in_days=options["expires_in_days"],
        )
    if action == "revoke":
        return revoke_key(options["key_id"])
    if action == "list":
        return list_report(options["owner"], as_json=options["json"])
    if action == "usage":
        return usage_report(options["key_id"], days=options["days"], as_json=options["json"])
    msg = f"unknown action {action!r}"
    raise ValueError(msg)


def create_key(
    owner: str, *, name: str = "", daily_limit: int | None = None, expires_in_days: int | None = None
) -> list[str]:
    expires = None
    if expires_in_days is not None:
        if expires_in_days < 1:
            msg = "--expires-in-days must be at least 1"
            raise ValueError(msg)
        expires = clock.utcnow() + dt.timedelta(days=expires_in_days)
    new = create(owner, name=name, daily_limit=daily_limit, expires_at=expires)
    return [
        f"key_id:  {new.key_id}",
        f"api key: {new.raw_key}",
        "Store the key now: hotcache keeps only its SHA-256 and cannot show it again.",
    ]


def revoke_key(key_id: str) -> list[str]:
    if revoke(key_id):
        return [f"revoked {key_id}"]
    return [f"{key_id} was already revoked"]


def list_report(owner: str | None = None, *, as_json: bool = False) -> list[str]:
    """Keys with today's use: a JSON array, or a table showing each key's prefix (never the key)."""
    infos = list_keys(owner)
    if as_json:
        rows = [
            {f: (v.isoformat() if isinstance(v, dt.datetime) else v) for f, v in _fields(k).items()} for k in infos
        ]
        return [json.dumps(rows, indent=2)]
    lines = [f"{'key_id':22} {'prefix':8} {'owner':16} {'limit':>7} {'today':>7}  status  name"]
    for k in infos:
        status = "revoked" if k.revoked_at else ("expired" if k.expires_at and k.expires_at <= clock.utcnow()
                                                else "active")
        limit = "-" if k.daily_limit is None else str(k.daily_limit)
        lines.append(f"{k.key_id:22} {k.prefix:8} {k.owner[:16]:16} {limit:>7} {k.used_today:>7}  {status:7} {k.name}")
    return lines


def usage_report(key_id: str, *, days: int = 30, as_json: bool = False) -> list[str]:
    """Uses per UTC day, newest first."""
    rows = usage(key_id, days=days)
    if as_json:
        return [json.dumps([[d.isoformat(), n] for d, n in rows])]
    return [f"{day.isoformat()}  {n}" for day, n in rows]


def _fields(info: KeyInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in info.__slots__}
