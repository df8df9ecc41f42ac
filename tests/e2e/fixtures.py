"""Creates the end-to-end run's users, their sessions and API keys (inside the cluster's environment) and
writes what the load generator needs as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import django

API_KEY_LIMITS = {"e2e-capped-a": 120, "e2e-capped-b": 60, "e2e-open": None}


def make_fixtures() -> dict:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    from hotcache import apikeys

    model = get_user_model()
    users = []
    for i in range(20):
        user, _ = model.objects.get_or_create(username=f"e2e-user-{i}")
        user.set_password("e2e-password")
        user.save()
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        users.append({"id": user.pk, "username": user.username,
                      "cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}"})
    keys = []
    for name, limit in API_KEY_LIMITS.items():
        new = apikeys.create(name, name=name, daily_limit=limit)
        keys.append({"key_id": new.key_id, "raw_key": new.raw_key, "limit": limit, "name": name})
    return {"users": users, "api_keys": keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    django.setup()
    args.out.write_text(json.dumps(make_fixtures()))


if __name__ == "__main__":
    main()
