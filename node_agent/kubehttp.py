"""A small Kubernetes API client over the standard library, for the node agent's pod informer.

Why not the `kubernetes` package in the node agent: importing it costs ~30 MiB of RSS (its
~700 generated models and pydantic), a quarter of the agent's 128 MiB limit, for what is
here three GET requests (list, watch, one Node). The informer (node_agent/informer.py) only
needs `api_lister(api, path)` functions that return a raw response; this module provides
the same dialect over `http.client` + `ssl`. The inventory snapshotter, which has no such
budget, keeps the `kubernetes` client (node_agent/kube.py).

Configuration, as kubectl resolves it: an explicit kubeconfig; else the in-cluster service
account when KUBERNETES_SERVICE_HOST is set and $KUBECONFIG is not; else $KUBECONFIG (the
first file that has the current context); else ~/.kube/config. Supported credentials:
token, tokenFile, client certificate and key (file or data), basic auth; CA file or data,
`insecure-skip-tls-verify`. Kubeconfigs that need an `exec` or
`auth-provider` plugin fall back to the `kubernetes` client (`load_http_api` returns
None). The service account token is re-read every minute (kubelet rotates it).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from urllib.parse import quote, urlencode, urlsplit

from node_agent.kube import KubeConfigError, kubeconfig_files

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    """A non-2xx answer: `.status` and `.reason` as the kubernetes client's ApiException."""

    def __init__(self, status: int, reason: str, body: bytes = b""):
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"({status}) Reason: {reason}")


