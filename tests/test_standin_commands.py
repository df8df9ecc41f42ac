"""Commands that write durable data refuse the in-process MongoDB stand-in when they run as their own process.

A ``manage.py`` run is a process of its own: what it wrote to ``mongomock://`` would vanish when it exits.
The same commands called in-process (``call_command``, as the tests and the demo do) keep running, and a
real MongoDB is accepted from the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from hotcache import apikeys

ROOT = Path(__file__).resolve().parents[1]

WRITING = [
    ("apikeys create alice", "manage.py apikeys create refused", "the new key"),
    ("apikeys revoke ak_0123456789abcdef", "manage.py apikeys revoke refused", "the revocation"),
    ("sync_analytics --include-current-hour", "manage.py sync_analytics refused", "the counters it moves"),
    ("persist_workbench", "manage.py persist_workbench refused", "the sessions it moves"),
    ("sync_apikey_usage --days 7", "manage.py sync_apikey_usage refused", "the usage history"),
]
READING = ["apikeys list", "sync_analytics --dry-run", "hotcache_check"]


def _manage(command: str, settings_module: str = "config.settings.test", **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    environ.update(DJANGO_SETTINGS_MODULE=settings_module, **env)
    return subprocess.run(
        [sys.executable, "manage.py", *command.split()],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("command", "refused", "lost"), WRITING, ids=[c for c, _, _ in WRITING])
def test_a_writing_command_run_from_the_command_line_refuses_the_stand_in(command, refused, lost):
    done = _manage(command)  # config.settings.test: MONGO_URL = "mongomock://hotcache_test"
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr
    assert f"CommandError: {refused}: HOTCACHE['MONGO_URL'] is 'mongomock://hotcache_test'" in message
    assert lost in message and "would vanish when the command exits" in message
    assert "the web process (runserver, gunicorn) and the workers would never see it" in message
    assert "mongodb://127.0.0.1:27017/<database>" in message and "mongodb+srv://" in message
    assert "Traceback" not in message


def test_reading_commands_still_run_from_the_command_line_against_the_stand_in():
    for command in READING:
        done = _manage(command)
        assert done.returncode == 0 and "refused" not in done.stderr, (command, done.stderr)


def test_the_same_commands_run_in_process_where_the_stand_in_keeps_their_data():
    out = StringIO()
    call_command("apikeys", "create", "alice", stdout=out)
    key_id = out.getvalue().split("key_id:")[1].split()[0]
    assert apikeys.get(key_id) is not None  # the key is in this process's stand-in, where it is read
    call_command("apikeys", "revoke", key_id, stdout=StringIO())
    for command in ("sync_analytics", "persist_workbench", "sync_apikey_usage"):
        call_command(command, stdout=StringIO())


def test_a_real_mongodb_is_accepted_from_the_command_line_and_seen_by_another_process(real_mongo, tmp_path):
    (tmp_path / "real_mongo_settings.py").write_text(
        "import os\n"
        "from config.settings.test import *  # noqa: F403\n"
        "HOTCACHE = {**HOTCACHE, 'MONGO_URL': os.environ['MONGO_URL'], 'MONGO_DATABASE': os.environ['MONGO_DB']}\n"
    )
    done = _manage(
        "apikeys create dave --name from-cron",
        "real_mongo_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
        MONGO_URL=real_mongo.url,
        MONGO_DB=real_mongo.database,
    )
    assert done.returncode == 0, done.stderr
    key_id = done.stdout.split("key_id:")[1].split()[0]
    made = apikeys.get(key_id)  # this test process reads the same server
    assert made is not None and made.owner == "dave" and made.name == "from-cron"
