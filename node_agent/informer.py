"""List/watch informers over the `kubernetes` client, and the node-filtered pod index.

`Informer` keeps an in-memory copy of one resource collection, as client-go's reflector does:
list (paginated) -> watch from the list's resourceVersion -> apply events; when the watch's
resourceVersion has expired (410 Gone, as an HTTP status or an ERROR event) it relists and
reconciles the store with the server's truth; on connection errors it reconnects with capped
exponential backoff and jitter, resuming the watch from the last resourceVersion it saw
(bookmarks keep that fresh, so a reconnect rarely needs a relist).

Objects are kept as the API's JSON (dicts, camelCase keys), not as client model objects:
deserialising into models costs several times the memory and CPU, and the agent has 128 MiB.
Requests go through the client's generated `list_*` functions with `_preload_content=False`,
so its configuration, authentication and transport are the ones used.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import random
import threading
import time
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Transform = Callable[[Obj], Obj]


class _Expired(Exception):
    """The resourceVersion we hold is gone from the server's history: relist."""


def _uid(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


def _rv(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def strip_bulk(obj: Obj) -> Obj:
    """Drop fields nobody here reads and that dominate object size (managedFields, the
    last-applied annotation), before an object is stored."""
    md = obj.get("metadata")
    if md:
        md.pop("managedFields", None)
        ann = md.get("annotations")
        if ann:
            ann.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return obj


class Informer:
    """One collection kept in sync in a daemon thread.

    `list_func` is a generated list function of the kubernetes client, e.g.
    `CoreV1Api(api).list_pod_for_all_namespaces`. Handlers run in the informer's thread, in
    event order: `on_add(obj)`, `on_update(old, new)`, `on_delete(obj)`; an exception in a
    handler is logged and does not stop the informer.
    """

    def __init__(
        self,
        list_func: Callable[..., Any],
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        name: str = "informer",
        on_add: Callable[[Obj], None] | None = None,
        on_update: Callable[[Obj, Obj], None] | None = None,
        on_delete: Callable[[Obj], None] | None = None,
        transform: Transform | None = strip_bulk,
        page_size: int = 500,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        backoff_initial: float = 0.8,
        backoff_max: float = 30.0,
    ):
        self.list_func = list_func
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.name = name
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete
        self.transform = transform
        self.page_size = page_size
        self.watch_timeout = int(watch_timeout)
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max

        self._lock = threading.Lock()
        self._store: dict[str, Obj] = {}
        self._resource_version: str | None = None
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp = None               # the open watch response, so stop() can cut it
        self._watch_opened = self._watch_progress = False
        self._stats = {"lists": 0, "relists": 0, "expired": 0, "reconnects": 0,
                       "events": 0, "bookmarks": 0, "handler_errors": 0}
        self.last_error: str | None = None

    # ------------------------------------------------------------------ public API

    def start(self) -> "Informer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        _cut(self._resp)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first full list has been applied (False if `timeout` passed first)."""
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str | None:
        """The newest resourceVersion seen (list, event or bookmark)."""
        return self._resource_version

    def items(self) -> list[Obj]:
        """A consistent copy of the store's objects (treat them as read-only)."""
        with self._lock:
            return list(self._store.values())

    def get(self, uid: str) -> Obj | None:
        with self._lock:
            return self._store.get(uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def stats(self) -> dict[str, int]:
        """Counters for /metrics: lists (all), relists (after the first), expired (410s seen),
        reconnects (transport or server errors retried), events (ADDED/MODIFIED/DELETED
        applied), bookmarks, handler_errors, objects (store size), synced (0/1)."""
        with self._lock:
            out = dict(self._stats)
            out["objects"] = len(self._store)
        out["synced"] = int(self.synced)
        return out

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        need_list, failures, expired_run = True, 0, 0
        while not self._stopping.is_set():
            self._watch_opened = self._watch_progress = False
            try:
                if need_list:
                    if not self._list():
                        break                # stopped mid-list
                    need_list = False
                    failures = 0
                self._watch()
                failures = expired_run = 0   # the server ended the watch (timeout): watch again
            except Exception as exc:  # transport errors, 5xx, 410, truncated streams, bad JSON
                if self._stopping.is_set():
                    break
                if self._watch_opened:
                    failures = 0             # the connection was good until it broke
                if self._watch_progress:
                    expired_run = 0
                # 410 as an HTTP status: kubernetes' ApiException or kubehttp's ApiError (both have .status)
                if isinstance(exc, _Expired) or getattr(exc, "status", None) == 410:
                    with self._lock:
                        self._stats["expired"] += 1
                    need_list = True
                    expired_run += 1
                    log.info("informer %s: resourceVersion %s expired; relisting", self.name, self._resource_version)
                    # Relist at once; back off only when expiries repeat with no good watch between.
                    if expired_run > 1 and self._stopping.wait(self._backoff(expired_run - 1)):
                        break
                    continue
                failures += 1
                with self._lock:
                    self._stats["reconnects"] += 1
                self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                delay = self._backoff(failures)
                (log.warning if failures in (1, 5) or failures % 20 == 0 else log.debug)(
                    "informer %s: %s; retrying in %.1fs (attempt %d)", self.name, self.last_error, delay, failures)
                if self._stopping.wait(delay):
                    break

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_initial * (2 ** min(failures - 1, 30)))
        return delay * random.uniform(0.5, 1.0)   # jitter: reconnecting agents do not stampede

    def _selectors(self) -> dict[str, str]:
        kw = {}
        if self.field_selector:
            kw["field_selector"] = self.field_selector
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        return kw

    def _list(self) -> bool:
        """List every page, then swap the store; False if stopped before the end."""
        items: list[Obj] = []
        cont: str | None = None
        rv = None
        while True:
            kw = self._selectors()
            if self.page_size:
                kw["limit"] = self.page_size
            if cont:
                kw["_continue"] = cont
            resp = self.list_func(_preload_content=False, _request_timeout=(self.request_timeout, self.request_timeout),
                                  **kw)
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion")
            for obj in body.get("items") or ():
                items.append(self.transform(obj) if self.transform else obj)
            cont = meta.get("continue")
            if not cont:
                break
            if self._stopping.is_set():
                return False
        self._replace(items, rv)
        return True

    def _replace(self, items: list[Obj], rv: str | None) -> None:
        """Swap in a full list and tell handlers what changed since the old store."""
        new = {}
        for obj in items:
            uid = _uid(obj)
            if uid:
                new[uid] = obj
        with self._lock:
            old = self._store
            self._store = new
            self._resource_version = rv
            first = self._stats["lists"] == 0
            self._stats["lists"] += 1
            if not first:
                self._stats["relists"] += 1
        for uid, obj in old.items():
            if uid not in new:
                self._call(self.on_delete, obj)
        for uid, obj in new.items():
            prev = old.get(uid)
            if prev is None:
                self._call(self.on_add, obj)
            elif _rv(prev) != _rv(obj):
                self._call(self.on_update, prev, obj)
        self._synced.set()

    def _watch(self) -> None:
        resp = self.list_func(
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
            # The server ends the watch after watch_timeout; a read that waits much longer than
            # that means the connection died silently.
            _request_timeout=(self.request_timeout, self.watch_timeout + self.request_timeout),
            **self._selectors(),
        )
        self._resp = resp
        self._watch_opened = True
        try:
            if self._stopping.is_set():
                return
            for line in _iter_lines(resp):
                if not line:
                    continue
                event = json.loads(line)
                self._apply(event.get("type"), event.get("object") or {})
                if self._stopping.is_set():
                    return
        finally:
            self._resp = None
            resp.close()          # a half-read or cut stream must not go back to the pool
            resp.release_conn()

    def _apply(self, type_: str | None, obj: Obj) -> None:
        if type_ == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Expired()
            raise RuntimeError(f"watch error {code} {obj.get('reason')}: {obj.get('message')}")
        self._watch_progress = True
        rv = _rv(obj)
        if type_ == "BOOKMARK":
            with self._lock:
                self._stats["bookmarks"] += 1
                if rv:
                    self._resource_version = rv
            return
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            raise RuntimeError(f"unknown watch event type {type_!r}")
        uid = _uid(obj)
        if self.transform:
            obj = self.transform(obj)
        with self._lock:
            self._stats["events"] += 1
            if rv:
                self._resource_version = rv
            if not uid:
                return
            prev = self._store.get(uid)
            if type_ == "DELETED":
                self._store.pop(uid, None)
            else:
                self._store[uid] = obj
        if type_ == "DELETED":
            if prev is not None:
                self._call(self.on_delete, obj)
        elif prev is None:
            self._call(self.on_add, obj)
        else:
            self._call(self.on_update, prev, obj)

    def _call(self, handler, *args) -> None:
        if handler is None:
            return
        try:
            handler(*args)
        except Exception:
            with self._lock:
                self._stats["handler_errors"] += 1
            log.exception("informer %s: handler %s failed", self.name, getattr(handler, "__name__", handler))


def _iter_lines(resp):
    """The lines of a streamed watch response as they arrive (urllib3's `.stream()` or
    http.client's `.read1()`), without waiting for a buffer to fill."""
    if hasattr(resp, "read1"):
        chunks = iter(lambda: resp.read1(65536), b"")
    else:
        chunks = resp.stream(amt=None, decode_content=False)
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            yield line.decode("utf-8")
    if buf.strip():
        yield buf.decode("utf-8")


def _cut(resp) -> None:
    """Unblock a thread reading a watch response by shutting its socket down."""
    if resp is None:
        return
    import socket

    conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------- list functions

_QUERY_NAMES = (
    ("field_selector", "fieldSelector"), ("label_selector", "labelSelector"), ("limit", "limit"),
    ("_continue", "continue"), ("resource_version", "resourceVersion"), ("watch", "watch"),
    ("allow_watch_bookmarks", "allowWatchBookmarks"), ("timeout_seconds", "timeoutSeconds"),
)


def api_lister(api, path: str) -> Callable[..., Any]:
    """A list function for `Informer` on an API collection path (e.g. "/api/v1/pods"),
    called like the client's generated `list_*` functions with `_preload_content=False`.

    It runs the client's own request pipeline (ApiClient.param_serialize/call_api: the
    configuration, token refresh, TLS and urllib3 transport of `api`) without importing the
    generated API classes: `CoreV1Api` alone costs ~21 MiB and ~1 s to import here, which
    the node agent's 128 MiB budget cannot spare. For a `node_agent.kubehttp.HttpApi` it
    sends the same request over the standard library (no kubernetes import at all).
    """
    if hasattr(api, "get") and hasattr(api, "host"):
        return _http_lister(api, path)
    from kubernetes.client.exceptions import ApiException

    def list_func(*, _preload_content: bool = False, _request_timeout=None, **kwargs):
        if _preload_content:
            raise ValueError("api_lister functions return the raw response (_preload_content=False)")
        unknown = set(kwargs) - {k for k, _ in _QUERY_NAMES}
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}")
        query = [(wire, kwargs[k]) for k, wire in _QUERY_NAMES if kwargs.get(k) is not None]
        method, url, headers, body, post = api.param_serialize(
            method="GET", resource_path=path, query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        resp = api.call_api(method, url, header_params=headers, body=body, post_params=post,
                            _request_timeout=_request_timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    list_func.__name__ = f"list {path}"
    return list_func


def _http_lister(api, path: str) -> Callable[..., Any]:
    def list_func(*, _preload_content: bool = False, _request_timeout=None, **kwargs):
        if _preload_content:
            raise ValueError("api_lister functions return the raw response (_preload_content=False)")
        unknown = set(kwargs) - {k for k, _ in _QUERY_NAMES}
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}")
        query = [(wire, kwargs[k]) for k, wire in _QUERY_NAMES if kwargs.get(k) is not None]
        return api.get(path, query, timeout=_request_timeout)

    list_func.__name__ = f"list {path}"
    return list_func


# --------------------------------------------------------------------------- pod index


def canonical_ip(text: str | None) -> str | None:
    """IPv4 dotted quad / IPv6 compressed (the lake's form), or None if not an IP."""
    if not text:
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def pod_ips(pod: Obj) -> list[str]:
    """All of a pod's IPs (status.podIPs, dual stack), canonical, in order, without repeats."""
    status = pod.get("status") or {}
    raw = [p.get("ip") for p in status.get("podIPs") or () if isinstance(p, dict)]
    if not raw and status.get("podIP"):
        raw = [status["podIP"]]
    out: list[str] = []
    for ip in raw:
        c = canonical_ip(ip)
        if c and c not in out:
            out.append(c)
    return out


def _slim_pod(pod: Obj) -> Obj:
    """What the pod index keeps of a pod (a few hundred bytes instead of tens of KiB)."""
    md = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {k: md.get(k) for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
        "spec": {"nodeName": spec.get("nodeName"), "hostNetwork": bool(spec.get("hostNetwork"))},
        "status": {"phase": status.get("phase"), "podIP": status.get("podIP"), "podIPs": status.get("podIPs")},
    }


_DONE_PHASES = ("Succeeded", "Failed")


class PodIndex:
    """Pods scheduled on one node, by IP.

    `lookup(ip)` -> (name, namespace, host_network) or None, for every pod IP (both
    families). An IP held by several pods resolves to the best claimant: a running pod over
    a finished one (finished pods keep their IP in status while the IP is reused), a pod
    network pod over a hostNetwork one, then the newest. hostNetwork pods carry the node's
    IP, so a lookup that returns host_network=True means "the node": callers must attribute
    such traffic to the node, not to that pod. `local_ips()` is the set of pod-network IPs
    on this node (hostNetwork pods excluded).

    A deleted pod keeps its IPs for `retain_deleted` seconds (at least a window plus
    conntrack's TIME_WAIT, so its last connections' DESTROY still finds it), below any live
    claimant of the same IP; a relist after 410 Gone deletes through the same path. The
    node's `spec.podCIDRs` (read once from the Node object) make `in_pod_cidr(ip)` answer
    before the informer has synced.
    """

    def __init__(self, api, node_name: str, *, start: bool = True, retain_deleted: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, **informer_kwargs):
        self.node_name = node_name
        self.retain_deleted = retain_deleted
        self.clock = clock
        self._lock = threading.Lock()
        self._pods: dict[str, tuple[tuple[str, ...], tuple]] = {}    # uid -> (ips, entry)
        self._claims: dict[str, dict[str, tuple]] = {}               # ip -> {uid: entry}
        self._best: dict[str, tuple[str, str, bool]] = {}            # ip -> answer
        self._gone: dict[str, tuple[float, tuple[str, ...]]] = {}    # deleted uid -> (expiry, ips)
        self._cidrs: list = []                                       # the node's pod CIDRs
        self._cidr_thread: threading.Thread | None = None
        self._api = api
        self._stats_gone = 0
        informer_kwargs.setdefault("transform", _slim_pod)
        self.informer = Informer(
            api_lister(api, "/api/v1/pods"),
            field_selector=f"spec.nodeName={node_name}",
            name=f"pods@{node_name}",
            on_add=self._upsert,
            on_update=lambda old, new: self._upsert(new),
            on_delete=self._remove,
            **informer_kwargs,
        )
        if start:
            self.start()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "PodIndex":
        self.informer.start()
        if self._cidr_thread is None:
            self._cidr_thread = threading.Thread(target=self._read_pod_cidrs, name="node-podcidrs", daemon=True)
            self._cidr_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.informer.stop(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self.informer.wait_synced(timeout)

    @property
    def synced(self) -> bool:
        return self.informer.synced

    def stats(self) -> dict[str, int]:
        out = self.informer.stats()
        with self._lock:
            out["ips"] = len(self._best)
            out["deleted_retained"] = len(self._gone)
            out["pod_cidrs"] = len(self._cidrs)
        return out

    def _read_pod_cidrs(self) -> None:
        """GET the Node object once (retrying with backoff until it answers) for spec.podCIDRs."""
        get = api_lister(self._api, f"/api/v1/nodes/{self.node_name}")
        delay = 1.0
        while not self.informer._stopping.is_set():
            try:
                resp = get(_preload_content=False, _request_timeout=(10, 10))
                try:
                    node = json.loads(resp.data)
                finally:
                    resp.release_conn()
                spec = node.get("spec") or {}
                nets = []
                for c in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
                    try:
                        nets.append(ipaddress.ip_network(c, strict=False))
                    except ValueError:
                        log.warning("node %s: ignoring pod CIDR %r", self.node_name, c)
                with self._lock:
                    self._cidrs = nets
                log.info("node %s: pod CIDRs %s", self.node_name, ", ".join(map(str, nets)) or "none")
                return
            except Exception as exc:  # noqa: BLE001 - RBAC, transport: retried, pods still come from the informer
                status = getattr(exc, "status", None)
                why = f"{status} {getattr(exc, 'reason', '')}".strip() if status else " ".join(str(exc).split())[:200]
                if status == 404:
                    log.warning("node %s: no such Node object; pod CIDRs unknown (pods are still named by the informer)",
                                self.node_name)
                    return
                (log.warning if delay <= 1 else log.debug)(
                    "node %s: cannot read spec.podCIDRs (%s); retrying", self.node_name, why)
            if self.informer._stopping.wait(delay):
                return
            delay = min(delay * 2, 60.0)

    # ---------------------------------------------------------------- queries

    def lookup(self, ip: str) -> tuple[str, str, bool] | None:
        with self._lock:
            if self._gone:
                self._expire()
            return self._best.get(ip)

    def in_pod_cidr(self, ip: str) -> bool:
        cidrs = self._cidrs
        if not cidrs:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in cidrs if n.version == addr.version)

    def local_ips(self) -> set[str]:
        with self._lock:
            if self._gone:
                self._expire()
            return {ip for ip, ans in self._best.items() if not ans[2]}

    # ---------------------------------------------------------------- maintenance

    def _upsert(self, pod: Obj) -> None:
        md = pod.get("metadata") or {}
        uid = md.get("uid")
        if not uid:
            return
        spec = pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        # Sort key: higher is better (live, running, pod network, newer).
        entry = (True, phase not in _DONE_PHASES, not spec.get("hostNetwork"), md.get("creationTimestamp") or "",
                 md.get("name"), md.get("namespace"), bool(spec.get("hostNetwork")))
        ips = tuple(pod_ips(pod))
        with self._lock:
            self._gone.pop(uid, None)
            old_ips = self._pods.get(uid, ((), None))[0]
            self._pods[uid] = (ips, entry)
            for ip in old_ips:
                if ip not in ips:
                    self._unclaim(ip, uid)
            for ip in ips:
                self._claims.setdefault(ip, {})[uid] = entry
                self._refresh(ip)

    def _remove(self, pod: Obj) -> None:
        """A deleted pod's IPs stay claimed, below any live pod, for `retain_deleted` s."""
        uid = (pod.get("metadata") or {}).get("uid")
        with self._lock:
            ips, entry = self._pods.pop(uid, ((), None))
            if entry is None:
                return
            if self.retain_deleted <= 0:
                for ip in ips:
                    self._unclaim(ip, uid)
                return
            ghost = (False,) + entry[1:]
            for ip in ips:
                claims = self._claims.get(ip)
                if claims is not None and uid in claims:
                    claims[uid] = ghost
                    self._refresh(ip)
            self._gone[uid] = (self.clock() + self.retain_deleted, ips)

    def _expire(self) -> None:
        """Forget deleted pods past their retention. Lock held."""
        now = self.clock()
        for uid in [u for u, (t, _) in self._gone.items() if t <= now]:
            _, ips = self._gone.pop(uid)
            for ip in ips:
                self._unclaim(ip, uid)

    def _unclaim(self, ip: str, uid: str) -> None:
        claims = self._claims.get(ip)
        if claims is not None:
            claims.pop(uid, None)
            if not claims:
                del self._claims[ip]
        self._refresh(ip)

    def _refresh(self, ip: str) -> None:
        claims = self._claims.get(ip)
        if not claims:
            self._best.pop(ip, None)
            return
        best = max(claims.values(), key=lambda e: e[:5])
        self._best[ip] = (best[4], best[5], best[6])


def wait_all_synced(informers: Iterable[Informer], timeout: float | None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    for inf in informers:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not inf.wait_synced(left):
            return False
    return True


def __getattr__(name: str):
    # InventoryWatcher lives with the inventory builders (it needs pyarrow); importable from
    # here too, since it is an informer user like PodIndex.
    if name == "InventoryWatcher":
        from node_agent.inventory import InventoryWatcher

        return InventoryWatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
