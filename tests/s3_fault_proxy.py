"""An S3 proxy on loopback that injects faults in front of a real S3 endpoint (moto_server).

Each request is parsed (request line, headers, body), matched against the rules in order and
either answered with a fault or forwarded unchanged (same headers, so signatures still hold)
over a keep-alive connection to the upstream. Faults, each bounded by a count (None: for ever):
- `slowdown`: HTTP 503 with S3's `SlowDown` error body (what throttled S3 answers);
- `reset`: the connection is reset (RST) before any answer;
- `stall`: nothing is sent for `seconds`, then the request is forwarded (a stalled server);
- `dead`: the connection is closed at once, nothing forwarded (an endpoint that has gone away).

    proxy = FaultProxy(moto.endpoint).start()
    proxy.add(Rule("slowdown", method="GET", path=r"/raw/flows/date=2026-01-05/hour=01/", times=3))
    ...  # the client talks to proxy.endpoint
    assert proxy.injected["slowdown"] == 3
"""
from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

ACTIONS = ("slowdown", "reset", "stall", "dead")
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message></Error>')
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Rule:
    action: str
    method: str | None = None    # GET, PUT, HEAD, DELETE, POST; None: any
    path: str = ""               # regex searched in the request target (path and query, %-decoded)
    times: int | None = 1        # how many matching requests get the fault; None: all of them
    seconds: float = 0.0         # stall length
    after: int = 0               # let this many matching requests through first
    fired: int = 0
    seen: int = 0
    _re: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault {self.action!r}")
        self._re = re.compile(self.path)

    def take(self, method: str, target: str) -> bool:
        if self.method not in (None, method) or not self._re.search(target):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


class FaultProxy:
    def __init__(self, upstream: str):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.rules: list[Rule] = []
        self.injected: Counter = Counter()   # action -> faults injected
        self.requests: Counter = Counter()   # method -> requests seen (faulted or not)
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _decide(self, method: str, target: str) -> Rule | None:
        with self.lock:
            self.requests[method] += 1
            for r in self.rules:
                if r.take(method, target):
                    self.injected[r.action] += 1
                    return r
        return None

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_conn: http.client.HTTPConnection | None = None

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reset(self):
                # SO_LINGER 0: close sends RST, as a dropped connection does
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _handle(self):
                body = self._body()
                rule = proxy._decide(self.command, unquote(self.path))
                if rule is not None:
                    if rule.action == "slowdown":
                        self.send_response(503, "Slow Down")
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(_SLOWDOWN)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(_SLOWDOWN)
                        return
                    if rule.action == "reset":
                        return self._reset()
                    if rule.action == "dead":
                        self.close_connection = True
                        return self.connection.close()
                    time.sleep(rule.seconds)  # stall, then answer normally (if the client still waits)
                self._forward(body)

            def _forward(self, body: bytes):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                for attempt in range(2):  # the upstream may have closed an idle keep-alive connection
                    if self.upstream_conn is None:
                        self.upstream_conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    try:
                        self.upstream_conn.request(self.command, self.path, body=body, headers=headers)
                        resp = self.upstream_conn.getresponse()
                        data = resp.read()
                        break
                    except (http.client.HTTPException, OSError):
                        self.upstream_conn.close()
                        self.upstream_conn = None
                        if attempt:
                            return self._reset()
                try:
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    if length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:
                    self.close_connection = True  # the client gave up (timed out a stall)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def finish(self):
                try:
                    super().finish()
                except OSError:
                    pass
                if self.upstream_conn is not None:
                    self.upstream_conn.close()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # resets are expected
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="s3-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
