"""A TCP proxy to the database that can stop passing bytes, as a stalled server or a network
that drops packets without closing anything does: connections stay open, replies never come."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse


class Stall:
    def __init__(self, upstream_uri: str) -> None:
        parsed = urlparse(upstream_uri)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 27017)
        self.listener = socket.create_server(("127.0.0.1", 0))
        # Direct: a replica set's members would otherwise be reached by the names they give.
        port = self.listener.getsockname()[1]
        self.uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()


@contextmanager
def stalling(upstream_uri: str) -> Iterator[Stall]:
    proxy = Stall(upstream_uri)
    try:
        yield proxy
    finally:
        proxy.close()
