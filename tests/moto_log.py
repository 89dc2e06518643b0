"""moto_server with its request log kept: every S3 request a test's code makes, by kind.

moto_server (werkzeug) logs one line per request (`"GET /bucket?list-type=2&prefix=... HTTP/1.1"
200`); a test marks the log, runs the code under test, and counts what followed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from conftest import free_port

_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]')


def kind(method: str, path: str) -> str:
    """LIST (a ListObjects[V2] of a bucket), or the HTTP method."""
    u = urlsplit(path)
    segs = [s for s in u.path.split("/") if s]
    q = parse_qs(u.query, keep_blank_values=True)
    if method == "GET" and len(segs) == 1 and ("list-type" in q or "prefix" in q or "delimiter" in q):
        return "LIST"
    return method


class LoggedMoto:
    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.mkdtemp(prefix="moto-log-")
        self.log_path = os.path.join(self._dir, "requests.log")
        self.proc = None
        self._mark = 0

    def __enter__(self) -> "LoggedMoto":
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _lines(self) -> list[str]:
        time.sleep(0.3)  # let the server flush its last lines
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace").splitlines()

    def mark(self) -> None:
        self._mark = len(self._lines())

    def requests(self) -> list[tuple[str, str]]:
        """(kind, path) of every request since the mark."""
        out = []
        for line in self._lines()[self._mark:]:
            m = _LINE.search(line)
            if m:
                out.append((kind(m["method"], m["path"]), m["path"]))
        return out

    def counts(self) -> Counter:
        return Counter(k for k, _ in self.requests())
