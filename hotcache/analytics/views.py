"""POST /hotcache/analytics/track: a tracking beacon translated into one track call. See docs/analytics.md."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from hotcache import metering
from hotcache.analytics._events import FEATURE, BeaconRefused, read_beacon
from hotcache.analytics._hot import track_event
from hotcache.analytics._http import request_user_id
from hotcache.conf import hotcache_settings

__all__ = ["track_view"]

_BEACON_TYPES = ("application/json", "text/plain", "")  # sendBeacon sends a string as text/plain, a bare Blob untyped


def _bad(field: str, message: str, status: int = 400) -> JsonResponse:
    metering.event(FEATURE, "rejected")
    return JsonResponse({"error": message, "field": field}, status=status)


@csrf_exempt
def track_view(request: HttpRequest) -> HttpResponse:
    """POST /hotcache/analytics/track with JSON {"event", "path", "visitor_id"}: 204, or 4xx naming the field.

    CSRF-exempt on purpose: browsers send it with navigator.sendBeacon (no CSRF header, often no cookie),
    it changes no user's state and carries no credentials, and a forged request can only add a counter,
    which anyone could do by calling it directly. Limit it with the rate-limit feature: target the URL
    name ``hotcache:analytics-track`` in RATELIMIT_RULES.
    """
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    kind = request.content_type or ""
    if kind not in _BEACON_TYPES and not (kind.startswith("application/") and kind.endswith("+json")):
        return _bad("content_type", "Content-Type must be application/json or text/plain", status=415)
    cap = int(hotcache_settings.ANALYTICS_TRACK_MAX_BODY)
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = -1
    if declared < 0:
        return _bad("body", "Content-Length is not a number of bytes")
    if declared > cap:
        return _bad("body", f"body is larger than {cap} bytes")
    body = request.read(cap + 1)  # never more than the cap is read, whatever the header said
    if len(body) > cap:
        return _bad("body", f"body is larger than {cap} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _bad("body", "body is not valid JSON")
    beacon = read_beacon(data)
    if isinstance(beacon, BeaconRefused):
        return _bad(beacon.field, beacon.message)
    track_event(beacon.as_event(request_user_id(request)))
    return HttpResponse(status=204)
