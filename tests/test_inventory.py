"""Inventory builders on realistic objects (expected rows written by hand), and the
InventoryWatcher against the fake API server with the real kubernetes client."""
from __future__ import annotations

import copy
import datetime as dt
import json
import time

import pytest

from fake_apiserver import FakeApiServer
from lake import schema as S
from node_agent.inventory import (InventoryWatcher, NotSyncedError, endpoints_table, nodes_table, pods_table,
                                  provider_of, services_table)
from node_agent.kube import load_api_client

T = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc)
NODE_A = "ip-10-0-1-10.ec2.internal"


def owner(kind, name, api_version="apps/v1", controller=True):
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{kind}-{name}",
            "controller": controller, "blockOwnerDeletion": True}


def mkpod(name, ns, node, ips, owners=(), labels=None, host_network=False, phase="Running"):
    md = {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "resourceVersion": "1",
          "creationTimestamp": "2026-11-27T09:00:00Z", "labels": labels or {},
          "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]}
    if owners:
        md["ownerReferences"] = list(owners)
    status = {"phase": phase, "hostIP": "10.0.1.10", "conditions": [{"type": "Ready", "status": "True"}]}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": {"nodeName": node, "hostNetwork": host_network, "restartPolicy": "Always",
                     "containers": [{"name": "main", "image": "registry.example.com/app:1.2.3"}]},
            "status": status}


def realistic_pods():
    return [
        mkpod("checkout-7d9f8c6b5-x2k4p", "shop", NODE_A, ["10.0.1.23", "2600:1f18:0:0:0:0:0:17"],
              [owner("ReplicaSet", "checkout-7d9f8c6b5")], {"app": "checkout", "pod-template-hash": "7d9f8c6b5"}),
        mkpod("backup-28734120-q8z7m", "ops", NODE_A, ["10.0.1.40"],
              [owner("Job", "backup-28734120", "batch/v1")],
              {"batch.kubernetes.io/job-name": "backup-28734120", "job-name": "backup-28734120"}, phase="Succeeded"),
        mkpod("migrate-db-5x7kq", "ops", NODE_A, ["10.0.1.41"], [owner("Job", "migrate-db", "batch/v1")]),
        mkpod("report-20260101-abcde", "ops", NODE_A, ["10.0.1.42"], [owner("Job", "report-20260101", "batch/v1")]),
        mkpod("postgres-0", "data", NODE_A, ["10.0.1.50"], [owner("StatefulSet", "postgres")],
              {"app": "postgres", "statefulset.kubernetes.io/pod-name": "postgres-0"}),
        mkpod("kube-proxy-8h2xv", "kube-system", NODE_A, ["10.0.1.10"], [owner("DaemonSet", "kube-proxy")],
              {"k8s-app": "kube-proxy"}, host_network=True),
        mkpod("kube-apiserver-cp-1", "kube-system", "cp-1", ["10.0.0.5"], [owner("Node", "cp-1", "v1")],
              host_network=True),
        mkpod("legacy-rs-abcde", "shop", NODE_A, ["10.0.1.60"], [owner("ReplicaSet", "legacy-rs")], {"app": "legacy"}),
        mkpod("debug", "default", None, [], phase="Pending"),
    ]


def realistic_jobs():
    return [
        {"apiVersion": "batch/v1", "kind": "Job",
         "metadata": {"name": "backup-28734120", "namespace": "ops", "uid": "uid-Job-backup-28734120",
                      "resourceVersion": "1", "ownerReferences": [owner("CronJob", "backup", "batch/v1")]},
         "spec": {"template": {}}, "status": {"succeeded": 1}},
        {"apiVersion": "batch/v1", "kind": "Job",
         "metadata": {"name": "report-20260101", "namespace": "ops", "uid": "uid-Job-report-20260101",
                      "resourceVersion": "1"}, "spec": {"template": {}}},
        {"apiVersion": "batch/v1", "kind": "Job",
         "metadata": {"name": "migrate-db", "namespace": "ops", "uid": "uid-Job-migrate-db", "resourceVersion": "1"},
         "spec": {"template": {}}},
    ]


POD_COLS = ("name", "namespace", "uid", "node", "ip", "host_network", "workload_kind", "workload_name", "phase")

