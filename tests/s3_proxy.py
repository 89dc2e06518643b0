"""A counting HTTP proxy on loopback in front of moto_server: every S3 request the job makes
passes through it, so a test can count LIST (and other) requests by what they are."""
from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def kind(method: str, path: str) -> str:
    """LIST (ListObjects[V2] on a bucket), GET, HEAD, PUT, DELETE, POST, ..."""
    u = urlsplit(path)
    segs = [s for s in u.path.split("/") if s]
    q = parse_qs(u.query, keep_blank_values=True)
    if method == "GET" and len(segs) == 1 and not ({"uploads", "location", "versioning", "acl"} & q.keys()):
        return "LIST"
    return method


class CountingProxy:
    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str]] = []
        self._mu = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(self):
                body = self._body()
                with proxy._mu:
                    k = kind(self.command, self.path)
                    proxy.counts[k] += 1
                    proxy.log.append((k, self.path))
                headers = {h: v for h, v in self.headers.items() if h.lower() not in HOP and h.lower() != "content-length"}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status, r.reason)
                    for h, v in r.getheaders():
                        if h.lower() not in HOP and h.lower() != "content-length":
                            self.send_header(h, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "CountingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._mu:
            self.counts.clear()
            self.log.clear()

    def lists(self) -> list[str]:
        with self._mu:
            return [p for k, p in self.log if k == "LIST"]