class Response:
    """A raw response: `.data` (whole body), `.read1` (streaming), `.release_conn()`, `.close()`."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.connection = conn           # .sock: node_agent.informer._cut shuts it down to stop a watch
        self._resp = resp
        self.status = resp.status
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self._resp.read()
        return self._data

    def read1(self, n: int = 65536) -> bytes:
        return self._resp.read1(n)

    def release_conn(self) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._resp.close()
        finally:
            self.connection.close()


class HttpApi:
    """One API server endpoint with its credentials (thread-safe: a connection per request)."""

    def __init__(self, host: str, *, token: str | None = None, token_file: str | None = None,
                 basic: tuple[str, str] | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, verify: bool = True):
        self.host = host.rstrip("/")
        u = urlsplit(self.host)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise KubeConfigError(f"invalid API server address {host!r}")
        self._https = u.scheme == "https"
        self._addr = (u.hostname, u.port or (443 if self._https else 80))
        self._prefix = u.path.rstrip("/")
        self._token, self._token_file, self._basic = token, token_file, basic
        self._token_read = 0.0
        self._lock = threading.Lock()
        self._ctx = None
        if self._https:
            ctx = ssl.create_default_context(cafile=ca_file) if verify else ssl._create_unverified_context()
            if not verify:
                ctx.check_hostname = False
            if cert_file:
                ctx.load_cert_chain(cert_file, key_file)
            self._ctx = ctx

    @property
    def configuration(self):
        """`.configuration.host`, as on a kubernetes ApiClient (for log lines)."""
        return self

    def close(self) -> None:
        pass

    def _auth(self) -> str | None:
        if self._token_file:
            with self._lock:
                if self._token is None or time.monotonic() - self._token_read > 60:
                    try:
                        with open(self._token_file) as f:
                            self._token = f.read().strip()
                        self._token_read = time.monotonic()
                    except OSError:
                        if self._token is None:
                            raise
        if self._token:
            return f"Bearer {self._token}"
        if self._basic:
            return "Basic " + base64.b64encode(f"{self._basic[0]}:{self._basic[1]}".encode()).decode()
        return None

    def get(self, path: str, query: list[tuple[str, object]] | None = None, timeout=None) -> Response:
        """GET path?query; raises ApiError for a non-2xx status, OSError for transport errors.
        `timeout`: seconds or (connect, read)."""
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        if self._https:
            conn = http.client.HTTPSConnection(*self._addr, timeout=connect, context=self._ctx)
        else:
            conn = http.client.HTTPConnection(*self._addr, timeout=connect)
        qs = urlencode([(k, _wire(v)) for k, v in (query or ())])
        url = quote(self._prefix + path) + (f"?{qs}" if qs else "")
        headers = {"Accept": "application/json", "User-Agent": "netmon-agent"}
        auth = self._auth()
        if auth:
            headers["Authorization"] = auth
        try:
            conn.request("GET", url, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(read)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        out = Response(conn, resp)
        if not 200 <= resp.status <= 299:
            body = out.data
            out.close()
            raise ApiError(resp.status, resp.reason, body)
        return out


def _wire(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


# ---------------------------------------------------------------------------- configuration


def load_http_api(kubeconfig: str | None) -> HttpApi | None:
    """An HttpApi for the cluster we run in or for `kubeconfig` (resolved by
    node_agent.kube.kubeconfig_files, as for the kubernetes client), KubeConfigError with
    one line if there is none, or None when the kubeconfig needs a credential plugin (use the kubernetes client then)."""
    existing = kubeconfig_files(kubeconfig)
    return _in_cluster() if existing is None else _from_kubeconfig(existing)


def _in_cluster() -> HttpApi:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not port:
        raise KubeConfigError("in-cluster Kubernetes config is unusable: Service host/port is not set.")
    token, ca = os.path.join(SA_DIR, "token"), os.path.join(SA_DIR, "ca.crt")
    if not os.path.isfile(token):
        raise KubeConfigError("in-cluster Kubernetes config is unusable: Service token file does not exist.")
    if not os.path.isfile(ca):
        raise KubeConfigError("in-cluster Kubernetes config is unusable: Service certification file does not exist.")
    h = f"[{host}]" if ":" in host else host
    return HttpApi(f"https://{h}:{port}", token_file=token, ca_file=ca)


def _from_kubeconfig(paths: list[str]) -> HttpApi | None:
    import yaml

    where = ", ".join(paths)
    docs = []
    try:
        for p in paths:
            with open(p) as f:
                d = yaml.safe_load(f) or {}
            if not isinstance(d, dict):
                raise ValueError("not a mapping")
            docs.append((p, d))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"invalid kubeconfig {where}: {' '.join(str(exc).split())[:200]}") from None

    def named(kind: str, name):
        for p, d in docs:   # the first file that defines a name wins, as in kubectl's merge
            for item in d.get(kind) or ():
                if isinstance(item, dict) and item.get("name") == name:
                    return p, item.get(kind[:-1]) or {}
        return None, None

    current = next((d.get("current-context") for _, d in docs if d.get("current-context")), None)
    if not current:
        raise KubeConfigError(f"invalid kubeconfig {where}: no current-context")
    _, ctx = named("contexts", current)
    if ctx is None:
        raise KubeConfigError(f"invalid kubeconfig {where}: context {current!r} not found")
    cpath, cluster = named("clusters", ctx.get("cluster"))
    upath, user = named("users", ctx.get("user"))
    if not cluster or not cluster.get("server"):
        raise KubeConfigError(f"invalid kubeconfig {where}: no cluster server address")
    user = user or {}
    if user.get("exec") or user.get("auth-provider") or cluster.get("tls-server-name") or cluster.get("proxy-url"):
        return None   # a credential plugin, SNI override or proxy: the kubernetes client handles it
    base_c = os.path.dirname(cpath or paths[0])
    base_u = os.path.dirname(upath or paths[0])
    try:
        ca = _file_or_data(cluster, "certificate-authority", base_c)
        cert = _file_or_data(user, "client-certificate", base_u)
        key = _file_or_data(user, "client-key", base_u)
        token_file = user.get("tokenFile")
        return HttpApi(
            cluster["server"], token=user.get("token"),
            token_file=os.path.join(base_u, token_file) if token_file else None,
            basic=(user["username"], user.get("password", "")) if user.get("username") else None,
            ca_file=ca, cert_file=cert, key_file=key, verify=not cluster.get("insecure-skip-tls-verify"))
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise KubeConfigError(f"invalid kubeconfig {where}: {' '.join(str(exc).split())[:200]}") from None


_TEMP: list[str] = []


def _file_or_data(section: dict, key: str, base: str) -> str | None:
    """A path for `key` or `key-data` (data is written to a private temp file: ssl loads files)."""
    if section.get(f"{key}-data"):
        fd, path = tempfile.mkstemp(prefix="netmon-kube-")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(section[f"{key}-data"]))
        _TEMP.append(path)
        return path
    if section.get(key):
        return os.path.join(base, os.path.expanduser(section[key]))
    return None


def check_reachable_http(api: HttpApi, timeout: float = 5.0) -> str:
    """GET /version in one bounded attempt; the server's gitVersion, or KubeConfigError with
    the same one-line messages as node_agent.kube.check_reachable."""
    host = api.host
    try:
        resp = api.get("/version", timeout=(timeout, timeout))
        try:
            info = json.loads(resp.data)
        except ValueError:
            raise KubeConfigError(f"{host} did not answer /version like a Kubernetes API server") from None
        finally:
            resp.close()
        return str(info.get("gitVersion") or "") if isinstance(info, dict) else ""
    except ApiError as exc:
        if exc.status in (401, 403):
            raise KubeConfigError(f"the Kubernetes API server at {host} rejected our credentials: {exc.status} {exc.reason}") from None
        raise KubeConfigError(f"the Kubernetes API server at {host} answered {exc.status} {exc.reason}") from None
    except (socket.timeout, TimeoutError):
        raise KubeConfigError(f"cannot reach the Kubernetes API server at {host}: timed out") from None
    except http.client.HTTPException as exc:
        raise KubeConfigError(f"{host} did not answer /version like a Kubernetes API server ({type(exc).__name__})") from None
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot reach the Kubernetes API server at {host}: {' '.join(str(exc).split())[:200]}") from None
