"""JupyterLab, as the README starts it, serves the cost notebook and runs it: a real Jupyter
server on loopback (random port, token), the notebook opened through its contents REST API,
a kernel session started through /api/sessions, and every code cell executed over the
kernel's websocket channel (Jupyter messaging protocol), as the browser does."""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket

import costs_expected as X
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
NB_PATH = "notebooks/cost_exploration.ipynb"


class Jupyter:
    def __init__(self, root: Path, env: dict, tmp: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("jupyter")
        self.log = open(tmp / "jupyter.log", "wb")
        self.proc = subprocess.Popen(
            [str(exe), "lab", "--allow-root", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}"} if auth else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            return r.status, (json.loads(data) if r.headers.get_content_type() == "application/json" else data.decode())

    def wait(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(self.log.name)}")
            try:
                self.request("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("jupyter lab did not answer within 90 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Kernel:
    """One kernel's websocket channel: execute code, collect its outputs."""

    def __init__(self, server: Jupyter, kernel_id: str):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels",
            header=[f"Authorization: token {server.token}"], timeout=300)
        self.session = uuid.uuid4().hex

    def execute(self, code: str) -> tuple[str, list[dict]]:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3",
                       "date": dt.datetime.now(dt.timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        outputs, status, idle = [], None, False
        while status is None or not idle:
            m = json.loads(self.ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = m["header"]["msg_type"]
            if m["channel"] == "shell" and kind == "execute_reply":
                status = m["content"]["status"]
            elif kind == "status":
                idle = m["content"]["execution_state"] == "idle"
            elif kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"type": kind, **m["content"]})
        return status, outputs

    def close(self) -> None:
        self.ws.close()


@pytest.mark.slow
def test_jupyterlab_opens_and_runs_the_notebook(costed_lake, tmp_path):
    env = dict(os.environ, NETMON_LAKE=str(costed_lake), MPLBACKEND="module://matplotlib_inline.backend_inline",
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), IPYTHONDIR=str(tmp_path / "ipy"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    for k in ("NETMON_S3_ENDPOINT", "NETMON_START", "NETMON_END", "NETMON_NAMESPACES"):
        env.pop(k, None)
    server = Jupyter(REPO, env, tmp_path)
    try:
        server.wait()
        # the token is required: an anonymous client is refused
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.request("GET", f"/api/contents/{NB_PATH}", auth=False)
        assert refused.value.code in (401, 403)
        status, page = server.request("GET", f"/lab/tree/{NB_PATH}")
        assert status == 200 and "JupyterLab" in page
        status, model = server.request("GET", f"/api/contents/{NB_PATH}")
        assert status == 200 and model["type"] == "notebook"
        cells = [c for c in model["content"]["cells"] if c["cell_type"] == "code"]
        status, sess = server.request("POST", "/api/sessions", {
            "path": NB_PATH, "type": "notebook", "name": "cost_exploration.ipynb", "kernel": {"name": "python3"}})
        assert status == 201
        kernel = Kernel(server, sess["kernel"]["id"])
        try:
            images = 0
            for cell in cells:
                src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
                st, outs = kernel.execute(src)
                errs = [o for o in outs if o["type"] == "error"]
                assert st == "ok" and not errs, (src[:80], errs and errs[0]["evalue"])
                images += sum("image/png" in o.get("data", {}) for o in outs)
            assert images == 6
            # the tables the notebook computed in the server's kernel equal the files
            st, outs = kernel.execute("print(classes.to_json(orient='records', double_precision=15)); print(LAKE)")
            text = "".join(o.get("text", "") for o in outs if o["type"] == "stream").splitlines()
            assert text[1] == str(costed_lake)
            got = {r["traffic_class"]: (r["gb"], r["cost_usd"]) for r in json.loads(text[0])}
            want = X.by_class(X.cost_flows(costed_lake))
            assert set(got) == set(want)
            for cls, (gb, usd) in got.items():
                assert gb == pytest.approx(want[cls][0] / X.GB, rel=1e-9)
                assert usd == pytest.approx(want[cls][1], rel=1e-9, abs=1e-12)
        finally:
            kernel.close()
        status, _ = server.request("DELETE", f"/api/sessions/{sess['id']}")
        assert status == 204
    finally:
        server.stop()
