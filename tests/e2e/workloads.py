"""The mixed workload of the end-to-end run. Each workload is one kind of client; step() makes one request
and returns (status, note). summary() is what the final checks compare with the stores."""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from typing import Any
from urllib.parse import urlencode

from tests.e2e.loadgen import Http

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


class Workload:
    name = "workload"
    weight = 1.0

    def __init__(self, fixtures: dict[str, Any], shared: dict[str, Any]) -> None:
        self.fixtures = fixtures
        self.shared = shared
        self.lock = threading.Lock()

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {}


class PageViews(Workload):
    """Anonymous visitors on the home page."""

    name = "pages"
    weight = 1.0

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        status, _, _ = client.request("GET", "/")
        return status, ""


class AuthenticatedPages(Workload):
    """Logged-in users reading their profile: the user must come back as the session's user, every time."""

    name = "users"
    weight = 3.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.wrong_user = 0

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        user = rng.choice(self.fixtures["users"])
        status, _, body = client.request("GET", "/users/me/", headers={"Cookie": user["cookie"]})
        if status == 200 and json.loads(body).get("username") != user["username"]:
            with self.lock:
                self.wrong_user += 1
            return status, "wrong user"
        return status, ""

    def summary(self) -> dict[str, Any]:
        return {"wrong_user": self.wrong_user}


class ApiCalls(Workload):
    """API clients with keys, two of them capped per day and called past their caps."""

    name = "apikeys"
    weight = 2.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.allowed: collections.Counter[str] = collections.Counter()
        self.limited: collections.Counter[str] = collections.Counter()
        self.allowed_in_outage: collections.Counter[str] = collections.Counter()
        # Allowed calls per key and phase: when a capped key goes past its limit, the check shows in which
        # phase the extra calls were allowed.
        self.allowed_by_phase: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        key = rng.choice(self.fixtures["api_keys"])
        phase = self.shared["phase"].value
        status, _, _ = client.request("GET", "/api/usage/", headers={"X-Api-Key": key["raw_key"]})
        # A call that overlapped the outage may have been decided by the fallback, whichever phase it started
        # in: on a loaded machine a call sent just before Redis stops is answered after it stopped.
        ended = self.shared["phase"].value
        with self.lock:
            if status == 200:
                self.allowed[key["key_id"]] += 1
                self.allowed_by_phase[key["key_id"]][phase if phase == ended else f"{phase}->{ended}"] += 1
                if phase in ("redis_down", "recovering") or ended in ("redis_down", "recovering"):
                    self.allowed_in_outage[key["key_id"]] += 1
            elif status == 429:
                self.limited[key["key_id"]] += 1
        return status, "over daily limit" if status == 429 else ""

    def summary(self) -> dict[str, Any]:
        return {"allowed": dict(self.allowed), "limited": dict(self.limited),
                "allowed_in_outage": dict(self.allowed_in_outage),
                "allowed_by_phase": {k: dict(v) for k, v in self.allowed_by_phase.items()}}


class MfaLogins(Workload):
    """A second login step: issue a code, verify it, then replay it; a code must never succeed twice."""

    name = "mfa"
    weight = 1.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.counter = 0
        self.issued = 0
        self.successes: collections.Counter[str] = collections.Counter()
        self.pending: dict[int, tuple[str, str, int]] = {}  # thread -> (user, code, verifications done)

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        me = threading.get_ident()
        with self.lock:
            current = self.pending.get(me)
            if current is None:
                self.counter += 1
                user = f"e2e-mfa-{self.counter}"
        if current is None:
            status, _, body = client.request("POST", "/mfa/issue/", urlencode({"user": user}).encode(), FORM)
            if status == 200:
                with self.lock:
                    self.issued += 1
                    self.pending[me] = (user, json.loads(body)["delivered"], 0)
            return status, "issue"
        user, code, done = current
        status, _, _ = client.request("POST", "/mfa/verify/", urlencode({"user": user, "code": code}).encode(), FORM)
        with self.lock:
            if status == 200:
                self.successes[f"{user}:{code}"] += 1
            if done + 1 >= 2:  # the second verification is the replay
                self.pending.pop(me, None)
            else:
                self.pending[me] = (user, code, done + 1)
        return status, "replay" if done == 1 else "verify"

    def summary(self) -> dict[str, Any]:
        return {"issued": self.issued, "verified": sum(1 for n in self.successes.values() if n >= 1),
                "verified_twice": sum(1 for n in self.successes.values() if n > 1)}