# Sorted by (namespace, name); one row per pod IP.
EXPECTED_PODS = [
    ("postgres-0", "data", "uid-data-postgres-0", NODE_A, "10.0.1.50", False, "StatefulSet", "postgres", "Running"),
    ("debug", "default", "uid-default-debug", None, None, False, "Pod", "debug", "Pending"),
    ("kube-apiserver-cp-1", "kube-system", "uid-kube-system-kube-apiserver-cp-1", "cp-1", "10.0.0.5", True,
     "StaticPod", "kube-apiserver", "Running"),
    ("kube-proxy-8h2xv", "kube-system", "uid-kube-system-kube-proxy-8h2xv", NODE_A, "10.0.1.10", True,
     "DaemonSet", "kube-proxy", "Running"),
    ("backup-28734120-q8z7m", "ops", "uid-ops-backup-28734120-q8z7m", NODE_A, "10.0.1.40", False,
     "CronJob", "backup", "Succeeded"),
    ("migrate-db-5x7kq", "ops", "uid-ops-migrate-db-5x7kq", NODE_A, "10.0.1.41", False, "Job", "migrate-db", "Running"),
    # Without Job objects a Job named <name>-<8+ digits> reads as a CronJob's run ...
    ("report-20260101-abcde", "ops", "uid-ops-report-20260101-abcde", NODE_A, "10.0.1.42", False,
     "CronJob", "report", "Running"),
    ("checkout-7d9f8c6b5-x2k4p", "shop", "uid-shop-checkout-7d9f8c6b5-x2k4p", NODE_A, "10.0.1.23", False,
     "Deployment", "checkout", "Running"),
    ("checkout-7d9f8c6b5-x2k4p", "shop", "uid-shop-checkout-7d9f8c6b5-x2k4p", NODE_A, "2600:1f18::17", False,
     "Deployment", "checkout", "Running"),
    ("legacy-rs-abcde", "shop", "uid-shop-legacy-rs-abcde", NODE_A, "10.0.1.60", False,
     "ReplicaSet", "legacy-rs", "Running"),
]


def rows(table, cols):
    return [tuple(r[c] for c in cols) for r in table.to_pylist()]


def check_table(table, schema):
    assert table.schema.equals(schema, check_metadata=True)
    assert set(table.column("snapshot_time").to_pylist()) <= {T}


# ------------------------------------------------------------------------------ pods


def test_pods_table_workloads_ips_and_host_network():
    table = pods_table(realistic_pods(), T)
    check_table(table, S.INV_PODS)
    assert table.num_rows == len(EXPECTED_PODS)
    assert rows(table, POD_COLS) == EXPECTED_PODS


def test_pods_table_uses_job_owner_references_when_jobs_are_known():
    table = pods_table(realistic_pods(), T, jobs=realistic_jobs())
    got = {r["name"]: (r["workload_kind"], r["workload_name"]) for r in table.to_pylist()}
    assert got["backup-28734120-q8z7m"] == ("CronJob", "backup")
    assert got["report-20260101-abcde"] == ("Job", "report-20260101")   # ... the Job object says otherwise
    assert got["migrate-db-5x7kq"] == ("Job", "migrate-db")
    # A Job no longer listed (deleted, pod kept) falls back to the name rule.
    table = pods_table(realistic_pods(), T, jobs=realistic_jobs()[1:])
    got = {r["name"]: (r["workload_kind"], r["workload_name"]) for r in table.to_pylist()}
    assert got["backup-28734120-q8z7m"] == ("CronJob", "backup")


def test_pods_table_controller_reference_wins_and_short_suffixes_are_jobs():
    p = mkpod("worker-1-abcde", "ops", NODE_A, ["10.0.1.70"],
              [owner("ConfigMap", "not-a-controller", "v1", controller=False), owner("Job", "worker-1", "batch/v1")])
    q = mkpod("nightly-2026-abcde", "ops", NODE_A, ["10.0.1.71"], [owner("Job", "nightly-2026", "batch/v1")])
    r = mkpod("api-5c8d7-zzz", "shop", NODE_A, ["10.0.1.72"], [owner("ReplicaSet", "api-5c8d7")],
              {"pod-template-hash": "other"})
    got = {x["name"]: (x["workload_kind"], x["workload_name"]) for x in pods_table([p, q, r], T).to_pylist()}
    assert got == {"worker-1-abcde": ("Job", "worker-1"), "nightly-2026-abcde": ("Job", "nightly-2026"),
                   "api-5c8d7-zzz": ("ReplicaSet", "api-5c8d7")}


