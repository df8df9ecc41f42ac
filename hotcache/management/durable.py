"""DurableWriteCommand: the base of the commands that write durable data, which refuse the in-process stand-in.

A command run by ``manage.py`` / ``django-admin`` is a process of its own. Against the stand-in
(``mongomock://``) what it writes lives in that process only and vanishes when it exits: the web process never
sees the key it made, and the counters or sessions a sync moved out of Redis are gone for good. So such a run
is refused with a CommandError (exit 1) that names the fix. The same command called with ``call_command()``
inside a process that keeps the stand-in (tests, the demo, a shell session) writes where that process reads,
so it runs. Django runs a command from the command line through ``run_from_argv`` and from ``call_command``
through ``execute`` only: that is how the two are told apart. Dry runs write nothing and are never refused.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from hotcache.backends import mongo
from hotcache.conf import hotcache_settings

__all__ = ["DurableWriteCommand", "refusal"]


def refusal(command: str, what: str) -> str:
    """The message of a refused run: why (the stand-in lives in this process only) and what to set instead."""
    return (
        f"manage.py {command} refused: HOTCACHE['MONGO_URL'] is {str(hotcache_settings.MONGO_URL)!r}, the "
        f"in-process MongoDB stand-in. It lives in this command's process only: {what} would vanish when the "
        "command exits, and the web process (runserver, gunicorn) and the workers would never see it. "
        "Set HOTCACHE['MONGO_URL'] to a real MongoDB: mongodb://127.0.0.1:27017/<database> (a local mongod) or "
        "mongodb+srv://<user>:<password>@<cluster>.mongodb.net/<database> (Atlas). The stand-in is for tests "
        "and the demo, which call the command with call_command() in the process that keeps the data."
    )


class DurableWriteCommand(BaseCommand):
    """A command whose writes other processes must see: call ``require_shared_store()`` before writing."""

    standalone = False  # True when run as its own process (manage.py / django-admin), not by call_command()

    def run_from_argv(self, argv: list[str]) -> None:
        self.standalone = True
        super().run_from_argv(argv)

    def require_shared_store(self, command: str, what: str) -> None:
        """Refuse (CommandError) a standalone run whose writes would go to the in-process stand-in."""
        if self.standalone and mongo.is_process_local():
            raise CommandError(refusal(command, what))
