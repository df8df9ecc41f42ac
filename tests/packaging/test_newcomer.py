"""A newcomer's first hour, by script: the wheel into a fresh virtualenv, a fresh ``startproject``, README's steps.

The virtualenv is made without the system's or this venv's packages, so a dependency the wheel forgets to
declare fails here; pip brings the declared ones from the package index (its cache makes reruns quick).
The steps come from README.md's "Installing into an existing Django project" section itself (its code
blocks are read and applied), so the README cannot drift from what works. The project uses the real Redis
(this run's database, a key prefix of its own, deleted afterwards) and the in-process MongoDB stand-in, as
a newcomer on a laptop would.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Installing into an existing Django project"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"


def _install_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    return text[start : text.index("\n## ", start + len(SECTION))]


def _assigned(section: str, name: str) -> Any:
    """What README's python blocks give ``name``: the first value; for a dict, every block's keys merged in order
    (``{..., "KEY": value}``, "your other keys, plus this one", adds KEY). ``...`` list entries stay Ellipsis."""
    found: list[Any] = []
    for block in re.findall(r"```python\n(.*?)\n\s*```", section, re.S):
        source = re.sub(r"\{\s*\.\.\.\s*,", "{", textwrap.dedent(block))
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
                found.append(ast.literal_eval(node.value))
    assert found, f"README's install section shows no `{name} = ...` block"
    if isinstance(found[0], dict):
        return {k: v for value in found for k, v in value.items()}
    return found[0]


def _middleware(section: str, project: list[str]) -> list[str]:
    """README step: hotcache's middleware in the place of Django's AuthenticationMiddleware, in README's order."""
    shown = [m for m in _assigned(section, "MIDDLEWARE") if isinstance(m, str)]
    assert "instead of AuthenticationMiddleware" in section
    assert shown.index("django.contrib.sessions.middleware.SessionMiddleware") < shown.index(
        "hotcache.middleware.CachedAuthenticationMiddleware"
    )
    ours = [m for m in shown if m.startswith("hotcache.")]
    at = project.index(AUTH)
    return [*project[:at], *ours, *project[at + 1 :]]


VIEWS = """
from django.http import HttpResponse, JsonResponse

from hotcache.apikeys import require_api_key
from hotcache.ratelimit import ratelimit


@ratelimit(key="ip", rate="2/m")
def limited(request):
    return HttpResponse("ok")


@require_api_key
def api(request):
    return JsonResponse({"key_id": request.api_key.key_id, "remaining": request.api_key.remaining})
"""