def test_pods_table_accepts_client_model_objects():
    from kubernetes.client import ApiClient

    client = ApiClient()
    models = [client.deserialize(json.dumps(p), "V1Pod", "application/json") for p in realistic_pods()]
    assert rows(pods_table(models, T), POD_COLS) == EXPECTED_PODS


def test_empty_inputs_give_empty_tables_in_schema():
    for build, schema in ((pods_table, S.INV_PODS), (services_table, S.INV_SERVICES),
                          (nodes_table, S.INV_NODES), (endpoints_table, S.INV_ENDPOINTS)):
        table = build([], T)
        assert table.num_rows == 0 and table.schema.equals(schema, check_metadata=True)


def test_naive_snapshot_time_is_refused():
    with pytest.raises(ValueError, match="naive"):
        pods_table(realistic_pods(), dt.datetime(2026, 11, 27, 10, 0))


# ------------------------------------------------------------------------------ services


def svc(name, ns, spec):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-svc-{name}", "resourceVersion": "1"},
            "spec": spec}


def realistic_services():
    return [
        svc("checkout", "shop", {"type": "ClusterIP", "clusterIP": "172.20.14.7", "clusterIPs": ["172.20.14.7"],
                                 "ipFamilies": ["IPv4"], "ports": [{"port": 80, "targetPort": 8080}]}),
        svc("api", "shop", {"type": "ClusterIP", "clusterIP": "172.20.0.10",
                            "clusterIPs": ["172.20.0.10", "fd00:20:0:0:0:0:0:a"], "ipFamilies": ["IPv4", "IPv6"],
                            "ipFamilyPolicy": "PreferDualStack"}),
        svc("postgres", "data", {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}),
        svc("ext-db", "data", {"type": "ExternalName", "externalName": "db.example.com"}),
        svc("web", "shop", {"type": "LoadBalancer", "clusterIP": "172.20.3.3", "clusterIPs": ["172.20.3.3"]}),
        svc("old", "default", {"clusterIP": "10.96.0.20"}),     # pre-dual-stack object, no type written
    ]


def test_services_table_one_row_per_cluster_ip():
    table = services_table(realistic_services(), T)
    check_table(table, S.INV_SERVICES)
    assert rows(table, ("name", "namespace", "cluster_ip", "type")) == [
        ("ext-db", "data", None, "ExternalName"),
        ("postgres", "data", None, "ClusterIP"),
        ("old", "default", "10.96.0.20", "ClusterIP"),
        ("api", "shop", "172.20.0.10", "ClusterIP"),
        ("api", "shop", "fd00:20::a", "ClusterIP"),
        ("checkout", "shop", "172.20.14.7", "ClusterIP"),
        ("web", "shop", "172.20.3.3", "LoadBalancer"),
    ]


# ------------------------------------------------------------------------------ nodes


def node(name, labels=None, provider_id=None, addresses=()):
    spec = {"podCIDR": "10.0.1.0/24"}
    if provider_id:
        spec["providerID"] = provider_id
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": f"uid-node-{name}", "resourceVersion": "1",
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})}},
            "spec": spec,
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def realistic_nodes():
    return [
        node(NODE_A, {"topology.kubernetes.io/zone": "us-east-1a", "topology.kubernetes.io/region": "us-east-1",
                      "node.kubernetes.io/instance-type": "m5.large", "eks.amazonaws.com/nodegroup": "workers"},
             "aws:///us-east-1a/i-0abc1234567890def",
             [("InternalIP", "10.0.1.10"), ("ExternalIP", "54.12.3.4"), ("Hostname", NODE_A),
              ("InternalDNS", NODE_A)]),
        node("gke-pool-1-abcd", {"failure-domain.beta.kubernetes.io/zone": "us-central1-b",
                                 "failure-domain.beta.kubernetes.io/region": "us-central1",
                                 "beta.kubernetes.io/instance-type": "e2-standard-4",
                                 "cloud.google.com/gke-nodepool": "pool-1"},
             "gce://my-project/us-central1-b/gke-pool-1-abcd", [("InternalIP", "10.128.0.5")]),
        node("aks-pool-12345678-vmss000000", {"topology.kubernetes.io/zone": "eastus-1",
                                              "topology.kubernetes.io/region": "eastus",
                                              "node.kubernetes.io/instance-type": "Standard_D4s_v5",
                                              "kubernetes.azure.com/agentpool": "pool"},
             "azure:///subscriptions/0000/resourceGroups/mc_rg/providers/Microsoft.Compute/"
             "virtualMachineScaleSets/aks-pool-12345678-vmss/virtualMachines/0",
             [("InternalIP", "10.240.0.4"), ("InternalIP", "fd00:240:0:0:0:0:0:4"), ("ExternalIP", "20.1.2.3"),
              ("Hostname", "aks-pool-12345678-vmss000000")]),
        node("kind-control-plane", {}, "kind://docker/kind/kind-control-plane", [("InternalIP", "172.18.0.2")]),
        node("ip-10-1-2-3.eu-west-1.compute.internal", {}, "aws:///eu-west-1b/i-0def",
             [("InternalIP", "10.1.2.3")]),
        node("bare-metal-1", {}, None, []),
        node("edge-1", {}, None, [("ExternalIP", "203.0.113.9")]),
    ]


