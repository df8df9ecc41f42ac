"""manage.py apikeys create|revoke|list|usage: API keys for operators (create prints the raw key once)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from hotcache.apikeys import KeyNotFound, commands
from hotcache.management.durable import DurableWriteCommand

# What each writing action would lose against the in-process stand-in (list and usage only read).
_WRITES = {
    "create": "the new key",
    "revoke": "the revocation",
}


class Command(DurableWriteCommand):
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
        if action in _WRITES:
            self.require_shared_store(f"apikeys {action}", _WRITES[action])
        try:
            lines = commands.run(action, options)
        except (KeyNotFound, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        for line in lines:
            self.stdout.write(line)
