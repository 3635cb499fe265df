"""A TCP relay on loopback whose connections a test can cut, to drop a
browser's event stream the way a flaky network or a proxy restart does.

It forwards bytes unchanged (so the browser's Host header and origin are
the relay's address, which is what the page's build token is bound to) and
notes the HTTP request lines it sees, so a test can count the /build
requests the page made.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading

from tests.realservices import LOOPBACK

_REQUEST_LINE = re.compile(rb"(?:GET|POST|HEAD|PUT|DELETE|OPTIONS) (\S+) HTTP/1\.[01]\r\n")


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        with self._lock:
                            self.requests += [m.decode(errors="replace") for m in _REQUEST_LINE.findall(data)]
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            self._close(client, upstream)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def drop_all(self) -> int:
        """Cut every open connection (new ones are still accepted)."""
        with self._lock:
            conns = list(self._conns)
        self._close(*conns)
        return len(conns) // 2

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()
        self.drop_all()
        self._thread.join(5)