NODE_COLS = ("name", "internal_ip", "external_ip", "zone", "region", "provider", "instance_type", "node_group")


def test_nodes_table_zone_region_provider_and_addresses():
    table = nodes_table(realistic_nodes(), T)
    check_table(table, S.INV_NODES)
    assert rows(table, NODE_COLS) == [
        ("aks-pool-12345678-vmss000000", "10.240.0.4", "20.1.2.3", "eastus-1", "eastus", "azure", "Standard_D4s_v5", "pool"),
        ("aks-pool-12345678-vmss000000", "fd00:240::4", None, "eastus-1", "eastus", "azure", "Standard_D4s_v5", "pool"),
        ("bare-metal-1", None, None, None, None, None, None, None),
        ("edge-1", None, "203.0.113.9", None, None, None, None, None),
        ("gke-pool-1-abcd", "10.128.0.5", None, "us-central1-b", "us-central1", "gcp", "e2-standard-4", "pool-1"),
        ("ip-10-0-1-10.ec2.internal", "10.0.1.10", "54.12.3.4", "us-east-1a", "us-east-1", "aws", "m5.large", "workers"),
        # No topology labels: zone and region read from the AWS provider ID.
        ("ip-10-1-2-3.eu-west-1.compute.internal", "10.1.2.3", None, "eu-west-1b", "eu-west-1", "aws", None, None),
        ("kind-control-plane", "172.18.0.2", None, None, None, "kind", None, None),
    ]


@pytest.mark.parametrize("pid, provider", [
    ("aws:///us-east-1a/i-0abc", "aws"), ("gce://p/us-central1-a/n", "gcp"), ("azure:///subscriptions/x", "azure"),
    ("digitalocean://12345", "digitalocean"), ("OCI://ocid1.instance", "oci"), ("", None), (None, None),
    ("i-0abc", None),
])
def test_provider_from_provider_id(pid, provider):
    assert provider_of(pid) == provider


# ------------------------------------------------------------------------------ endpoints


def slice_(name, ns, service, address_type, ports, endpoints, owner_refs=None):
    md = {"name": name, "namespace": ns, "uid": f"uid-es-{name}", "resourceVersion": "1",
          "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}}
    if service:
        md["labels"]["kubernetes.io/service-name"] = service
    if owner_refs:
        md["ownerReferences"] = owner_refs
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": md,
            "addressType": address_type, "ports": ports, "endpoints": endpoints}


def ep(addresses, pod=None, node=None, zone=None, ns="shop", ready=True):
    e = {"addresses": addresses, "conditions": {"ready": ready, "serving": ready, "terminating": False}}
    if pod:
        e["targetRef"] = {"kind": "Pod", "name": pod, "namespace": ns, "uid": f"uid-{ns}-{pod}"}
    if node:
        e["nodeName"] = node
    if zone:
        e["zone"] = zone
    return e


