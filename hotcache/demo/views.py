"""Views of the demo site. Small on purpose: the work being shown is hotcache's, in the middleware and services."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hotcache demo home\n", content_type="text/plain")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"authenticated": bool(user.is_authenticated), "username": user.get_username()})


# --- Workbench (issue 7) ---------------------------------------------------------------------------
# A JSON API over hotcache.workbench: open/save, edit (server-side read-modify-write with versions), load, end.

import json  # noqa: E402

from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_GET, require_POST  # noqa: E402

from hotcache import workbench  # noqa: E402


def _workbench_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@csrf_exempt
@require_POST
def workbench_save(request: HttpRequest, session_id: str) -> JsonResponse:
    body = _workbench_body(request)
    try:
        version = workbench.save(
            session_id, body.get("state"), owner=body.get("owner"), expected_version=body.get("expected_version")
        )
    except workbench.Conflict as exc:
        return JsonResponse({"error": "conflict", "current": exc.current}, status=409)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"version": version})


@csrf_exempt
@require_POST
def workbench_edit(request: HttpRequest, session_id: str) -> JsonResponse:
    """Apply one edit to the session's state: load, change, save with expected_version, retry on conflict."""
    body = _workbench_body(request)
    try:
        for _ in range(5):
            session = workbench.load(session_id)
            if session is None:
                return JsonResponse({"error": "no such session"}, status=404)
            state = dict(session.state)
            state["edits"] = int(state.get("edits", 0)) + 1
            state["cells"] = [*state.get("cells", [])[-49:], body.get("cell", "")]
            try:
                version = workbench.save(session_id, state, expected_version=session.version)
            except workbench.Conflict:
                continue
            return JsonResponse({"version": version, "edits": state["edits"]})
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"error": "conflict"}, status=409)


@require_GET
def workbench_load(request: HttpRequest, session_id: str) -> JsonResponse:
    try:
        session = workbench.load(session_id)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if session is None:
        return JsonResponse({"error": "no such session"}, status=404)
    return JsonResponse({"version": session.version, "state": session.state})


@csrf_exempt
@require_POST
def workbench_end(request: HttpRequest, session_id: str) -> JsonResponse:
    try:
        ended = workbench.end(session_id)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"ended": ended}, status=200 if ended else 404)
