"""Kubernetes API client construction: in-cluster service account, else a kubeconfig.

Errors are `KubeConfigError` with one line that says what to fix, so the CLI can print
`error: ...` and exit 2 instead of a traceback.
"""
from __future__ import annotations

import copy
import json
import os

from lake.storage import one_line

# The kubernetes package is imported inside the functions that need it: the node agent's
# pod informer uses node_agent/kubehttp.py instead (~30 MiB less RSS).

DEFAULT_KUBECONFIG = "~/.kube/config"


class KubeConfigError(Exception):
    """No usable Kubernetes configuration, or the API server cannot be reached."""


def _line(exc: BaseException) -> str:
    return one_line(exc, limit=None)   # Kubernetes errors name the server: keep them whole


def kubeconfig_files(kubeconfig: str | None) -> list[str] | None:
    """Where the credentials come from, as kubectl resolves it: None for the in-cluster
    service account, else the kubeconfig files to read (KubeConfigError if none exists).

    Order: an explicit `kubeconfig` argument; else in-cluster config when
    KUBERNETES_SERVICE_HOST is set and $KUBECONFIG is not; else $KUBECONFIG (a
    colon-separated list is merged, as kubectl does); else ~/.kube/config. Shared by the
    kubernetes client below and the agent's own client (node_agent/kubehttp.py)."""
    env_kubeconfig = os.environ.get("KUBECONFIG", "").strip()
    if not kubeconfig and not env_kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    if kubeconfig:
        source, paths = "--kubeconfig", [kubeconfig]
    elif env_kubeconfig:
        source, paths = "$KUBECONFIG", [p for p in env_kubeconfig.split(os.pathsep) if p]
    else:
        source, paths = "default", [DEFAULT_KUBECONFIG]
    expanded = [os.path.expanduser(p) for p in paths]
    existing = [p for p in expanded if os.path.isfile(p)]
    if not existing:
        hint = ("" if source != "default" else
                " (not in a cluster: KUBERNETES_SERVICE_HOST is unset); pass --kubeconfig PATH or set KUBECONFIG")
        raise KubeConfigError(f"kubeconfig not found: {', '.join(expanded)}{hint}")
    return existing


def load_api_client(kubeconfig: str | None):
    """An ApiClient for the cluster we run in, or for `kubeconfig` (see kubeconfig_files)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    existing = kubeconfig_files(kubeconfig)
    cfg = k8s_client.Configuration()
    if existing is None:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except (k8s_config.ConfigException, OSError) as exc:
            raise KubeConfigError(f"in-cluster Kubernetes config is unusable: {_line(exc)}") from None
        return k8s_client.ApiClient(configuration=cfg)
    try:
        k8s_config.load_kube_config(config_file=os.pathsep.join(existing), client_configuration=cfg,
                                    persist_config=False)
    except Exception as exc:  # the loader raises ConfigException, yaml errors, KeyError, TypeError...
        raise KubeConfigError(f"invalid kubeconfig {', '.join(existing)}: {_line(exc)}") from None
    if not cfg.host or cfg.host == "http://localhost":
        raise KubeConfigError(f"invalid kubeconfig {', '.join(existing)}: no cluster server address")
    return k8s_client.ApiClient(configuration=cfg)


def _reason(exc: BaseException) -> str:
    """The root cause of a transport error, in a few words."""
    import urllib3.exceptions as u3

    seen = exc
    while True:
        if isinstance(seen, u3.MaxRetryError) and seen.reason is not None:
            seen = seen.reason
            continue
        if isinstance(seen, u3.NewConnectionError):  # (a ConnectTimeoutError subclass: test it first)
            text = str(seen)
            marker = "Failed to establish a new connection: "
            return _line(text.split(marker, 1)[1] if marker in text else text)
        if isinstance(seen, (u3.ConnectTimeoutError, u3.ReadTimeoutError)):
            return "timed out"
        if isinstance(seen, u3.ProtocolError) and seen.args and len(seen.args) > 1:
            seen = seen.args[1]
            continue
        return _line(seen)


def check_reachable(api, timeout: float = 5.0) -> str:
    """GET /version with one attempt bounded by `timeout` (connect and read); returns the
    server's gitVersion. Raises KubeConfigError naming the server on any failure."""
    import urllib3
    from kubernetes import client as k8s_client

    host = api.configuration.host
    cfg = copy.copy(api.configuration)
    cfg.retries = False            # one bounded attempt, not urllib3's default three retries
    probe = k8s_client.ApiClient(configuration=cfg)
    try:
        resp = k8s_client.VersionApi(probe).get_code(_preload_content=False, _request_timeout=(timeout, timeout))
        try:
            info = json.loads(resp.data)
        except ValueError:
            raise KubeConfigError(f"{host} did not answer /version like a Kubernetes API server") from None
        finally:
            resp.release_conn()
        return str(info.get("gitVersion") or "") if isinstance(info, dict) else ""
    except k8s_client.ApiException as exc:
        if exc.status in (401, 403):
            raise KubeConfigError(
                f"the Kubernetes API server at {host} rejected our credentials: {exc.status} {exc.reason}") from None
        if exc.status == 0:  # transport failures the client wraps (e.g. TLS)
            raise KubeConfigError(f"cannot reach the Kubernetes API server at {host}: {_line(exc.reason)}") from None
        raise KubeConfigError(f"the Kubernetes API server at {host} answered {exc.status} {exc.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise KubeConfigError(f"cannot reach the Kubernetes API server at {host}: {_reason(exc)}") from None
    finally:
        probe.close()