class Workbench(Workload):
    """Notebook-like sessions: open, a few edits, then end (most) or abandon (the rest)."""

    name = "workbench"
    weight = 2.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.counter = 0
        self.created: set[str] = set()
        self.ended: set[str] = set()
        self.abandoned: set[str] = set()
        self.state: dict[int, tuple[str, int]] = {}  # thread -> (session, edits left)

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        me = threading.get_ident()
        with self.lock:
            current = self.state.get(me)
            if current is None:
                self.counter += 1
                sid = f"e2e-wb-{self.counter}"
        if current is None:
            body = json.dumps({"state": {"edits": 0, "cells": []}, "owner": "e2e", "expected_version": 0})
            status, _, _ = client.request("POST", f"/workbench/{sid}/save", body.encode(), JSON)
            if status == 200:
                with self.lock:
                    self.created.add(sid)
                    self.state[me] = (sid, rng.randint(1, 4))
            return status, "open"
        sid, left = current
        if left > 0:
            body = json.dumps({"cell": f"x = {left}"}).encode()
            status, _, _ = client.request("POST", f"/workbench/{sid}/edit", body, JSON)
            with self.lock:
                self.state[me] = (sid, left - 1)
            return status, "edit"
        with self.lock:
            self.state.pop(me, None)
        if rng.random() < 0.25:
            with self.lock:
                self.abandoned.add(sid)
            return 200, "abandon (no request)"
        status, _, _ = client.request("POST", f"/workbench/{sid}/end")
        if status == 200:
            with self.lock:
                self.ended.add(sid)
        return status, "end"

    def summary(self) -> dict[str, Any]:
        with self.lock:
            open_now = {sid for sid, _ in self.state.values()}
        return {"created": sorted(self.created), "ended": sorted(self.ended),
                "abandoned": sorted(self.abandoned | open_now)}


class Analytics(Workload):
    """Browser beacons to the track endpoint."""

    name = "analytics"
    weight = 3.0
    EVENTS = ("e2e_click", "e2e_view", "e2e_signup", "e2e_share")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.accepted: collections.Counter[str] = collections.Counter()

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        event = rng.choice(self.EVENTS)
        body = json.dumps({"event": event, "path": f"/p/{rng.randint(1, 30)}", "visitor_id": f"v{rng.randint(1, 500)}"})
        status, _, _ = client.request("POST", "/hotcache/analytics/track", body.encode(), JSON)
        if status == 204:
            with self.lock:
                self.accepted[event] += 1
        return status, ""

    def summary(self) -> dict[str, Any]:
        return {"accepted": dict(self.accepted)}


class RateLimited(Workload):
    """Clients of a rate-limited API: greedy ones exceed 40/5s, polite ones stay under half of it."""

    name = "ratelimit"
    weight = 3.0
    POLITE_PER_5S = 16

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.recent: dict[str, collections.deque[float]] = {f"polite-{i}": collections.deque() for i in range(8)}
        self.by_class: dict[str, collections.Counter[int]] = {"polite": collections.Counter(),
                                                               "greedy": collections.Counter()}

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        now = time.monotonic()
        who = f"greedy-{rng.randint(0, 2)}"
        with self.lock:
            candidate = rng.choice(list(self.recent))
            window = self.recent[candidate]
            while window and now - window[0] > 5.0:
                window.popleft()
            if len(window) < self.POLITE_PER_5S:
                window.append(now)
                who = candidate
        status, _, _ = client.request("GET", "/rl/api/", headers={"X-Client": who})
        kind = who.split("-")[0]
        with self.lock:
            self.by_class[kind][status] += 1
        return status, kind

    def summary(self) -> dict[str, Any]:
        return {k: {str(s): n for s, n in c.items()} for k, c in self.by_class.items()}


ALL = (PageViews, AuthenticatedPages, ApiCalls, MfaLogins, Workbench, Analytics, RateLimited)


def build_workloads(fixtures: dict[str, Any], shared: dict[str, Any]) -> list[Workload]:
    return [cls(fixtures, shared) for cls in ALL]
