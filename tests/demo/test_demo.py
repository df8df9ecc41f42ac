"""manage.py hotcache_demo as a newcomer runs it: in a real process, from the repository, with no environment.

Every run here is a subprocess (``python manage.py hotcache_demo``): the demo runs only under its own
settings, so these tests see exactly what a terminal would (exit status, stdout, stderr).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

from tests.demo.failing import LOGGED_ERROR, NEVER_HAPPENED

ROOT = Path(__file__).resolve().parents[2]

# Django's request log ("Unauthorized: /api/usage/") and hotcache's log lines: never on the demo's console.
REQUEST_LOG = re.compile(
    r"^(Unauthorized|Too Many Requests|Bad Request|Forbidden|Not Found|Conflict|Internal Server Error"
    r"|Service Unavailable|Invalid HTTP_HOST header)\b|^hotcache[ :.]",
    re.MULTILINE,
)

# The --json keys (docs/demo.md documents each). Adding a key is a documented change: update both.
TOP_LEVEL_KEYS = {
    "requests", "seconds", "statuses", "requests_by_scenario",
    "redis_on_request_path", "redis_billed_on_request_path", "redis_round_trips_on_request_path", "redis_sync",
    "redis_commands_per_1000_requests", "billed_commands_per_1000_requests", "round_trips_per_request",
    "mongo_ops_on_request_path", "mongo_ops_sync",
    "mongo_ops_without_hotcache", "mongo_ops_with_hotcache", "mongo_ops_saved",
    "redis_commands_today", "redis_billed_today", "daily_budget", "health", "features",
    "redis_backend", "mongo_backend", "settings_module", "launched_from",
    "logged", "failures", "passed", "verdict",
}  # fmt: skip
FEATURE_KEYS = {
    "ratelimit": {
        "rules", "requests_allowed", "requests_denied", "denied_by_local_deny_cache", "degraded_decisions",
        "responses", "429s_by_first_denying_rule", "retry_after_min_max",
    },
    "users": {
        "logged_in_users", "authenticated_views", "cache_hits", "cache_misses", "fallbacks", "invalidations",
        "user_selects", "renames", "deactivated", "stale_names", "wrong_login_state",
    },
    "mfa": {
        "issued", "verified", "failed", "resend_blocked", "issue_unavailable", "typos_rejected",
        "replays_rejected", "replays_accepted", "attacker_guesses", "attacker_successes",
    },
    "apikeys": {
        "usage_sync_written", "usage_sync_redis_available", "key_acme", "key_startup", "key_hobby", "key_trial",
        "key_revoked", "made_up_key", "malformed_header",
    },
    "workbench": {
        "persist_run_1", "persist_run_2_moved", "history_records", "history_duplicates",
        "ended_or_abandoned_missing_from_history", "open_sessions_still_hot", "open_sessions_wrongly_in_history",
        "sessions_opened", "edits", "edit_conflicts_409", "errors", "ended", "abandoned", "still_open",
    },
    "analytics": {
        "events_tracked", "beacons_accepted", "beacons_rejected_400", "page_views_by_middleware", "via_redis",
        "via_fallback_buffer", "dropped", "sync_counters_moved", "sync_error", "mongo_total_equals_events",
        "mongo_event_total",
    },
    "reports": {
        "report_pages", "overview_redis_commands", "overview_round_trips", "redis_memory",
        "mongo_server_connections", "redis_available", "exceeded",
    },
}  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that configures the host project (as on a fresh machine)."""
    dropped = {"DJANGO_SETTINGS_MODULE", "REDIS_URL", "MONGO_URL", "DJANGO_DB_PATH", "DJANGO_ALLOWED_HOSTS",
               "DJANGO_DEBUG", "CELERY_BROKER_URL", "HOTCACHE_DAILY_BUDGET", "HOTCACHE_DEMO_LAUNCHED_FROM"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        check=False, **kwargs,
    )  # fmt: skip


