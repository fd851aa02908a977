"""HTTP reads that a deadline or another thread can cut short.

urllib's ``timeout`` bounds each socket operation, not a whole transfer: a server that sends a
byte every few seconds is never timed out. Here each connection's socket is handed to a
:class:`SocketWatch` as it opens; shutting the watch down makes a read blocked in ``recv`` return
at once. Used by checkpoint downloads and by image URLs.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import urllib.request
from collections.abc import Callable


def shut(sock: socket.socket) -> None:
    """Shut ``sock`` down for reading and writing (a no-op on a closed socket)."""
    try:
        # socket.socket's own shutdown, also for an SSL socket: its override would drop the TLS
        # state under the thread that is reading.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        pass


class SocketWatch:
    """The sockets of one transfer, shut down together by :meth:`shut_all` (thread-safe; a
    socket that opens afterwards is shut at once)."""

    def __init__(self) -> None:
        self.shut_down = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.shut_down:
                self._sockets.append(sock)
                return
        shut(sock)

    def shut_all(self) -> None:
        with self._lock:
            self.shut_down = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            shut(sock)


class _ReportingHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, on_connect: Callable[[socket.socket], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_connect = on_connect

    def connect(self) -> None:
        super().connect()
        self._on_connect(self.sock)


class _ReportingHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, on_connect: Callable[[socket.socket], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_connect = on_connect

    def connect(self) -> None:
        super().connect()  # TCP, a proxy tunnel if any, then TLS
        self._on_connect(self.sock)


class ReportingHTTPHandler(urllib.request.HTTPHandler):
    """urllib's http handler, reporting each new connection's socket to ``on_connect``."""

    def __init__(self, on_connect: Callable[[socket.socket], None]) -> None:
        super().__init__()
        self._connection = functools.partial(_ReportingHTTPConnection, on_connect=on_connect)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class ReportingHTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's https handler (the default TLS context), reporting each new connection's socket."""

    def __init__(self, on_connect: Callable[[socket.socket], None]) -> None:
        super().__init__()
        self._connection = functools.partial(_ReportingHTTPSConnection, on_connect=on_connect)

    def https_open(self, req):
        return self.do_open(self._connection, req)
