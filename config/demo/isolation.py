"""The demo runs only under its own settings: started under any other, it runs itself again in a subprocess.

Why a subprocess rather than a refusal: manage.py's default settings (config.settings.demo) are the
project's development settings, with a real database file that ``runserver`` and ``apikeys`` use; a
refusal there would make the README's ``manage.py hotcache_demo`` fail. Why not switch in-process: the
caller's settings have already configured Django (database connections, caches, logging, the app
registry) and no in-process override undoes that reliably. A fresh interpreter started with
``DJANGO_SETTINGS_MODULE=config.settings.demo_isolated`` never imports the caller's settings at all, so
the process that sends the demo's traffic cannot reach the caller's database, users or logging, whichever
project's settings the command was started under. The parent only waits and passes the exit status on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from django.conf import settings

__all__ = ["DEMO_DATABASE_NAME", "DEMO_SETTINGS", "LAUNCHED_FROM_ENV", "is_isolated", "launched_from", "run_isolated"]

DEMO_SETTINGS = "config.settings.demo_isolated"
# Shared-cache in-memory SQLite, the database the demo's settings give it (see config/settings/demo_isolated.py).
DEMO_DATABASE_NAME = "file:hotcache_demo_db?mode=memory&cache=shared"
LAUNCHED_FROM_ENV = "HOTCACHE_DEMO_LAUNCHED_FROM"  # the settings module the parent ran under, for the report
_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent  # the directory holding config/


def is_isolated() -> bool:
    """Whether this process runs under the demo's own settings, with the throwaway database they create."""
    db = settings.DATABASES.get("default", {})
    return (
        getattr(settings, "SETTINGS_MODULE", None) == DEMO_SETTINGS
        and db.get("NAME") == DEMO_DATABASE_NAME
        and len(settings.DATABASES) == 1
    )


def launched_from() -> str:
    """The settings module hotcache_demo was started under, when it switched to its own ('' if it did not)."""
    return os.environ.get(LAUNCHED_FROM_ENV, "")


def run_isolated(args: list[str], *, stdout: IO[str] | None, stderr: IO[str] | None) -> int:
    """Run ``manage.py hotcache_demo <args>`` under the demo's settings in a new interpreter; its exit status.

    ``stdout``/``stderr`` None: the child writes straight to this process's (so the progress bar sees the
    terminal). Otherwise its output is captured and written there (call_command with a StringIO).
    """
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = DEMO_SETTINGS
    env[LAUNCHED_FROM_ENV] = str(getattr(settings, "SETTINGS_MODULE", "") or "unknown")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "django", "hotcache_demo", *args]
    proc = subprocess.run(  # noqa: S603 (this interpreter, this command, arguments the parent parsed)
        cmd,
        env=env,
        cwd=_PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=None if stdout is None else subprocess.PIPE,
        stderr=None if stderr is None else subprocess.PIPE,
        text=True,
        check=False,
    )
    if stdout is not None and proc.stdout:
        stdout.write(proc.stdout)
    if stderr is not None and proc.stderr:
        stderr.write(proc.stderr)
    return proc.returncode
