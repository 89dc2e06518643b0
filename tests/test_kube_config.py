"""Kubernetes client configuration: in-cluster vs kubeconfig, and one clear error line."""
from __future__ import annotations

import socket

import pytest
import yaml
from kubernetes.config import incluster_config

from fake_apiserver import FakeApiServer
from node_agent.kube import KubeConfigError, check_reachable, load_api_client


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))      # no ~/.kube/config


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def kubeconfig(path, server="http://127.0.0.1:6443", token="t0ken"):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))
    return str(path)


def test_no_configuration_at_all_says_what_to_do(tmp_path):
    with pytest.raises(KubeConfigError) as exc:
        load_api_client(None)
    msg = one_line(exc)
    assert str(tmp_path / "home" / ".kube" / "config") in msg
    assert "--kubeconfig" in msg and "KUBECONFIG" in msg


def test_missing_kubeconfig_path(tmp_path):
    missing = tmp_path / "nope" / "config"
    with pytest.raises(KubeConfigError) as exc:
        load_api_client(str(missing))
    assert one_line(exc) == f"kubeconfig not found: {missing}"


def test_missing_kubeconfig_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "a") + ":" + str(tmp_path / "b"))
    with pytest.raises(KubeConfigError) as exc:
        load_api_client(None)
    assert one_line(exc) == f"kubeconfig not found: {tmp_path / 'a'}, {tmp_path / 'b'}"


@pytest.mark.parametrize("content, fragment", [
    ("clusters: [unclosed", "invalid kubeconfig"),
    ("apiVersion: v1\nkind: Config\n", "current-context"),
    ("", "invalid kubeconfig"),
    ("apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
     "users: [{name: u, user: {token: t}}]\nclusters: []\n", "invalid kubeconfig"),
])
def test_invalid_kubeconfig_is_one_line(tmp_path, content, fragment):
    path = tmp_path / "config"
    path.write_text(content)
    with pytest.raises(KubeConfigError) as exc:
        load_api_client(str(path))
    msg = one_line(exc)
    assert msg.startswith(f"invalid kubeconfig {path}") and fragment in msg


def test_kubeconfig_argument_env_and_default_locations(tmp_path, monkeypatch):
    arg = kubeconfig(tmp_path / "arg", "http://127.0.0.1:1111")
    env = kubeconfig(tmp_path / "env", "http://127.0.0.1:2222")
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    kubeconfig(tmp_path / "home" / ".kube" / "config", "http://127.0.0.1:3333")
    assert load_api_client(None).configuration.host == "http://127.0.0.1:3333"
    monkeypatch.setenv("KUBECONFIG", env)
    assert load_api_client(None).configuration.host == "http://127.0.0.1:2222"
    client = load_api_client(arg)
    assert client.configuration.host == "http://127.0.0.1:1111"
    assert client.configuration.api_key["BearerToken"] == "Bearer t0ken"


def in_cluster_files(tmp_path, monkeypatch, token="sa-token"):
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    return sa


def test_in_cluster_config_when_running_in_a_pod(tmp_path, monkeypatch):
    sa = in_cluster_files(tmp_path, monkeypatch)
    client = load_api_client(None)     # builds the configuration only; nothing is contacted
    cfg = client.configuration
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ssl_ca_cert == str(sa / "ca.crt")
    assert cfg.api_key["BearerToken"] == "bearer sa-token"


def test_explicit_kubeconfig_wins_over_in_cluster(tmp_path, monkeypatch):
    in_cluster_files(tmp_path, monkeypatch)
    assert load_api_client(kubeconfig(tmp_path / "k", "http://127.0.0.1:4444")).configuration.host == \
        "http://127.0.0.1:4444"


def test_in_cluster_without_service_account_token_is_one_line(tmp_path, monkeypatch):
    sa = in_cluster_files(tmp_path, monkeypatch)
    (sa / "token").unlink()
    with pytest.raises(KubeConfigError) as exc:
        load_api_client(None)
    assert one_line(exc) == "in-cluster Kubernetes config is unusable: Service token file does not exist."


# ------------------------------------------------------------------------------ reachability
# Both clients: the kubernetes package (inventory) and node_agent/kubehttp.py (the node
# agent's `run`, no kubernetes import) give the same one-line answers.


@pytest.fixture(params=["kubernetes", "kubehttp"])
def client(request):
    if request.param == "kubernetes":
        return load_api_client, check_reachable
    from node_agent.kubehttp import check_reachable_http, load_http_api

    return load_http_api, check_reachable_http


