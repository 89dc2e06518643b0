"""Peak RSS of a real `netmon-agent run` as in a cluster (root): the figure the DaemonSet's
memory request follows (docs/agent.md, "Memory"; deploy/ manifests).

The agent runs in a network namespace of our own against the fake API server (real
list/watch protocol) holding `--pods` pods on its node, with TCP traffic through it and a
/metrics scrape every second, for `--seconds`; then its VmHWM is read and it is stopped.

    sudo .venv/bin/python bench/agent_cluster.py [--pods 300] [--seconds 30]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def vm(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--netns-prefix", default="bench-cl", help="name prefix of the namespaces made")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: bench/agent_cluster.py needs root (network namespaces, conntrack)", file=sys.stderr)
        return 2
    from fake_apiserver import FakeApiServer
    from test_agent_e2e import PY, SERVER, AgentProc, in_netns, kube_pod, setup_namespaces, traffic

    a, b = setup_namespaces(args.netns_prefix)
    api = FakeApiServer()
    procs, agent = [], None
    tmp = tempfile.mkdtemp(prefix="netmon-bench-cluster-")
    try:
        in_netns(a, api.start)
        for i in range(args.pods):
            api.create("pods", kube_pod(f"pod-{i}", f"ns-{i % 20}", "node-a", [f"10.78.{i // 250}.{i % 250 + 1}"]))
        kubeconfig = api.write_kubeconfig(os.path.join(tmp, "kubeconfig"))
        server = b.popen(PY, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        port = 19808
        agent = AgentProc(a, ["run", "--node", "node-a", "--kubeconfig", kubeconfig, "--lake", os.path.join(tmp, "lake"),
                              "--spool", os.path.join(tmp, "spool"), "--poll-interval", "1s", "--flush-interval", "5s",
                              "--listen", f"127.0.0.1:{port}", "--no-dns"], os.path.join(tmp, "agent.log"), dict(os.environ))
        agent.wait_for("agent running")
        end = time.monotonic() + args.seconds
        scrapes = 0
        while time.monotonic() < end:
            traffic(a, [{"op": "tcp", "host": "10.77.0.2", "port": 8080, "size": 20000 + 100 * i} for i in range(20)])
            in_netns(a, lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
            scrapes += 1
            time.sleep(1.0)
        pid = agent.proc.pid
        hwm, now = vm(pid, "VmHWM"), vm(pid, "VmRSS")
        assert agent.terminate() == 0, agent.text()
    finally:
        if agent is not None:
            agent.kill()
        for p in procs:
            p.kill()
            p.wait()
        api.stop()
        a.delete()
        b.delete()
    print(f"netmon-agent run, {args.pods} pods in the informer, {args.seconds:.0f} s of traffic, "
          f"{scrapes} /metrics scrapes: peak RSS (VmHWM) {hwm:.1f} MiB, RSS at the end {now:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
