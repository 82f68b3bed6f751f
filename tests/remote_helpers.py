"""Loopback servers for the remote-scene tests: an HTTP file server with Range support, moto S3.

:class:`RangeServer` serves a folder on 127.0.0.1 with single-range GET/HEAD
(``206 Partial Content``), counts the bytes it sends per file, answers 403 under
``/forbidden/`` and 404 for missing files, and can be told to ignore ``Range``
(``ranges=False``) like a server without range support. Both servers listen on
127.0.0.1 only and are stopped, with bounded waits, when their ``with`` block ends.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 20  # seconds a connection may sit idle: a stuck client cannot hang the test
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, *, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/forbidden/"):
            return self._empty(403)
        file = owner.root / path.lstrip("/")
        if not file.is_file() or owner.root not in file.resolve().parents:
            return self._empty(404)
        size = file.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match and owner.ranges:
            start = int(match[1])
            stop = min(int(match[2]) if match[2] else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        else:
            start, stop = 0, size - 1
            self.send_response(200)
        if owner.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(stop - start + 1))
        self.end_headers()
        if head:
            return None
        with open(file, "rb") as fh:
            fh.seek(start)
            data = fh.read(stop - start + 1)
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
            return None
        with owner.lock:
            owner.bytes_sent[path] += len(data)
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: RangeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-response is not a test failure


class RangeServer:
    """Serve ``root`` over HTTP on 127.0.0.1 (a random free port); use as a context manager."""

    def __init__(self, root: str | os.PathLike[str], *, ranges: bool = True) -> None:
        self.root = Path(root).resolve()
        self.ranges = ranges
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_sent: Counter[str] = Counter()
        self._server = _Server((HOST, 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{name}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL, stops it afterwards."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log in test output
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.stop()
