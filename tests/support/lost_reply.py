"""A TCP proxy to a real Redis that loses the replies of chosen commands: a Redis (or network) dying between
running a command and answering it, or before the command arrives. Used by the exactly-once tests."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit


class FaultPlan:
    """Which of the next commands lose their reply: the armed list one proxy, or the proxies in front of every
    node of a cluster (tests.support.redis_cluster.ClusterLostReplyProxies), take from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needle = b""
        self._modes: list[str] = []
        self._barrier: threading.Barrier | None = None
        self.lost: list[str] = []  # modes used so far, in order

    def arm(self, needle: bytes, *modes: str, together: int = 1) -> None:
        with self._lock:
            self._needle, self._modes = needle, list(modes)
            self._barrier = threading.Barrier(together) if together > 1 else None

    def take(self, data: bytes) -> tuple[str | None, threading.Barrier | None]:
        """The mode for this chunk of commands (None: relay it) and the barrier armed with it."""
        with self._lock:
            if self._modes and self._needle and self._needle in data:
                mode = self._modes.pop(0)
                self.lost.append(mode)
                return mode, self._barrier
        return None, None


class LostReplyProxy:
    """A TCP proxy to the real Redis that loses the reply of chosen commands, like a Redis (or network) dying
    between receiving a command and answering it.

    ``arm("apply", "drop", ...)``: each of the next commands containing ``needle`` (one per mode, in order of
    arrival) is either forwarded so Redis applies it ("apply") or never forwarded ("drop"); either way the
    client's connection is then closed without a reply; or held open without a reply ("stall": a stalled Redis,
    which only the client's timeout ends). With ``together=k`` the k armed commands wait for
    each other (a barrier), so k calls from different threads are in flight at once. Everything else is relayed.
    """

    def __init__(self, upstream_url: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}{parts.path or '/0'}"
        self.plan = plan or FaultPlan()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, needle: bytes, *modes: str, together: int = 1) -> None:
        self.plan.arm(needle, *modes, together=together)

    @property
    def lost(self) -> list[str]:
        """The modes used so far, in order."""
        return self.plan.lost

    @property
    def faults(self) -> int:
        """How many armed commands have lost their reply so far."""
        return len(self.plan.lost)

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            muted = threading.Event()  # set: replies from Redis are swallowed
            swallowed = threading.Event()
            threading.Thread(target=self._replies, args=(upstream, client, muted, swallowed), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, upstream, muted, swallowed), daemon=True).start()

    def _replies(self, upstream, client, muted, swallowed) -> None:
        try:
            while data := upstream.recv(65536):
                if muted.is_set():
                    swallowed.set()
                    continue
                client.sendall(data)
        except OSError:
            pass

    def _requests(self, client, upstream, muted, swallowed) -> None:
        with client, upstream:
            try:
                while data := client.recv(65536):
                    mode, barrier = self.plan.take(data)
                    if mode is None:
                        upstream.sendall(data)
                        continue
                    if barrier is not None:
                        barrier.wait(timeout=10)
                    if mode == "stall":
                        continue  # read, never forwarded, never answered, the connection left open
                    if mode == "apply":
                        muted.set()
                        upstream.sendall(data)
                        swallowed.wait(timeout=10)  # Redis answered: it has run the command
                    client.shutdown(socket.SHUT_RDWR)
                    return
            except OSError:
                return
