"""A TCP proxy in front of a real server (S3, PostgreSQL) that injects faults on demand (drop, stall, refuse)."""

import socket
import threading
import time


class FaultProxy:
    """Forwards 127.0.0.1:<port> to `target` (host:port); tests flip faults while requests flow through it."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.drop_patterns: set[bytes] = set()  # a request containing one of these kills its connection
        self.dropped = 0
        self.stalled = False  # accept and hold every byte: a hung server
        self.refusing = False  # close every new connection at once: a server that is down
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while chunk := source.recv(65536):
                while self.stalled:
                    time.sleep(0.05)
                if from_client and self.drop_patterns:
                    window = tail + chunk
                    if any(p in window for p in self.drop_patterns):
                        self.dropped += 1
                        break
                    tail = window[-512:]
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        for s in sockets:
            with self._lock:
                self._open.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut_all(self) -> None:
        """Close every open connection (pooled keep-alive ones too)."""
        with self._lock:
            sockets = list(self._open)
        self._close(*sockets)

    def heal(self) -> None:
        """Remove every fault."""
        self.drop_patterns.clear()
        self.stalled = self.refusing = False

    def close(self) -> None:
        self.heal()
        self.listener.close()
        self.cut_all()
