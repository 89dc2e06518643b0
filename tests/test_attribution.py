"""Pods that go away keep their bytes: the accounter, the attribution and the pod index
against the fake API server (the real kubernetes client speaking list/watch).

A pod's address is attributed when it first appears in a window; a deleted pod's IPs are
kept for a window plus TIME_WAIT; a relist after 410 Gone deletes through the same path;
the node's spec.podCIDRs keep pod flows local before the informer has synced."""
from __future__ import annotations

import datetime as dt

from test_accounter import T0, T1, conn, ended, rows, totals
from test_informer import FAST, informers, pod, server, wait_until  # noqa: F401 - fixtures

import pytest

from node_agent.accounter import Accounter
from node_agent.enrich import Attribution
from node_agent.informer import PodIndex

NODE_IP, POD_IP, OTHER_POD, PEER = "10.0.0.5", "10.1.0.7", "10.1.0.9", "10.2.0.9"


@pytest.fixture
def api(server, tmp_path, monkeypatch):
    """The node agent's own client (node_agent/kubehttp.py), as `netmon-agent run` uses it."""
    from node_agent.kubehttp import load_http_api

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return load_http_api(server.write_kubeconfig(tmp_path / "kubeconfig"))


def node(name, cidrs):
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}


def test_a_pod_deleted_mid_window_and_a_watch_restart_keep_its_bytes(server, api, informers):
    server.create("nodes", node("n1", ["10.1.0.0/24"]))
    server.create("pods", pod("web-0", "n1", [POD_IP], ns="shop"))
    idx = PodIndex(api, "n1", retain_deleted=300, **FAST)
    informers.append(idx)
    assert idx.wait_synced(20)
    attr = Attribution(lambda: {NODE_IP}, idx)
    acc = Accounter(resolve=attr.resolve)
    c = conn(1, POD_IP, PEER, 40000, 443, 0, 0, 0, 0)
    acc.observe_dump([])                                              # baseline
    acc.observe_ended([])
    acc.observe_dump([c._replace(orig_bytes=4000, orig_packets=4, reply_bytes=9000, reply_packets=6)])
    server.delete("pods", "web-0", "shop")                            # mid-window
    wait_until(lambda: idx.stats()["deleted_retained"] == 1, what="deletion seen")
    acc.observe_ended([ended(c, 4500, 6, 9100, 8)])                   # its last bytes, after the deletion
    (r,) = rows(acc.cut(T0, T1, "n1", attr.is_local, attr.lookup))
    assert (r["direction"], r["src_pod"], r["src_namespace"]) == ("outbound", "web-0", "shop")
    assert totals(r) == (4500, 6, 9100, 8, 1)

    # The next window: a connection of the deleted pod still in TIME_WAIT ends while the watch
    # restarts with 410 Gone (the relist finds the pod gone): its bytes stay the pod's.
    c2 = conn(2, POD_IP, PEER, 40001, 443, 0, 0, 0, 0)
    acc.observe_dump([c2._replace(orig_bytes=700, orig_packets=7, reply_bytes=70, reply_packets=1)])
    relists = idx.stats()["relists"]
    server.stop()
    server.create("pods", pod("db-0", "n1", [OTHER_POD], ns="db"))
    server.compact()
    server.start()
    wait_until(lambda: idx.stats()["relists"] > relists and idx.lookup(OTHER_POD), what="relist after 410")
    acc.observe_ended([ended(c2, 760, 8, 70, 1)])
    (r,) = rows(acc.cut(T1, T1 + dt.timedelta(seconds=60), "n1", attr.is_local, attr.lookup))
    assert (r["direction"], r["src_pod"], r["src_namespace"], totals(r)) == ("outbound", "web-0", "shop", (760, 8, 70, 1, 1))
    assert idx.stats()["pod_cidrs"] == 1


def test_pod_flows_before_the_informer_has_synced_are_kept_by_the_pod_cidr(server, api, informers):
    server.create("nodes", node("n1", ["10.1.0.0/24", "fd00:1::/64"]))
    server.create("pods", pod("web-0", "n1", [POD_IP], ns="shop"))
    idx = PodIndex(api, "n1", start=False, **FAST)
    informers.append(idx)
    idx._read_pod_cidrs()                    # the Node object answered, the pod list has not yet
    assert not idx.synced and idx.lookup(POD_IP) is None
    attr = Attribution(lambda: {NODE_IP}, idx)
    acc = Accounter(resolve=attr.resolve)
    acc.observe_dump([])
    acc.observe_ended([])
    acc.observe_dump([conn(1, POD_IP, PEER, 40000, 443, 300, 3, 30, 1),            # local by the CIDR
                      conn(2, "fd00:2::1", "fd00:1::9", 50000, 80, 10, 1, 20, 1),    # inbound to a pod
                      conn(3, PEER, "10.3.0.1", 50001, 80, 5, 1, 5, 1)])            # transit
    idx.start()                              # synced before the cut: the pod is named at the cut
    assert idx.wait_synced(20)
    got = {r["src_ip"]: r for r in rows(acc.cut(T0, T1, "n1", attr.is_local, attr.lookup))}
    assert set(got) == {POD_IP, "fd00:2::1"}
    assert (got[POD_IP]["direction"], got[POD_IP]["src_pod"], totals(got[POD_IP])) == ("outbound", "web-0", (300, 3, 30, 1, 1))
    assert got["fd00:2::1"]["direction"] == "inbound" and got["fd00:2::1"]["dst_pod"] is None
    assert acc.stats()["transit_flows"] == 1
