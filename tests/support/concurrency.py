"""Concurrency drivers shared by test modules."""

from __future__ import annotations

import threading
from collections.abc import Callable

from hotcache import workbench


def run_threads(n: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` in ``n`` threads released together by a barrier; fail with every error a thread raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def thread(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors


def increment_concurrently(session_id: str, threads_n: int, per_thread: int) -> None:
    """``threads_n`` threads each add 1 to state["n"] ``per_thread`` times by read-modify-write with
    ``expected_version``, retrying on Conflict; re-raises the first unexpected error."""

    def worker(_: int) -> None:
        for _ in range(per_thread):
            while True:
                current = workbench.load(session_id)
                try:
                    workbench.save(session_id, {"n": current.state["n"] + 1}, expected_version=current.version)
                    break
                except workbench.Conflict:
                    pass

    run_threads(threads_n, worker)
