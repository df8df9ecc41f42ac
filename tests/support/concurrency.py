"""Concurrency drivers shared by test modules."""

from __future__ import annotations

import threading

from hotcache import workbench


def increment_concurrently(session_id: str, threads_n: int, per_thread: int) -> None:
    """``threads_n`` threads each add 1 to state["n"] ``per_thread`` times by read-modify-write with
    ``expected_version``, retrying on Conflict; re-raises the first unexpected error."""
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                while True:
                    current = workbench.load(session_id)
                    try:
                        workbench.save(session_id, {"n": current.state["n"] + 1}, expected_version=current.version)
                        break
                    except workbench.Conflict:
                        pass
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors
