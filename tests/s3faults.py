"""A fault-injecting HTTP proxy in front of the moto S3 server, on 127.0.0.1.

Every request is forwarded to moto unchanged, except that a chosen share of
PUT requests (object uploads and server-side copies), and every GET or PUT whose
path ``fail_get(path)`` or ``fail_put(path)`` accepts, is answered with an S3 ``500 InternalError``
instead, without reaching moto (a storage outage).

Every request that reaches the proxy is counted in ``proxy.requests``, a
:class:`collections.Counter` keyed by ``(method, kind)`` (see :func:`request_kind`);
``proxy.reset_counts()`` empties it.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected fault</Message><RequestId>fault</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def request_kind(method: str, path: str, headers) -> str:
    """What an S3 request does, from its method, path-style URL and headers.

    ``list`` (GET on a bucket: ListObjects, with or without a prefix), ``get``
    (GET of an object, range reads included), ``head``, ``put`` (an upload),
    ``copy`` (PUT with ``x-amz-copy-source``), ``delete`` (DELETE, or POST
    ``?delete``), ``multipart`` (anything with ``uploads`` or ``uploadId``), or
    ``other``.
    """
    url = urlsplit(path)
    query = parse_qs(url.query, keep_blank_values=True)
    key = url.path.lstrip("/").partition("/")[2]
    if "uploads" in query or "uploadId" in query:
        return "multipart"
    if method == "HEAD":
        return "head"
    if method == "GET":
        if key:
            return "get"
        listing = {"list-type", "prefix", "delimiter", "marker", "continuation-token"}
        return "list" if not query or listing & set(query) else "other"
    if method == "PUT":
        if headers.get("x-amz-copy-source"):
            return "copy"
        return "put" if key else "other"
    if method == "DELETE" or (method == "POST" and "delete" in query):
        return "delete"
    return "other"


class FaultProxy:
    """Start with ``FaultProxy(upstream, put_failure_rate, seed)``; ``.url`` is the endpoint."""

    def __init__(
        self,
        upstream: str,
        put_failure_rate: float,
        seed: int = 0,
        fail_get: Callable[[str], bool] | None = None,
        fail_put: Callable[[str], bool] | None = None,
        max_streak: int = 3,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.rate = put_failure_rate
        # random faults are transient: never more than max_streak in a row on one key (the
        # retry layer tries 6 times); a key that always fails is fail_put's business
        self.max_streak = max_streak
        self.streaks: dict[str, int] = {}
        self.fail_get = fail_get
        self.fail_put = fail_put
        self.failed_gets = 0
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.puts = 0
        self.injected = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self) -> None:
                body = self._body()
                proxy._count(self.command, self.path, self.headers)
                if (self.command == "PUT" and proxy._should_fail(self.path)) or (
                    self.command == "GET" and proxy._should_fail_get(self.path)
                ):
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_ERROR)))
                    self.end_headers()
                    self.wfile.write(_ERROR)
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                head = self.command == "HEAD"  # keeps the upstream Content-Length
                for key, value in response.getheaders():
                    if key.lower() in _HOP_BY_HOP or (key.lower() == "content-length" and not head):
                        continue
                    self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, method: str, path: str, headers) -> None:
        kind = request_kind(method, path, headers)
        with self.lock:
            self.requests[method, kind] += 1

    def reset_counts(self) -> None:
        """Forget the requests counted so far."""
        with self.lock:
            self.requests.clear()

    def _should_fail(self, path: str) -> bool:
        if self.fail_put is not None and self.fail_put(path):
            with self.lock:
                self.injected += 1
            return True
        with self.lock:
            self.puts += 1
            fail = self.random.random() < self.rate and self.streaks.get(path, 0) < self.max_streak
            self.streaks[path] = self.streaks.get(path, 0) + 1 if fail else 0
            self.injected += fail
            return fail

    def _should_fail_get(self, path: str) -> bool:
        if self.fail_get is None or not self.fail_get(path):
            return False
        with self.lock:
            self.failed_gets += 1
        return True

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
