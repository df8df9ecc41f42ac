"""Run one function in several forked processes at once (real races: each process has its own clients).

``race(n, fn, *args)`` forks ``n`` children (the test's settings, fixtures and databases are inherited:
fork copies the process), calls ``fn(index, barrier, *args)`` in each and returns their results in index
order. ``barrier`` is a multiprocessing barrier for the ``n`` children: wait on it right before the racing
part. hotcache's clients are per process (a MongoClient or Redis pool inherited through fork is never
reused), so each child talks to the servers over its own connections. A child that raises fails the test
with its traceback; a child that does not finish within ``timeout`` is killed and fails it too.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["race", "serve_until_signalled"]

_FORK = multiprocessing.get_context("fork")


def _child(index: int, fn: Callable[..., Any], barrier: Any, args: tuple[Any, ...], conn: Any) -> None:
    try:
        result = fn(index, barrier, *args)
    except BaseException:
        barrier.abort()  # release the others: the test fails with this traceback, not a hang
        conn.send(("error", f"process {index} (pid {os.getpid()}):\n{traceback.format_exc()}"))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def race(n: int, fn: Callable[..., Any], *args: Any, timeout: float = 180.0) -> list[Any]:
    barrier = _FORK.Barrier(n, timeout=timeout)
    pipes = [_FORK.Pipe(duplex=False) for _ in range(n)]
    procs = [
        _FORK.Process(target=_child, args=(i, fn, barrier, args, send), daemon=True)
        for i, (_, send) in enumerate(pipes)
    ]
    for p in procs:
        p.start()
    for _, send in pipes:
        send.close()  # the children hold the write ends
    results: list[Any] = []
    errors: list[str] = []
    for i, ((recv, _), proc) in enumerate(zip(pipes, procs, strict=True)):
        if recv.poll(timeout):
            try:
                status, value = recv.recv()
            except EOFError:
                status, value = "error", f"process {i} exited without a result (exit code {proc.exitcode})"
        else:
            status, value = "error", f"process {i} did not finish within {timeout:.0f} s"
        if status == "ok":
            results.append(value)
        else:
            results.append(None)
            errors.append(value)
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert not errors, "\n".join(errors)
    return results


def serve_until_signalled(close: Callable[[], None]) -> None:
    """The ``main()`` of a server started from the command line (``python -m tests.support.secantus``, the
    cluster): block until SIGTERM or SIGINT, then ``close()`` it."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    done.wait()
    close()
