"""A deadline on each catalog transaction: a database that stops answering mid-call has its connection cut.

The server's `statement_timeout` ends slow queries of a healthy server, and TCP keepalives and
`tcp_user_timeout` notice a network path that drops packets. Neither helps when the far end still
acknowledges every packet but never answers (a frozen primary, a stuck proxy): the driver then waits on its
socket for ever. So each transaction runs under a deadline, and the watchdog shuts down the socket of a
connection still busy when it passes; the driver's wait ends with a disconnect, which the engine turns into
503 and SQLAlchemy into a fresh connection next time.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

CHECK_S = 0.25  # how late past its deadline a stuck call may be noticed


class Watchdog:
    """Transactions register their deadline (per thread); the connections they check out register their socket."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._armed: dict[int, list] = {}  # thread id -> [deadline, socket fd or None]
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def armed(self) -> Iterator[None]:
        """The calling thread's database work inside this block must end within `seconds`."""
        key = threading.get_ident()
        with self._lock:
            self._armed[key] = [time.monotonic() + self.seconds, None]
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._watch, name="scv-db-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._armed.pop(key, None)

    def attach(self, fd: int) -> None:
        """The calling thread now talks to the database through socket `fd` (a connection it checked out)."""
        with self._lock:
            if (entry := self._armed.get(threading.get_ident())) is not None:
                entry[1] = fd

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_S)
            now = time.monotonic()
            with self._lock:  # under the lock: the connection cannot be handed back and its fd reused meanwhile
                for entry in self._armed.values():
                    if entry[0] <= now and entry[1] is not None:
                        _shut_down(entry[1])
                        entry[1] = None


def _shut_down(fd: int) -> None:
    # shutdown acts on the connection, not on the descriptor: the driver's own wait sees it end
    with suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:  # OSError: already closed
        sock.shutdown(socket.SHUT_RDWR)
