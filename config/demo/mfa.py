"""Demo: MFA logins. Users ask for a code, then type it: mostly right, sometimes a typo, now and then a
replay of a used code or a resend too soon; one user is an attacker guessing until the code burns."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Scenario

__all__ = ["mfa_logins"]

_FORM = "application/x-www-form-urlencoded"
_USERS = 150


def _state(ctx: DemoContext) -> dict[str, Any]:
    return ctx.data["mfa"]


def _setup(ctx: DemoContext) -> None:
    from hotcache import mfa
    from hotcache.exceptions import BackendUnavailable

    ctx.data["mfa"].update(codes={}, used={}, outcomes=Counter())
    try:
        mfa.issue("victim")  # sent to the victim's phone; the attacker never sees it
    except BackendUnavailable:
        pass


def _post(path: str, tag: str, **fields: str) -> DemoRequest:
    from urllib.parse import urlencode

    return DemoRequest("POST", path, data=urlencode(fields), content_type=_FORM, tag=tag)


def _request(ctx: DemoContext, i: int) -> DemoRequest:
    st = _state(ctx)
    rng = ctx.rng
    if rng.random() < 0.08:  # the attacker: guesses codes for a victim who was sent one
        return _post("/mfa/verify/", "guess", user="victim", code=f"{rng.randrange(10**6):06d}")
    user = f"user{rng.randrange(_USERS)}"
    code = st["codes"].get(user)
    if code is None:
        if user in st["used"] and rng.random() < 0.1:
            return _post("/mfa/verify/", "replay", user=user, code=st["used"][user])
        return _post("/mfa/issue/", "issue", user=user)
    roll = rng.random()
    if roll < 0.04:
        return _post("/mfa/issue/", "resend", user=user)  # impatient: inside the cooldown
    if roll < 0.25:
        typo = f"{(int(code) + rng.randrange(1, 10)) % 10**6:06d}"
        return _post("/mfa/verify/", "typo", user=user, code=typo)
    return _post("/mfa/verify/", "right", user=user, code=code)


def _on_response(ctx: DemoContext, req: DemoRequest, resp: DemoResponse) -> None:
    st = _state(ctx)
    out = st["outcomes"]
    try:
        body = json.loads(resp.body or b"{}")
    except ValueError:
        body = {}
    fields = dict(pair.split("=", 1) for pair in str(req.data).split("&"))
    user = fields.get("user", "")
    if req.path == "/mfa/issue/":
        if resp.status == 200 and "delivered" in body:
            out["issued"] += 1
            st["codes"][user] = body["delivered"]
        elif resp.status == 429:
            out["resend_blocked"] += 1
        else:
            out["issue_unavailable"] += 1
        return
    reason = body.get("reason", "error")
    out[f"{req.tag}:{reason}"] += 1
    if reason == "ok":
        out["verified"] += 1
        st["used"][user] = st["codes"].pop(user, "")
    else:
        out["failed"] += 1
        if reason in ("too_many_attempts", "expired_or_missing"):
            st["codes"].pop(user, None)  # the user asks for a new code next time
    if req.tag == "replay" and reason == "ok":
        out["replay_accepted"] += 1  # must stay 0


def _report(ctx: DemoContext) -> dict[str, Any]:
    out = _state(ctx)["outcomes"]
    return {
        "issued": out["issued"],
        "verified": out["verified"],
        "failed": out["failed"],
        "resend_blocked": out["resend_blocked"],
        "issue_unavailable": out["issue_unavailable"],
        "typos_rejected": out["typo:invalid"] + out["typo:too_many_attempts"],
        "replays_rejected": sum(n for k, n in out.items() if k.startswith("replay:")) - out["replay_accepted"],
        "replays_accepted": out["replay_accepted"],
        "attacker_guesses": sum(n for k, n in out.items() if k.startswith("guess:")),
        "attacker_successes": out["guess:ok"],
    }


def mfa_logins() -> Scenario:
    return Scenario(name="mfa", make_request=_request, weight=0.5, setup=_setup, on_response=_on_response,
                    report=_report)
