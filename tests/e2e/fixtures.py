"""Creates the end-to-end run's users and keys (run inside the cluster's environment) and writes them as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import django


def make_fixtures() -> dict:
    from django.contrib.auth import get_user_model

    users = []
    model = get_user_model()
    for i in range(20):
        username = f"e2e-user-{i}"
        user, _ = model.objects.get_or_create(username=username)
        user.set_password("e2e-password")
        user.save()
        users.append({"id": user.pk, "username": username, "password": "e2e-password"})
    return {"users": users}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    django.setup()
    args.out.write_text(json.dumps(make_fixtures()))


if __name__ == "__main__":
    main()