def realistic_slices():
    return [
        slice_("checkout-abc12", "shop", "checkout", "IPv4",
               [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9090, "protocol": "TCP"}],
               [ep(["10.0.1.23"], "checkout-7d9f8c6b5-x2k4p", NODE_A, "us-east-1a"),
                ep(["10.0.2.31"], "checkout-7d9f8c6b5-m9n8b", "ip-10-0-2-10.ec2.internal", "us-east-1b", ready=False)]),
        slice_("kubernetes", "default", "kubernetes", "IPv4", [{"name": "https", "port": 6443, "protocol": "TCP"}],
               [ep(["10.0.0.100"]), ep(["10.0.0.101"])]),
        slice_("kube-dns-x7k2p", "kube-system", "kube-dns", "IPv4",
               [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
               [ep(["10.0.1.2"], "coredns-5d78c9869d-abcde", NODE_A, "us-east-1a", ns="kube-system")]),
        slice_("api-v6-q2w3e", "shop", "api", "IPv6", [{"name": "https", "port": 443}],
               [ep(["fd00:10:0:0:0:0:0:5"], "api-6b7c8d9f0-zzzzz", NODE_A, "us-east-1a")]),
        slice_("ext-fqdn", "shop", "ext", "FQDN", [{"port": 443, "protocol": "TCP"}], [ep(["db.example.com"])]),
        slice_("postgres-hl", "data", "postgres", "IPv4", None,
               [ep(["10.0.1.50"], "postgres-0", NODE_A, "us-east-1a", ns="data")]),
        slice_("manual-1", "shop", None, "IPv4", [{"port": 5432, "protocol": "TCP"}], [ep(["192.168.50.10"])],
               owner_refs=[owner("Service", "legacy-db", "v1")]),
        slice_("sctp-1", "shop", "signal", "IPv4", [{"port": 9000, "protocol": "SCTP"}], [ep(["10.0.1.80"])]),
    ]


def test_endpoints_table_rows_per_address_and_port():
    table = endpoints_table(realistic_slices(), T)
    check_table(table, S.INV_ENDPOINTS)
    assert rows(table, ("service", "namespace", "ip", "port", "proto", "pod", "node", "zone")) == [
        ("postgres", "data", "10.0.1.50", None, None, "postgres-0", NODE_A, "us-east-1a"),
        ("kubernetes", "default", "10.0.0.100", 6443, 6, None, None, None),
        ("kubernetes", "default", "10.0.0.101", 6443, 6, None, None, None),
        ("kube-dns", "kube-system", "10.0.1.2", 53, 17, "coredns-5d78c9869d-abcde", NODE_A, "us-east-1a"),
        ("kube-dns", "kube-system", "10.0.1.2", 53, 6, "coredns-5d78c9869d-abcde", NODE_A, "us-east-1a"),
        ("api", "shop", "fd00:10::5", 443, 6, "api-6b7c8d9f0-zzzzz", NODE_A, "us-east-1a"),
        ("checkout", "shop", "10.0.1.23", 8080, 6, "checkout-7d9f8c6b5-x2k4p", NODE_A, "us-east-1a"),
        ("checkout", "shop", "10.0.1.23", 9090, 6, "checkout-7d9f8c6b5-x2k4p", NODE_A, "us-east-1a"),
        ("checkout", "shop", "10.0.2.31", 8080, 6, "checkout-7d9f8c6b5-m9n8b", "ip-10-0-2-10.ec2.internal", "us-east-1b"),
        ("checkout", "shop", "10.0.2.31", 9090, 6, "checkout-7d9f8c6b5-m9n8b", "ip-10-0-2-10.ec2.internal", "us-east-1b"),
        ("legacy-db", "shop", "192.168.50.10", 5432, 6, None, None, None),
        ("signal", "shop", "10.0.1.80", 9000, 132, None, None, None),
    ]


# ------------------------------------------------------------------------------ the watcher


