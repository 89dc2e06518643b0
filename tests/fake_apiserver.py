"""A small kube-apiserver for tests that speaks the real list/watch protocol over HTTP.

No kube-apiserver can run on the test machine, so the informers are tested against this one,
driving the real `kubernetes` client. What it implements, as the real server does:

- GET lists: `{"kind": "PodList", "metadata": {"resourceVersion", "continue",
  "remainingItemCount"}, "items": [...]}` with `limit`/`continue` pagination over a consistent
  snapshot (a continue token names the snapshot's resourceVersion; once history before it is
  compacted the token gets `410 Expired`), `fieldSelector` (metadata.name, metadata.namespace,
  spec.nodeName, status.phase, ...; `=`, `==`, `!=`) and `labelSelector` (`=`, `!=`, `in`,
  `notin`, exists, `!key`).
- `watch=true`: chunked transfer encoding of JSON lines `{"type": ..., "object": ...}`;
  ADDED / MODIFIED / DELETED, BOOKMARK (when `allowWatchBookmarks=true`), and an ERROR event
  carrying a `Status` with code 410 when `resourceVersion` is older than the compacted history.
  A watch without resourceVersion (or "0") starts with synthetic ADDED events for the current
  state. Field/label selectors turn a MODIFIED that enters or leaves the selection into
  ADDED or DELETED, as the watch cache does. `timeoutSeconds` ends the stream cleanly.
- `/version`, `/api`, `/apis` discovery, bearer-token authentication (401 otherwise).

One global resourceVersion counter is shared by all resources (as etcd's revision is).
The Python API mutates state (`create`, `update`, `delete`), `compact()`s history so old
resourceVersions get 410, `drop_watches()` cuts open watch connections abruptly,
`send_bookmarks()` asks every bookmark-enabled watch for a BOOKMARK, and `stop()`/`start()`
take the listener down and up again on the same port (reconnect tests).
"""
from __future__ import annotations

import base64
import bisect
import copy
import datetime as dt
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

# resource -> (group, version, kind, namespaced)
RESOURCES = {
    "pods": ("", "v1", "Pod", True),
    "services": ("", "v1", "Service", True),
    "nodes": ("", "v1", "Node", False),
    "endpointslices": ("discovery.k8s.io", "v1", "EndpointSlice", True),
    "jobs": ("batch", "v1", "Job", True),
}

# Field selectors the real server accepts per resource (others get 400, as there).
_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
_FIELDS = {
    "pods": _COMMON_FIELDS | {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                              "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                              "status.podIP", "status.nominatedNodeName"},
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
    "jobs": _COMMON_FIELDS | {"status.successful"},
}

_PATH_RE = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[a-z0-9.-]+)/(?P<gv>v[0-9a-z]+))"
    r"(?:/namespaces/(?P<ns>[a-z0-9-]+))?/(?P<res>[a-z]+)(?:/(?P<name>[a-z0-9.-]+))?$"
)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# ------------------------------------------------------------------------------ selectors