def readme_demo_commands() -> list[list[str]]:
    """The README's first command ("Two commands"), split at '&&', from the first step that runs manage.py."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Two commands.*?```sh\n(.*?)\n```", readme, re.DOTALL)
    assert block, "README.md has no '## Two commands' section with a sh block"
    steps = [step.split() for step in block.group(1).split("&&")]
    runs = [step for step in steps if "manage.py" in step]
    assert runs and all(step[0] == ".venv/bin/python" for step in runs), steps
    return [[sys.executable, *step[1:]] for step in runs]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def json_run() -> dict[str, Any]:
    """One --json run of 200 requests under manage.py's default settings, shared by the key and figure tests."""
    proc = manage("hotcache_demo", "--requests", "200", "--json", env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == ""
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_the_readme_demo_from_a_fresh_clone_is_quiet_and_ends_with_its_verdict(tmp_path: Path) -> None:
    # A fresh clone has no database file: DJANGO_DB_PATH names one that must still not exist afterwards.
    db = tmp_path / "db.sqlite3"
    env = clean_env(DJANGO_DB_PATH=str(db))
    for cmd in readme_demo_commands():
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert cmd[1:] == ["manage.py", "hotcache_demo"]
    assert not REQUEST_LOG.findall(proc.stderr)
    assert proc.stderr == ""  # no request log, no hotcache warning, no progress bar (stderr is not a terminal)
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[-1].startswith("PASS: 2,000 requests, 0 unexpected failures, "), lines[-1]
    assert "billed) per 1,000 requests" in lines[-1] and "MongoDB operations saved" in lines[-1]
    assert not db.exists()  # the database manage.py's settings name was never opened
    report = proc.stdout
    # The headline comes first, each figure of it once, and the day's command count is printed once.
    headline = report[report.index("Headline") : report.index("HTTP responses")]
    for label in ("Requests", "Redis commands per 1,000 requests", "Redis billed commands per 1,000 requests",
                  "Redis round trips per request", "MongoDB operations saved", "Redis billed commands today",
                  "Unexpected failures"):  # fmt: skip
        assert re.search(rf"^  {re.escape(label)}\s+[\d,.]+\s+\S", headline, re.MULTILINE), label
        assert f"  {label}: " in headline  # its glossary line
    assert len(re.findall(r"Redis billed commands today\s+[\d,]+", report)) == 1  # its value, once
    body = report.split("Logged during")[0]  # the log section quotes messages as they were logged
    assert "{" not in body and "}" not in body and "': " not in body  # no raw Python dicts
    assert "started under config.settings.demo" in report


@pytest.mark.slow
def test_under_another_projects_settings_it_runs_isolated_and_leaves_their_database_untouched(
    tmp_path: Path,
) -> None:
    # The "host project": manage.py's development settings with their own database file and a user in it.
    db = tmp_path / "host.sqlite3"
    env = clean_env(DJANGO_SETTINGS_MODULE="config.settings.demo", DJANGO_DB_PATH=str(db))
    migrated = manage("migrate", "--verbosity", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, first_name, last_name,"
            " email, date_joined) VALUES ('host-admin', '!', 1, 1, 1, '', '', '', '2026-01-01')"
        )
    conn.close()
    before = file_digest(db)

    proc = manage("hotcache_demo", "--requests", "150", env=env)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == ""
    assert "Settings  config.settings.demo_isolated (the demo's own;" in proc.stdout
    assert "started under config.settings.demo, whose database it never opens" in proc.stdout
    assert file_digest(db) == before  # not one byte written: no demo users, no staff account, no sessions
    with sqlite3.connect(db) as conn:
        users = [row[0] for row in conn.execute("SELECT username FROM auth_user")]
    conn.close()
    assert users == ["host-admin"]


@pytest.mark.slow
def test_a_failing_scenario_fails_the_run_with_its_failures_listed() -> None:
    proc = manage("hotcache_demo", "--requests", "60", "--scenarios", "tests.demo.failing.scenarios", env=clean_env())

    assert proc.returncode == 1
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[-1].startswith("FAIL: 60 requests, 4 unexpected failure(s)"), lines[-1]
    failures = proc.stdout[proc.stdout.index("\nFailures\n") :]
    assert "foreign-host: 6 response(s) 400, expected 200 (first: GET /)" in failures
    assert "django.security.DisallowedHost: 6 x Invalid HTTP_HOST header: 'evil.example'" in failures
    assert f"unmet: {NEVER_HAPPENED}" in failures
    assert f"hotcache.tests logged 1 ERROR record(s): {LOGGED_ERROR}" in failures
    # stderr: the command's one-line error, never a request log line
    assert not REQUEST_LOG.findall(proc.stderr)
    assert proc.stderr.strip().startswith("CommandError: FAIL: 60 requests")


@pytest.mark.slow
def test_a_failing_scenario_in_json_says_so_also_when_started_under_the_demos_own_settings() -> None:
    env = clean_env(DJANGO_SETTINGS_MODULE="config.settings.demo_isolated")  # runs in this process, no switch
    proc = manage("hotcache_demo", "--requests", "30", "--json", "--scenarios", "tests.demo.failing.scenarios", env=env)

    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["passed"] is False and report["verdict"].startswith("FAIL: 30 requests")
    assert f"unmet: {NEVER_HAPPENED}" in report["failures"]
    assert report["settings_module"] == "config.settings.demo_isolated" and report["launched_from"] == ""


@pytest.mark.slow
def test_json_has_exactly_the_documented_keys(json_run: dict[str, Any]) -> None:
    assert set(json_run) == TOP_LEVEL_KEYS
    assert {name: set(figures) for name, figures in json_run["features"].items()} == FEATURE_KEYS
    documented = (ROOT / "docs" / "demo.md").read_text(encoding="utf-8")
    missing = [k for k in TOP_LEVEL_KEYS | set().union(*FEATURE_KEYS.values()) if f"`{k}`" not in documented]
    assert missing == []


@pytest.mark.slow
def test_json_figures_add_up(json_run: dict[str, Any]) -> None:
    r = json_run
    assert r["requests"] == 200 and sum(r["statuses"].values()) == 200 == sum(r["requests_by_scenario"].values())
    assert all(isinstance(code, str) and code.isdigit() for code in r["statuses"])
    assert r["passed"] is True and r["failures"] == [] and r["verdict"].startswith("PASS: 200 requests")
    assert r["daily_budget"] == 10_000
    assert r["settings_module"] == "config.settings.demo_isolated" and r["launched_from"] == "config.settings.demo"
    assert r["redis_commands_per_1000_requests"] == round(1000 * sum(r["redis_on_request_path"].values()) / 200, 1)
    assert r["billed_commands_per_1000_requests"] == round(
        1000 * sum(r["redis_billed_on_request_path"].values()) / 200, 1
    )
    # Scripts bill every command they run: the bill is well above the commands sent.
    assert r["billed_commands_per_1000_requests"] > r["redis_commands_per_1000_requests"]
    assert r["round_trips_per_request"] == round(r["redis_round_trips_on_request_path"] / 200, 2)
    assert r["mongo_ops_saved"] == sum(r["mongo_ops_without_hotcache"].values()) - sum(
        r["mongo_ops_with_hotcache"].values()
    )
    # The day's count, read once after the last meter flush, holds at least everything the traffic and syncs sent.
    assert r["redis_commands_today"] >= sum(r["redis_on_request_path"].values()) + sum(r["redis_sync"].values())
    assert r["redis_billed_today"] >= sum(r["redis_billed_on_request_path"].values())
    assert "fallbacks" in r["health"] and r["health"]["state"] == "closed"
    # The staff user's report pages went through the full middleware stack (every 100th request).
    reports = r["features"]["reports"]
    assert reports["report_pages"] == {"200": 2}
    assert reports["overview_round_trips"] == 2 and reports["redis_available"] is True
    # Expected 4xx were logged, off the console, and reported.
    assert any(rec["logger"] == "django.request" and rec["level"] == "WARNING" for rec in r["logged"])


@pytest.mark.slow
def test_with_redis_down_it_completes_on_the_fallbacks() -> None:
    with socket.socket() as sock:  # a port nothing listens on: every Redis connection is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = clean_env(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    proc = manage("hotcache_demo", "--requests", "40", "--json", env=env)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["requests"] == 40 and report["passed"] is True
    assert not any(int(code) >= 500 for code in report["statuses"])
    assert report["health"]["opens"] >= 1 and report["health"]["fallbacks"]


@pytest.mark.slow
def test_the_progress_bar_shows_only_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a bare pty has 0 columns, in which tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    terminal = b""
    try:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "hotcache_demo", "--requests", "30"], cwd=ROOT, env=clean_env(),
            stdout=subprocess.PIPE, stderr=follower, text=True,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        while True:  # read the terminal while the demo runs, so a full pty buffer never blocks it
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # every writer closed the terminal
                    chunk = b""
                terminal += chunk
                if not chunk:
                    break
            elif proc.poll() is not None:
                break
        stdout, _ = proc.communicate(timeout=600)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    text = terminal.decode("utf-8", "replace")
    assert "hotcache demo:" in text and "/30 [" in text  # tqdm's bar ("hotcache demo:  40%|###  | 12/30 [00:00<...")
    assert not REQUEST_LOG.findall(text)
    assert stdout.rstrip("\n").splitlines()[-1].startswith("PASS: 30 requests")
