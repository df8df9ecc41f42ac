"""API key arms: a protected view with hotcache's check vs one querying MongoDB on every call (the seed's "before")."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory

from config.demo.bench.runner import Arm
from hotcache import apikeys, clock
from hotcache.backends import mongo

__all__ = ["arms"]


def _mongo_every_call(view: Any) -> Any:
    """The "before": find the key record by hash and $inc today's usage on MongoDB, on every call."""

    def wrapper(request: HttpRequest) -> HttpResponse:
        raw = request.META.get("HTTP_X_API_KEY", "")
        digest = hashlib.sha256(raw.encode("ascii", "replace")).hexdigest()
        doc = mongo.collection(apikeys.KEYS_COLLECTION, feature="bench").find_one({"key_sha256": digest})
        if doc is None or not hmac.compare_digest(doc["key_sha256"], digest) or doc.get("revoked_at"):
            return JsonResponse({"error": "invalid_api_key"}, status=401)
        day = clock.utcnow().date().isoformat()
        after = mongo.collection(apikeys.USAGE_COLLECTION, feature="bench").find_one_and_update(
            {"key_id": doc["key_id"], "day": day}, {"$inc": {"fallback": 1}}, upsert=True
        )
        limit = doc.get("daily_limit")
        if limit is not None and after["fallback"] > limit:
            return JsonResponse({"error": "daily_limit_exceeded"}, status=429)
        request.api_key = doc  # type: ignore[attr-defined]
        return view(request)

    return wrapper


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok")


def arms() -> dict[str, list[Arm]]:
    new = apikeys.create("bench", name="bench")
    factory = RequestFactory()
    request = factory.get("/api/", HTTP_X_API_KEY=new.raw_key)
    hot_view = apikeys.require_api_key(_view)
    before_view = _mongo_every_call(_view)

    def expect_ok(response: HttpResponse) -> None:
        if response.status_code != 200:
            msg = f"protected view answered {response.status_code}"
            raise RuntimeError(msg)

    return {
        "apikeys: protected view, one call": [
            Arm("hotcache require_api_key (warm: 1 EVALSHA)", lambda i: expect_ok(hot_view(request))),
            Arm("before: MongoDB find + $inc on every call", lambda i: expect_ok(before_view(request)),
                note="in-process MongoDB stand-in unless MONGO_URL is set: a real server adds a network RT per op"),
            Arm("hotcache apikeys.check() alone", lambda i: apikeys.check(new.raw_key)),
        ]
    }