def _parse_field_selector(resource: str, text: str) -> list[tuple[str, str, str]]:
    """[(path, op, value)]; raises ValueError (-> 400) for unsupported fields, as the server does."""
    out = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        m = re.match(r"^([A-Za-z0-9._]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise ValueError(f"invalid field selector term {term!r}")
        path, op, value = m.groups()
        if path not in _FIELDS.get(resource, _COMMON_FIELDS):
            raise ValueError(f'"{path}" is not a known field selector: only "metadata.name", '
                             f'"metadata.namespace" and a few per-resource fields')
        out.append((path, "!=" if op == "!=" else "=", value))
    return out


def _field_value(obj: dict, path: str) -> str:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None else str(cur)


def _split_terms(text: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def _parse_label_selector(text: str):
    """A predicate over a labels dict."""
    preds = []
    for term in _split_terms(text or ""):
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\((.*)\)$", term)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                preds.append(lambda lb, k=key, vs=vals: lb.get(k) in vs)
            else:
                preds.append(lambda lb, k=key, vs=vals: lb.get(k) not in vs)
            continue
        m = re.match(r"^([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)$", term)
        if m:
            key, op, val = m.groups()
            if op == "!=":
                preds.append(lambda lb, k=key, v=val: lb.get(k) != v)
            else:
                preds.append(lambda lb, k=key, v=val: lb.get(k) == v)
            continue
        m = re.match(r"^(!?)([\w./-]+)$", term)
        if m:
            neg, key = m.groups()
            preds.append((lambda lb, k=key: k not in lb) if neg else (lambda lb, k=key: k in lb))
            continue
        raise ValueError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(p(labels or {}) for p in preds)


class _Selection:
    def __init__(self, resource: str, namespace: str | None, field_sel: str | None, label_sel: str | None):
        self.namespace = namespace
        self.fields = _parse_field_selector(resource, field_sel or "")
        self.labels = _parse_label_selector(label_sel or "")

    def __call__(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        md = obj.get("metadata", {})
        if self.namespace and md.get("namespace") != self.namespace:
            return False
        for path, op, value in self.fields:
            if (_field_value(obj, path) == value) != (op == "="):
                return False
        return self.labels(md.get("labels"))


# ------------------------------------------------------------------------------ the server


class FakeApiServer:
    """In-memory API server state plus an HTTP listener on 127.0.0.1 (random port, kept across
    stop()/start())."""

    def __init__(self, token: str | None = "netmon-test-token", *, bookmark_interval: float | None = None,
                 expired_as_http_status: bool = False):
        self.token = token
        self.bookmark_interval = bookmark_interval
        # Some servers answer a watch on a too-old resourceVersion with HTTP 410 instead of
        # an ERROR event; both must make the informer relist.
        self.expired_as_http_status = expired_as_http_status
        self.port = 0
        self._cond = threading.Condition()
        self._rv = 1000
        self._compacted_rv = 0
        self._objects: dict[str, dict[str, dict]] = {r: {} for r in RESOURCES}
        self._history: list[tuple[int, str, str, dict, dict | None]] = []  # (rv, res, type, obj, old)
        self._history_rvs: list[int] = []
        self._drop_gen = 0
        self._bookmark_gen = 0
        self._open_watches = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)

    # ------------------------------------------------------------------ listener

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeApiServer":
        if self._httpd is not None:
            return self
        server = self

        class Handler(_Handler):
            api = server

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-apiserver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (watches end abruptly, as when a
        control-plane node goes away). State is kept; start() serves it on the same port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        with self._cond:
            self._drop_gen += 1
            self._cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        for conn in list(self._conns):
            _shutdown(conn)
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path, token: str | None = None) -> str:
        """A kubeconfig whose current context points at this server with token auth."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token if token is not None else (self.token or "none")}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        return str(path)

    # ------------------------------------------------------------------ state API

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def _key(self, resource: str, namespace: str | None, name: str) -> str:
        return f"{namespace}/{name}" if RESOURCES[resource][3] else name

    def _record(self, resource: str, type_: str, obj: dict, old: dict | None) -> None:
        self._history.append((self._rv, resource, type_, obj, old))
        self._history_rvs.append(self._rv)
        self._cond.notify_all()

    def create(self, resource: str, obj: dict) -> dict:
        group, version, kind, namespaced = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if namespaced:
            md.setdefault("namespace", "default")
        obj["kind"] = kind
        obj["apiVersion"] = f"{group}/{version}" if group else version
        with self._cond:
            key = self._key(resource, md.get("namespace"), md["name"])
            if key in self._objects[resource]:
                raise KeyError(f"{resource} {key} already exists")
            self._rv += 1
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("creationTimestamp", _now_iso())
            md["resourceVersion"] = str(self._rv)
            self._objects[resource][key] = obj
            self._record(resource, "ADDED", copy.deepcopy(obj), None)
            return copy.deepcopy(obj)

    def update(self, resource: str, obj: dict) -> dict:
        """Replace an existing object (matched by namespace/name); uid and creation time are kept."""
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if RESOURCES[resource][3]:
            md.setdefault("namespace", "default")
        with self._cond:
            key = self._key(resource, md.get("namespace"), md["name"])
            old = self._objects[resource][key]
            self._rv += 1
            md["uid"] = old["metadata"]["uid"]
            md["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            md["resourceVersion"] = str(self._rv)
            obj["kind"], obj["apiVersion"] = old["kind"], old["apiVersion"]
            self._objects[resource][key] = obj
            self._record(resource, "MODIFIED", copy.deepcopy(obj), copy.deepcopy(old))
            return copy.deepcopy(obj)

    def delete(self, resource: str, name: str, namespace: str | None = "default") -> dict:
        with self._cond:
            key = self._key(resource, namespace, name)
            obj = self._objects[resource].pop(key)
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record(resource, "DELETED", obj, None)
            return copy.deepcopy(obj)

    def get(self, resource: str, name: str, namespace: str | None = "default") -> dict | None:
        with self._cond:
            obj = self._objects[resource].get(self._key(resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def objects(self, resource: str) -> list[dict]:
        with self._cond:
            return [copy.deepcopy(o) for o in self._objects[resource].values()]

    def compact(self) -> int:
        """Forget history up to now: watches and continue tokens older than this get 410."""
        with self._cond:
            self._compacted_rv = self._rv
            return self._rv

    def drop_watches(self) -> None:
        """Cut every open watch connection abruptly (no terminating chunk)."""
        with self._cond:
            self._drop_gen += 1
            self._cond.notify_all()

    def send_bookmarks(self) -> None:
        """Every open watch that allowed bookmarks sends one with the current resourceVersion."""
        with self._cond:
            self._bookmark_gen += 1
            self._cond.notify_all()

    @property
    def open_watches(self) -> int:
        """Watch streams established and waiting for changes (bookmark and drop requests
        reach exactly these)."""
        with self._cond:
            return self._open_watches

    def count_requests(self, path: str | None = None, **query) -> int:
        """How many GETs matched `path` (exact) and every `query` item (value None = present)."""
        with self._cond:
            reqs = list(self.requests)
        n = 0
        for _method, p, q in reqs:
            if path is not None and p != path:
                continue
            if all((k in q) if v is None else (q.get(k) == v) for k, v in query.items()):
                n += 1
        return n

    # ------------------------------------------------------------------ protocol pieces

    def _state_at(self, resource: str, rv: int) -> dict[str, dict]:
        """Objects of `resource` as they were at resourceVersion `rv` (history is kept whole;
        compaction only makes it unavailable to clients)."""
        if rv >= self._rv:
            return dict(self._objects[resource])
        state: dict[str, dict] = {}
        for erv, res, type_, obj, _old in self._history:
            if erv > rv:
                break
            if res != resource:
                continue
            md = obj["metadata"]
            key = self._key(resource, md.get("namespace"), md["name"])
            if type_ == "DELETED":
                state.pop(key, None)
            else:
                state[key] = obj
        return state


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _encode_continue(rv: int, key: str) -> str:
    raw = json.dumps({"rv": rv, "start": key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    d = json.loads(raw)
    return int(d["rv"]), str(d["start"])


class _Dropped(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive and chunked encoding, as the real server
    api: FakeApiServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.api._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.api._conns.discard(self.connection)

    # ----------------------------------------------------------------- helpers

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, type_: str, obj: dict) -> None:
        self._chunk(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

    # ----------------------------------------------------------------- dispatch

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        api = self.api
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with api._cond:
            api.requests.append(("GET", parts.path, query))
        if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
            return self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
        path = parts.path.rstrip("/") or "/"
        if path == "/version":
            return self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-netmon-fake",
                                         "gitCommit": "0" * 40, "gitTreeState": "clean",
                                         "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22.5",
                                         "compiler": "gc", "platform": "linux/amd64"})
        if path == "/api":
            return self._send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                         "serverAddressByClientCIDRs": [
                                             {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{api.port}"}]})
        if path == "/apis":
            groups = sorted({g for g, *_ in RESOURCES.values() if g})
            return self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]})
        m = _PATH_RE.match(path)
        res = m and m["res"]
        if not m or res not in RESOURCES:
            return self._send_json(404, _status(404, "NotFound", f"the server could not find the requested resource ({path})"))
        group, version, kind, namespaced = RESOURCES[res]
        if (m["group"] or "") != group or (m["cv"] or m["gv"]) != version or (m["ns"] and not namespaced):
            return self._send_json(404, _status(404, "NotFound", f"the server could not find the requested resource ({path})"))
        if m["name"]:
            obj = api.get(res, m["name"], m["ns"])
            if obj is None:
                return self._send_json(404, _status(404, "NotFound", f'{res} "{m["name"]}" not found'))
            return self._send_json(200, obj)
        try:
            sel = _Selection(res, m["ns"], query.get("fieldSelector"), query.get("labelSelector"))
        except ValueError as exc:
            return self._send_json(400, _status(400, "BadRequest", str(exc)))
        if query.get("watch") in ("true", "1"):
            return self._watch(res, sel, query)
        return self._list(res, sel, query)

    def _list(self, res: str, sel: _Selection, query: dict) -> None:
        api = self.api
        group, version, kind, _ = RESOURCES[res]
        start_key = ""
        with api._cond:
            if query.get("continue"):
                try:
                    snap_rv, start_key = _decode_continue(query["continue"])
                except (ValueError, KeyError):
                    return self._send_json(400, _status(400, "BadRequest", "invalid continue token"))
                if snap_rv < api._compacted_rv:
                    return self._send_json(410, _status(
                        410, "Expired", "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter."))
            else:
                snap_rv = api._rv
            state = api._state_at(res, snap_rv)
            keys = sorted(k for k, o in state.items() if k > start_key and sel(o))
            limit = int(query.get("limit") or 0)
            page = keys[:limit] if limit > 0 else keys
            items = []
            for k in page:
                item = copy.deepcopy(state[k])
                item.pop("kind", None)       # list items carry no kind/apiVersion on the wire
                item.pop("apiVersion", None)
                items.append(item)
        meta: dict = {"resourceVersion": str(snap_rv)}
        if len(page) < len(keys):
            meta["continue"] = _encode_continue(snap_rv, page[-1])
            meta["remainingItemCount"] = len(keys) - len(page)
        self._send_json(200, {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version,
                              "metadata": meta, "items": items})

    def _watch(self, res: str, sel: _Selection, query: dict) -> None:
        api = self.api
        group, version, kind, _ = RESOURCES[res]
        api_version = f"{group}/{version}" if group else version
        allow_bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        rv_param = query.get("resourceVersion") or ""
        deadline = time.monotonic() + timeout
        with api._cond:
            drop_gen, bookmark_gen = api._drop_gen, api._bookmark_gen
            api._open_watches += 1
        try:
            self._stream(res, sel, kind, api_version, allow_bookmarks, deadline, rv_param, drop_gen, bookmark_gen)
        finally:
            with api._cond:
                api._open_watches -= 1

    def _stream(self, res, sel, kind, api_version, allow_bookmarks, deadline, rv_param, drop_gen, bookmark_gen):
        api = self.api
        initial: list[dict] = []
        with api._cond:
            if rv_param in ("", "0"):
                sent_rv = api._rv
                initial = [copy.deepcopy(o) for _, o in sorted(api._objects[res].items()) if sel(o)]
                too_old = False
            else:
                try:
                    sent_rv = int(rv_param)
                except ValueError:
                    return self._send_json(400, _status(400, "BadRequest", f"invalid resource version {rv_param!r}"))
                too_old = sent_rv < api._compacted_rv
            compacted = api._compacted_rv
        if too_old and api.expired_as_http_status:
            return self._send_json(410, _status(410, "Expired", f"too old resource version: {sent_rv} ({compacted})"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if too_old:
                self._event("ERROR", _status(410, "Expired", f"too old resource version: {sent_rv} ({compacted})"))
                return self._end()
            for obj in initial:
                self._event("ADDED", obj)
            last_bookmark = time.monotonic()
            while True:
                with api._cond:
                    while True:
                        if api._drop_gen != drop_gen:
                            raise _Dropped()
                        i = bisect.bisect_right(api._history_rvs, sent_rv)
                        pending = [e for e in api._history[i:] if e[1] == res]
                        now = time.monotonic()
                        want_bookmark = allow_bookmarks and (
                            api._bookmark_gen != bookmark_gen
                            or (api.bookmark_interval is not None and now - last_bookmark >= api.bookmark_interval))
                        if pending or want_bookmark or now >= deadline or i < len(api._history):
                            break
                        api._cond.wait(min(deadline - now, 0.25))
                    bookmark_gen = api._bookmark_gen
                    cur_rv = api._rv
                for erv, _res, type_, obj, old in pending:
                    out = _translate(type_, obj, old, sel, erv)
                    if out:
                        self._event(*out)
                sent_rv = cur_rv
                if want_bookmark:
                    last_bookmark = time.monotonic()
                    self._event("BOOKMARK", {"kind": kind, "apiVersion": api_version,
                                             "metadata": {"resourceVersion": str(cur_rv), "creationTimestamp": None}})
                if time.monotonic() >= deadline:
                    return self._end()
        except _Dropped:
            # Abrupt: no terminating chunk, socket shut down, as when a server dies mid-stream.
            self.close_connection = True
            _shutdown(self.connection)
        except OSError:
            self.close_connection = True

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _translate(type_: str, obj: dict, old: dict | None, sel: _Selection, rv: int):
    """What a selective watch sees of one change (the watch cache's rules)."""
    if type_ == "ADDED":
        return ("ADDED", obj) if sel(obj) else None
    if type_ == "DELETED":
        return ("DELETED", obj) if sel(obj) else None
    now, before = sel(obj), sel(old)
    if now and before:
        return "MODIFIED", obj
    if now:
        return "ADDED", obj
    if before:
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(rv)
        return "DELETED", gone
    return None