@pytest.mark.slow
def test_reachable_server_reports_its_version(tmp_path, client):
    load_api_client, check_reachable = client
    with FakeApiServer() as srv:
        client = load_api_client(srv.write_kubeconfig(tmp_path / "k"))
        assert check_reachable(client) == "v1.31.0-netmon-fake"


@pytest.mark.slow
def test_stopped_server_is_one_clear_line(tmp_path, client):
    load_api_client, check_reachable = client
    srv = FakeApiServer().start()
    client = load_api_client(srv.write_kubeconfig(tmp_path / "k"))
    srv.stop()                                      # nothing listens on the port any more
    with pytest.raises(KubeConfigError) as exc:
        check_reachable(client, timeout=2)
    assert one_line(exc) == f"cannot reach the Kubernetes API server at {srv.url}: [Errno 111] Connection refused"


@pytest.mark.slow
def test_silent_server_times_out_with_one_clear_line(tmp_path, client):
    load_api_client, check_reachable = client
    # A socket that accepts connections (kernel backlog) but never answers: a hung server.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = load_api_client(kubeconfig(tmp_path / "k", url))
        with pytest.raises(KubeConfigError) as exc:
            check_reachable(client, timeout=0.5)
    assert one_line(exc) == f"cannot reach the Kubernetes API server at {url}: timed out"


@pytest.mark.slow
def test_rejected_credentials_are_one_clear_line(tmp_path, client):
    load_api_client, check_reachable = client
    with FakeApiServer() as srv:
        client = load_api_client(srv.write_kubeconfig(tmp_path / "k", token="stale"))
        with pytest.raises(KubeConfigError) as exc:
            check_reachable(client)
        assert one_line(exc) == f"the Kubernetes API server at {srv.url} rejected our credentials: 401 Unauthorized"


@pytest.mark.slow
def test_something_else_on_the_port_is_one_clear_line(tmp_path, client):
    load_api_client, check_reachable = client
    # An HTTP server that is not Kubernetes (answers /version with HTML).
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        client = load_api_client(kubeconfig(tmp_path / "k", url))
        with pytest.raises(KubeConfigError) as exc:
            check_reachable(client)
        assert one_line(exc) == f"{url} did not answer /version like a Kubernetes API server"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_agents_client_reads_kubeconfig_and_in_cluster_credentials(tmp_path, monkeypatch):
    from node_agent import kubehttp

    api = kubehttp.load_http_api(kubeconfig(tmp_path / "k", "http://127.0.0.1:1111", token="t0ken"))
    assert api.host == "http://127.0.0.1:1111" and api._auth() == "Bearer t0ken"
    with pytest.raises(KubeConfigError) as exc:
        kubehttp.load_http_api(str(tmp_path / "missing"))
    assert one_line(exc) == f"kubeconfig not found: {tmp_path / 'missing'}"
    (tmp_path / "bad").write_text("current-context: x\n")
    with pytest.raises(KubeConfigError) as exc:
        kubehttp.load_http_api(str(tmp_path / "bad"))
    assert one_line(exc) == f"invalid kubeconfig {tmp_path / 'bad'}: context 'x' not found"
    # a credential plugin: the kubernetes client handles it (None = use it)
    cfg = yaml.safe_load(open(kubeconfig(tmp_path / "e")))
    cfg["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "true"}}
    (tmp_path / "e").write_text(yaml.safe_dump(cfg))
    assert kubehttp.load_http_api(str(tmp_path / "e")) is None
    # in a pod: the service account, token re-read from its file
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_text(open(__import__("certifi").where()).read())
    monkeypatch.setattr(kubehttp, "SA_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = kubehttp.load_http_api(None)
    assert api.host == "https://10.96.0.1:443" and api._auth() == "Bearer sa-token"
    (sa / "token").unlink()
    with pytest.raises(KubeConfigError) as exc:
        kubehttp.load_http_api(None)
    assert one_line(exc) == "in-cluster Kubernetes config is unusable: Service token file does not exist."


def test_netmon_agent_run_imports_neither_kubernetes_nor_prometheus_client_nor_pyarrow_compute():
    """What `netmon-agent run` loads in a cluster (its modules, the client it uses)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from node_agent.lean import refuse_heavy_imports; refuse_heavy_imports()\n"
        "import node_agent.cli, node_agent.agent, node_agent.exporter, node_agent.spool, node_agent.health\n"
        "import node_agent.informer, node_agent.kubehttp, node_agent.enrich, node_agent.accounter\n"
        "import node_agent.collectors.conntrack\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'prometheus_client', 'pandas', 'numpy'}),\n"
        "      'pyarrow.compute' in sys.modules, 'pyarrow.dataset' in sys.modules)\n"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[] False False"