def wait_until(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


FAST = dict(backoff_initial=0.05, backoff_max=0.2, request_timeout=5.0, page_size=3)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    srv = FakeApiServer().start()
    for resource, objs in (("pods", realistic_pods()), ("services", realistic_services()),
                           ("nodes", realistic_nodes()), ("endpointslices", realistic_slices()),
                           ("jobs", realistic_jobs())):
        for obj in objs:
            obj = copy.deepcopy(obj)
            obj["metadata"].pop("resourceVersion", None)
            srv.create(resource, obj)
    api = load_api_client(srv.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        yield srv, api
    finally:
        srv.stop()


def expected_snapshot(srv, jobs):
    return {
        "pods": pods_table(srv.objects("pods"), T, jobs=srv.objects("jobs") if jobs else None),
        "services": services_table(srv.objects("services"), T),
        "nodes": nodes_table(srv.objects("nodes"), T),
        "endpoints": endpoints_table(srv.objects("endpointslices"), T),
    }


@pytest.mark.slow
@pytest.mark.parametrize("watch_jobs", [False, True], ids=["jobs-inferred", "jobs-watched"])
def test_watcher_snapshot_matches_the_cluster(cluster, watch_jobs):
    srv, api = cluster
    w = InventoryWatcher(api, watch_jobs=watch_jobs, **FAST)
    try:
        assert w.wait_synced(20)
        if watch_jobs:
            assert w.jobs.wait_synced(20)
        snap = w.snapshot(T)
        assert set(snap) == set(S.INVENTORY_KINDS)
        want = expected_snapshot(srv, watch_jobs)
        for kind in S.INVENTORY_KINDS:
            assert snap[kind].equals(want[kind], check_metadata=True), kind
        # The hand-written rows hold for what came over the wire too (slimmed objects lost nothing).
        assert rows(snap["nodes"], NODE_COLS)[0] == (
            "aks-pool-12345678-vmss000000", "10.240.0.4", "20.1.2.3", "eastus-1", "eastus", "azure", "Standard_D4s_v5", "pool")
        report = next(r for r in snap["pods"].to_pylist() if r["name"] == "report-20260101-abcde")
        assert (report["workload_kind"], report["workload_name"]) == (
            ("Job", "report-20260101") if watch_jobs else ("CronJob", "report"))
        # Bulky fields are not kept in memory.
        assert all("managedFields" not in o["metadata"] for o in w.informers["pods"].items())
        # Every list was paginated (page_size=3) through the real client.
        assert srv.count_requests("/api/v1/pods", limit="3", **{"continue": None}) >= 1
        assert srv.count_requests("/apis/discovery.k8s.io/v1/endpointslices", limit="3") >= 1
    finally:
        w.stop()


@pytest.mark.slow
def test_watcher_follows_changes(cluster):
    srv, api = cluster
    w = InventoryWatcher(api, **FAST)
    try:
        assert w.wait_synced(20)
        srv.delete("pods", "debug", "default")
        srv.create("services", svc("new", "shop", {"type": "ClusterIP", "clusterIP": "172.20.9.9",
                                                   "clusterIPs": ["172.20.9.9"]}))
        n = srv.get("nodes", "kind-control-plane", None)
        n["metadata"]["labels"]["topology.kubernetes.io/zone"] = "lab-1"
        srv.update("nodes", n)
        srv.delete("endpointslices", "kubernetes", "default")

        def converged():
            snap = w.snapshot(T)
            want = expected_snapshot(srv, False)
            return all(snap[k].equals(want[k]) for k in S.INVENTORY_KINDS)

        wait_until(converged, what="snapshot == cluster after changes")
        snap = w.snapshot(T)
        assert "debug" not in snap["pods"].column("name").to_pylist()
        assert ("new", "shop", "172.20.9.9", "ClusterIP") in rows(snap["services"], ("name", "namespace", "cluster_ip", "type"))
        kind_row = next(r for r in snap["nodes"].to_pylist() if r["name"] == "kind-control-plane")
        assert kind_row["zone"] == "lab-1"
        assert "kubernetes" not in snap["endpoints"].column("service").to_pylist()
        stats = w.stats()
        assert set(stats) == {"pods", "services", "nodes", "endpoints"}
        assert stats["pods"]["events"] >= 1 and stats["nodes"]["events"] >= 1
    finally:
        w.stop()


@pytest.mark.slow
def test_snapshot_before_sync_is_refused(cluster):
    srv, api = cluster
    srv.stop()                                  # nothing can be listed
    w = InventoryWatcher(api, **FAST)
    try:
        wait_until(lambda: w.stats()["pods"]["reconnects"] >= 1, what="a failed list")
        assert not w.synced
        with pytest.raises(NotSyncedError, match="pods, services, nodes, endpoints"):
            w.snapshot(T)
        srv.start()
        assert w.wait_synced(20)
        assert w.snapshot(T)["pods"].num_rows == len(EXPECTED_PODS)
    finally:
        w.stop()
