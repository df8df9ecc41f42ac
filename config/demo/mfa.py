"""Demo: MFA logins. Users ask for a code, then type it: mostly right, sometimes a typo, now and then a
replay of a used code or a resend too soon; one user is an attacker guessing until the code burns."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from config.demo.runner import DemoContext, DemoRequest, DemoResponse, Figure, Scenario, one_op_per_request

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


def _report(ctx: DemoContext) -> list[Figure]:
    out = _state(ctx)["outcomes"]
    return [
        Figure("issued", "Codes issued", out["issued"], "codes", "POST /mfa/issue/ answered with a new code"),
        Figure("verified", "Codes verified", out["verified"], "codes", "a right code typed in time, accepted once"),
        Figure(
            "failed",
            "Verifications failed",
            out["failed"],
            "attempts",
            "typos, replays, guesses and expired codes refused (answered 401, or 429 once a code burns)",
        ),
        Figure(
            "resend_blocked",
            "Resends blocked",
            out["resend_blocked"],
            "requests",
            "a new code asked for inside the resend cooldown (answered 429)",
        ),
        Figure(
            "issue_unavailable",
            "Issues unavailable",
            out["issue_unavailable"],
            "requests",
            "no code could be stored (Redis and MongoDB both down): must be 0 in a normal run",
        ),
        Figure(
            "typos_rejected",
            "Typos rejected",
            out["typo:invalid"] + out["typo:too_many_attempts"],
            "attempts",
            "a wrong code from the right user",
        ),
        Figure(
            "replays_rejected",
            "Replays rejected",
            sum(n for k, n in out.items() if k.startswith("replay:")) - out["replay_accepted"],
            "attempts",
            "a code already used, typed again",
        ),
        Figure(
            "replays_accepted",
            "Replays accepted",
            out["replay_accepted"],
            "attempts",
            "a used code accepted a second time: must be 0",
        ),
        Figure(
            "attacker_guesses",
            "Attacker guesses",
            sum(n for k, n in out.items() if k.startswith("guess:")),
            "attempts",
            "random codes tried against one victim's pending code",
        ),
        Figure(
            "attacker_successes",
            "Attacker successes",
            out["guess:ok"],
            "attempts",
            "guesses accepted: must be 0 (the code burns after MFA_MAX_ATTEMPTS)",
        ),
    ]


def _verify(ctx: DemoContext) -> list[str]:
    out = _state(ctx)["outcomes"]
    problems = []
    if out["replay_accepted"]:
        problems.append(f"{out['replay_accepted']} replayed code(s) accepted")
    if out["guess:ok"]:
        problems.append(f"{out['guess:ok']} attacker guess(es) accepted")
    if not out["verified"] and ctx.requests_by_scenario["mfa"] >= 50:
        problems.append("no code was verified")
    return problems


def mfa_logins() -> Scenario:
    return Scenario(
        name="mfa",
        make_request=_request,
        expected_statuses=frozenset({200, 401, 429}),
        weight=0.5,
        setup=_setup,
        on_response=_on_response,
        report=_report,
        verify=_verify,
        # The "before" path kept codes in MongoDB: at least one operation per issue or verification.
        mongo_ops_without_hotcache=one_op_per_request("mfa"),
    )
