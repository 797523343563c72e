"""A fault-injecting HTTP proxy for S3 endpoints (moto in the tests).

Every request is forwarded to the upstream endpoint unless the :class:`FaultPlan` says
otherwise: answer ``503 SlowDown`` / ``500 InternalError``, drop the connection before any
response (TCP reset), cut a response body half-way, delay the request, or answer
``403 AccessDenied`` to everything under a key prefix (a permanent fault). Faults are drawn
from a seeded RNG and bounded in number and time, so a test can never hang on the proxy.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import math
import random
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def _s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>mien-fault-proxy</RequestId></Error>").encode()


@dataclasses.dataclass
class FaultPlan:
    """Random faults: rates are per request and exclusive (their sum must stay <= 1).
    Deterministic faults: ``every=n`` hits every n-th request, cycling through ``cycle``."""

    error_rate: float = 0.0  # 503 SlowDown / 500 InternalError before the request reaches S3
    reset_rate: float = 0.0  # connection reset, no response at all
    truncate_rate: float = 0.0  # GET responses: headers and half the body, then a reset
    delay_rate: float = 0.0  # forwarded after delay_s
    delay_s: float = 0.3
    forbidden_prefix: str | None = None  # "bucket/prefix": 403 AccessDenied on every request under it
    forbidden_methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE")  # ... with these methods
    every: int = 0  # > 0: every n-th request gets the next fault of ``cycle`` (rates are ignored)
    cycle: tuple[str, ...] = ("error", "reset", "truncate", "delay")
    max_faults: int = 10_000  # faults stop after this many (403s are never capped)
    duration_s: float = math.inf  # ... or after this long
    seed: int = 0


class FaultProxy:
    """``with FaultProxy(upstream) as proxy: proxy.url; proxy.set_plan(FaultPlan(...)); proxy.stats``"""

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        u = urllib.parse.urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.stats: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.set_plan(plan or FaultPlan())
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # an idle or stuck client connection ends

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # resets are expected; stay quiet
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    # -- control ---------------------------------------------------------------------------
    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self._faults = 0
            self._due: str | None = None
            finite = math.isfinite(plan.duration_s)
            self._deadline = time.monotonic() + plan.duration_s if finite else math.inf

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def faults_injected(self) -> int:
        return sum(v for k, v in self.stats.items() if k in ("error", "reset", "truncate", "delay"))

    # -- per request -----------------------------------------------------------------------
    def _draw(self, method: str) -> str:
        p = self.plan
        with self._lock:
            self.stats["requests"] += 1
            if self._faults >= p.max_faults or time.monotonic() > self._deadline:
                return "forward"
            if p.every:
                if self._due is None and self.stats["requests"] % p.every == 0:
                    self._due = p.cycle[self._faults % len(p.cycle)]
                if self._due is None or (self._due == "truncate" and method != "GET"):
                    return "forward"  # only a response body can be cut: the next GET gets it
                kind, self._due = self._due, None
                self._faults += 1
                self.stats[kind] += 1
                return kind
            x = self._rng.random()
            for kind, rate in (("error", p.error_rate), ("reset", p.reset_rate),
                               ("truncate", p.truncate_rate if method == "GET" else 0.0),
                               ("delay", p.delay_rate)):
                if x < rate:
                    self._faults += 1
                    self.stats[kind] += 1
                    return kind
                x -= rate
            return "forward"

    def _forbidden(self, method: str, path: str) -> bool:
        prefix = self.plan.forbidden_prefix
        if not prefix or method not in self.plan.forbidden_methods:
            return False
        u = urllib.parse.urlsplit(path)
        key = urllib.parse.unquote(u.path).lstrip("/")
        if key.startswith(prefix):
            return True
        bucket, _, key_prefix = prefix.partition("/")
        listed = urllib.parse.parse_qs(u.query).get("prefix", [""])[0]
        return key.rstrip("/") == bucket and listed.startswith(key_prefix)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        if self._forbidden(h.command, h.path):
            with self._lock:
                self.stats["forbidden"] += 1
            _reply(h, 403, "Forbidden", {"Content-Type": "application/xml"},
                   _s3_error("AccessDenied", "Access Denied"))
            return
        fault = self._draw(h.command)
        if fault == "error":
            code, reason, s3code = self._rng.choice([(503, "Slow Down", "SlowDown"),
                                                     (503, "Service Unavailable", "ServiceUnavailable"),
                                                     (500, "Internal Server Error", "InternalError")])
            _reply(h, code, reason, {"Content-Type": "application/xml"}, _s3_error(s3code, "injected fault"))
            return
        if fault == "reset":
            _reset(h)
            return
        if fault == "delay":
            time.sleep(self.plan.delay_s)
        status, reason, headers, data = self._forward(h, body)
        if fault == "truncate" and len(data) > 1:
            _reply(h, status, reason, headers, data[: len(data) // 2], content_length=len(data))
            _reset(h)
            return
        _reply(h, status, reason, headers, data)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes
                 ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body if body or h.command in ("PUT", "POST") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


def _reply(h: BaseHTTPRequestHandler, status: int, reason: str, headers, body: bytes,
           content_length: int | None = None) -> None:
    items = headers.items() if isinstance(headers, dict) else headers
    h.send_response_only(status, reason)
    head = h.command == "HEAD"
    for k, v in items:
        if k.lower() in HOP_BY_HOP or (k.lower() == "content-length" and not head):
            continue
        h.send_header(k, v)
    if not head:
        h.send_header("Content-Length", str(len(body) if content_length is None else content_length))
    h.end_headers()
    if not head and body:
        h.wfile.write(body)
    h.wfile.flush()


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed load balancer would."""
    h.close_connection = True
    try:
        h.wfile.flush()
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