REQUESTS = """
import json
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django.setup()
from django.test.utils import setup_test_environment

setup_test_environment()  # the test client's host, "testserver", is allowed
from django.test import Client

import hotcache
from hotcache import apikeys

client = Client()
limited = [client.get("/limited/") for _ in range(3)]
new = apikeys.create("newcomer", daily_limit=5)  # in this process: the stand-in keeps it here
bearer = client.get("/api/", HTTP_AUTHORIZATION=f"Bearer {new.raw_key}")
anonymous = client.get("/api/")
print(json.dumps({
    "limited": [r.status_code for r in limited],
    "retry_after": limited[-1].get("Retry-After"),
    "bearer": [bearer.status_code, json.loads(bearer.content)],
    "key_id": new.key_id,
    "anonymous": anonymous.status_code,
    "hotcache_from": hotcache.__file__,
}))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_newcomer_installs_the_wheel_into_a_fresh_project_by_following_the_readme(
    built_wheel: Path, tmp_path: Path, redis_url: str, key_prefix: str, raw_redis: Any
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO", "PYTHON", "VIRTUAL_ENV"))}
    venv = tmp_path / "venv"
    py = str(venv / "bin" / "python")
    # A fresh virtualenv sees neither the system's packages nor this one's: only what the wheel declares.
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    installed = _run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", f"{built_wheel}[embedded]"], tmp_path, env
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    started = _run([str(venv / "bin" / "django-admin"), "startproject", "mysite"], tmp_path, env)
    assert started.returncode == 0, started.stderr
    project = tmp_path / "mysite"

    # README, "Installing into an existing Django project", step by step.
    section = _install_section()
    settings_py = project / "mysite" / "settings.py"
    startproject: dict[str, Any] = {"__file__": str(settings_py)}
    exec(settings_py.read_text(encoding="utf-8"), startproject)  # Django's own template: plain assignments
    caches = _assigned(section, "CACHES")  # step 3, on this run's Redis
    caches["default"]["LOCATION"] = redis_url
    prefix = f"{key_prefix}-nc"  # a prefix of its own: the project's keys are deleted below
    hotcache = {  # step 4, with the stand-in of step 1's [embedded] extra for development
        **_assigned(section, "HOTCACHE"),
        "MONGO_URL": "mongomock://localhost/mysite",
        "KEY_PREFIX": prefix,
    }
    include = re.search(r'`(path\("hotcache/", include\("hotcache\.urls"\)\))`', section)
    assert include, "README's install section no longer shows the hotcache URL include (step 5)"
    assert 'Add `"hotcache"` to `INSTALLED_APPS`' in section
    with settings_py.open("a", encoding="utf-8") as f:
        f.write(
            "\n# --- hotcache, as README.md says ---\n"
            'INSTALLED_APPS += ["hotcache"]\n'
            f"CACHES = {caches!r}\n"
            f"HOTCACHE = {hotcache!r}\n"
            f"MIDDLEWARE = {_middleware(section, startproject['MIDDLEWARE'])!r}\n"
        )
    urls_py = project / "mysite" / "urls.py"
    urls = urls_py.read_text(encoding="utf-8").replace(
        "from django.urls import path", "from django.urls import include, path"
    )
    urls_py.write_text(
        urls
        + "\nfrom mysite import views\n\n"
        + f"urlpatterns += [{include.group(1)}, path('limited/', views.limited), path('api/', views.api)]\n",
        encoding="utf-8",
    )
    (project / "mysite" / "views.py").write_text(VIEWS, encoding="utf-8")
    (project / "requests_script.py").write_text(REQUESTS, encoding="utf-8")

    def manage(*args: str) -> subprocess.CompletedProcess:
        return _run([py, "manage.py", *args], project, env)

    try:
        checked = manage("check")  # step 6
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "hotcache.E" not in checked.stderr
        assert "hotcache.W003" in checked.stderr  # the stand-in is named, with what it loses
        assert "hotcache.W080" not in checked.stderr  # step 8's cron declaration: the syncs are scheduled
        migrated = manage("migrate", "-v0")
        assert migrated.returncode == 0, migrated.stderr
        healthy = manage("hotcache_check")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "Redis    OK" in healthy.stdout and "MongoDB  OK" in healthy.stdout
        assert "db=mysite" in healthy.stdout  # mongomock://host/<db> reads like mongodb://

        answered = _run([py, "requests_script.py"], project, env)
        assert answered.returncode == 0, answered.stderr
        seen = json.loads(answered.stdout.strip().splitlines()[-1])
        assert seen["limited"] == [200, 200, 429]  # @ratelimit past its limit: 429, not 403
        assert int(seen["retry_after"]) >= 1
        assert "Traceback" not in answered.stderr  # a denial is an answer, not an error
        assert seen["bearer"][0] == 200 and seen["bearer"][1] == {"key_id": seen["key_id"], "remaining": 4}
        assert seen["anonymous"] == 401
        assert str(venv) in seen["hotcache_from"]  # the installed wheel, not this checkout

        # A durable-writing command in its own process against the stand-in: refused, saying why and what to set.
        refused = manage("apikeys", "create", "newcomer")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "manage.py apikeys create refused" in refused.stderr
        assert "'mongomock://localhost/mysite', the in-process MongoDB stand-in" in refused.stderr
        assert "would vanish when the command exits" in refused.stderr and "mongodb+srv://" in refused.stderr
        assert "api key:" not in refused.stdout
    finally:
        stale = list(raw_redis.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(stale), 500):
            raw_redis.unlink(*stale[i : i + 500])
