"""manage.py apikeys create|revoke|list|usage: API keys for operators (create prints the raw key once)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hotcache import apikeys, clock


class Command(BaseCommand):
    help = "Create, revoke, list API keys and show their daily usage."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="make a key; its raw value is printed once")
        create.add_argument("owner")
        create.add_argument("--name", default="")
        create.add_argument("--daily-limit", type=int, default=None)
        create.add_argument("--expires-in-days", type=int, default=None)
        revoke = sub.add_parser("revoke", help="revoke a key (effective on its next call)")
        revoke.add_argument("key_id")
        listing = sub.add_parser("list", help="keys with today's use")
        listing.add_argument("--owner", default=None)
        listing.add_argument("--json", action="store_true")
        use = sub.add_parser("usage", help="uses per UTC day, newest first")
        use.add_argument("key_id")
        use.add_argument("--days", type=int, default=30)
        use.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            getattr(self, f"_{action}")(options)
        except apikeys.KeyNotFound as exc:
            raise CommandError(str(exc)) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    def _create(self, options: dict[str, Any]) -> None:
        expires = None
        if options["expires_in_days"] is not None:
            if options["expires_in_days"] < 1:
                raise CommandError("--expires-in-days must be at least 1")
            expires = clock.utcnow() + dt.timedelta(days=options["expires_in_days"])
        new = apikeys.create(
            options["owner"], name=options["name"], daily_limit=options["daily_limit"], expires_at=expires
        )
        self.stdout.write(f"key_id:  {new.key_id}")
        self.stdout.write(f"api key: {new.raw_key}")
        self.stdout.write("Store the key now: hotcache keeps only its SHA-256 and cannot show it again.")

    def _revoke(self, options: dict[str, Any]) -> None:
        if apikeys.revoke(options["key_id"]):
            self.stdout.write(f"revoked {options['key_id']}")
        else:
            self.stdout.write(f"{options['key_id']} was already revoked")

    def _list(self, options: dict[str, Any]) -> None:
        keys = apikeys.list_keys(options["owner"])
        if options["json"]:
            rows = [
                {f: (v.isoformat() if isinstance(v, dt.datetime) else v) for f, v in _fields(k).items()} for k in keys
            ]
            self.stdout.write(json.dumps(rows, indent=2))
            return
        self.stdout.write(f"{'key_id':22} {'prefix':8} {'owner':16} {'limit':>7} {'today':>7}  status  name")
        for k in keys:
            status = "revoked" if k.revoked_at else ("expired" if k.expires_at and k.expires_at <= clock.utcnow()
                                                    else "active")
            limit = "-" if k.daily_limit is None else str(k.daily_limit)
            self.stdout.write(
                f"{k.key_id:22} {k.prefix:8} {k.owner[:16]:16} {limit:>7} {k.used_today:>7}  {status:7} {k.name}"
            )

    def _usage(self, options: dict[str, Any]) -> None:
        rows = apikeys.usage(options["key_id"], days=options["days"])
        if options["json"]:
            self.stdout.write(json.dumps([[d.isoformat(), n] for d, n in rows]))
            return
        for day, n in rows:
            self.stdout.write(f"{day.isoformat()}  {n}")


def _fields(info: apikeys.KeyInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in info.__slots__}
