"""A TCP proxy in front of PostgreSQL that a test can stall and drop, to play the database's faults.

* ``stall()``: every connection stays open, but nothing is relayed either way, and new connections are
  accepted but not relayed either. To the service this is a frozen server (SIGSTOP) or a black-holed network
  seen from an intact TCP connection: the kernel still acknowledges, nothing answers.
* ``drop()``: every connection is closed and new ones are refused, as when the server is stopped.
* ``resume()``: relaying again (after a drop, connections start afresh: the old ones are gone).
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class FaultyProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._relaying = threading.Event()
        self._relaying.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False

    # Lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FaultyProxy:
        self._listen()
        return self

    def close(self) -> None:
        self._closed = True
        self._relaying.set()
        self._close_all()

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Faults ------------------------------------------------------------------------------------------------

    def stall(self) -> None:
        self._relaying.clear()

    def drop(self) -> None:
        self._relaying.set()
        self._close_all()

    def resume(self) -> None:
        if self._listener is None:
            self._listen()
        self._relaying.set()

    # Relaying ----------------------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="proxy-accept").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by drop() or close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                self._relaying.wait()  # a stall holds the data here: sent by one side, never delivered
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def _close_all(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = set(self._sockets), set()
        if listener is not None:
            listener.close()
        for end in sockets:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
