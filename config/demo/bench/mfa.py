"""MFA arms: hotcache's issue/verify (one round trip each) against the seed's MongoDB-only "before".

The baseline is what the migration plan started from: the plaintext code in a MongoDB document,
verified with a read and then a delete (get-then-delete: two operations, and racy).
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any

from config.demo.bench.runner import Arm
from hotcache import mfa
from hotcache.backends import mongo

__all__ = ["arms"]

_PRELOAD = 6000  # Redis codes issued before timing starts: enough for the default rounds of every arm
# The MongoDB stand-in scans a collection linearly, so the baseline keeps its collections small: the
# issue arm cycles through 100 users, the verify arm preloads what the default run (5 x 200 + 20) uses.
_NAIVE_PRELOAD = 1030


def arms() -> dict[str, list[Arm]]:
    naive = mongo.collection("mfa_bench_naive", feature="mfa_naive")
    naive_issued = mongo.collection("mfa_bench_naive_issue", feature="mfa_naive")
    pending: deque[tuple[str, str]] = deque()
    naive_pending: deque[tuple[str, str]] = deque()
    run = secrets.token_hex(4)

    def preload() -> None:
        start = len(pending)
        for i in range(start, start + _PRELOAD):
            user = f"v{run}-{i}"
            pending.append((user, mfa.issue(user)))

    def naive_issue(i: int) -> None:
        code = f"{secrets.randbelow(10**6):06d}"
        naive_issued.update_one({"_id": f"n{run}-{i % 100}"}, {"$set": {"code": code}}, upsert=True)

    def naive_preload() -> None:
        for j in range(_NAIVE_PRELOAD):
            code = f"{secrets.randbelow(10**6):06d}"
            naive.insert_one({"_id": f"n{run}-{j}", "code": code})
            naive_pending.append((f"n{run}-{j}", code))

    def naive_verify(i: int) -> Any:
        user, code = naive_pending.popleft() if naive_pending else (f"none-{i}", "000000")
        doc = naive.find_one({"_id": user})
        if doc is not None and doc.get("code") == code:
            naive.delete_one({"_id": user})
            return True
        return False

    def hot_verify(i: int) -> Any:
        if not pending:
            preload()
        user, code = pending.popleft()
        result = mfa.verify(user, code)
        assert result, result
        return result

    def hot_verify_wrong(i: int) -> Any:
        if not pending:
            preload()
        user, code = pending[-1]
        # A wrong guess for a user with a live code: counted in Redis; no outage within the code's
        # lifetime, so MongoDB is not asked. Uses up the code's attempts: drop it then.
        guess = f"{(int(code) + 1 + i % 7) % 10**6:06d}"
        result = mfa.verify(user, guess)
        if result.attempts_left in (None, 0, 1):
            pending.pop()
        return result

    return {
        "mfa: issue a code": [
            Arm("before: MongoDB upsert of the plaintext code", naive_issue),
            Arm("hotcache mfa.issue (Redis Lua: cooldown + cap + HMAC record)", lambda i: mfa.issue(f"i{run}-{i}")),
        ],
        "mfa: verify a code": [
            Arm("before: MongoDB find_one + delete_one (get-then-delete)", naive_verify, setup=naive_preload),
            Arm("hotcache mfa.verify, right code (Lua verify-and-consume + marker GET)", hot_verify, setup=preload),
            Arm("hotcache mfa.verify, wrong code (Lua + marker GET, no MongoDB)", hot_verify_wrong),
        ],
    }
