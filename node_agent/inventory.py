"""Inventory snapshots: Kubernetes objects -> the four inventory tables of lake/schema.py.

The builders are pure functions from objects (the API's JSON as dicts, camelCase keys;
kubernetes client model objects are accepted too) and a snapshot time to a pyarrow Table in
the contract's schema. Rows are sorted (namespace, name, ip) so a snapshot of the same state
is the same file. `InventoryWatcher` keeps the objects current with informers; it is the
I/O edge the `netmon-agent inventory` loop snapshots every window.

Tables and rules
- pods_table (INV_PODS): one row per pod IP (status.podIPs, dual stack gives two rows; a pod
  without an IP yet gives one row with ip null). Workload from the controller ownerReference:
  ReplicaSet -> Deployment when the ReplicaSet's name is the Deployment's name plus the pod's
  `pod-template-hash` label (as the Deployment controller names it), else ReplicaSet;
  Job -> CronJob from the Job's own ownerReference when Job objects are given, else when the
  Job's name is `<cronjob>-<scheduled time in minutes>` (8+ digits, as the CronJob
  controller names it), else Job; StatefulSet, DaemonSet and other controllers as named;
  mirror pods of static manifests (owner kind Node) -> StaticPod named without the
  `-<node>` suffix, so one static workload aggregates across nodes; no owner -> Pod.
- services_table (INV_SERVICES): one row per ClusterIP (spec.clusterIPs, dual stack gives two
  rows); headless and ExternalName services give one row with cluster_ip null.
- nodes_table (INV_NODES): one row per InternalIP, paired with the first ExternalIP of the same
  family (external IPs of a family without an internal IP get a row with internal_ip null;
  a node without addresses gets one row). zone/region from topology.kubernetes.io/zone|region,
  else failure-domain.beta.kubernetes.io/zone|region, else derived from an aws:// or gce://
  providerID; provider from the providerID scheme (gce -> gcp); instance type from
  node.kubernetes.io/instance-type (or the beta label).
- endpoints_table (INV_ENDPOINTS): one row per (endpoint address, port) of each EndpointSlice
  (FQDN slices are skipped: their addresses are not IPs); service from the
  kubernetes.io/service-name label; pod from targetRef when it is a Pod; node and zone from
  the endpoint; a slice without ports gives rows with port and proto null.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Iterable

import pyarrow as pa

from lake import schema as S
from node_agent.informer import Informer, api_lister, canonical_ip, pod_ips, strip_bulk, wait_all_synced

Obj = dict[str, Any]

_client_for_models = None


def _as_dict(obj: Any) -> Obj:
    """API JSON for a dict or a kubernetes client model object."""
    if isinstance(obj, dict):
        return obj
    global _client_for_models
    if _client_for_models is None:
        from kubernetes.client import ApiClient

        _client_for_models = ApiClient()
    return _client_for_models.sanitize_for_serialization(obj)


def _md(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _sorted(objs: Iterable[Any]) -> list[Obj]:
    out = [_as_dict(o) for o in objs]
    out.sort(key=lambda o: (_md(o).get("namespace") or "", _md(o).get("name") or ""))
    return out


def _table(schema: pa.Schema, cols: dict[str, list], t: dt.datetime) -> pa.Table:
    n = len(next(iter(cols.values()))) if cols else 0
    cols = {"snapshot_time": [S.as_utc(t)] * n, **cols}
    return pa.Table.from_pydict(cols, schema=schema)


# ------------------------------------------------------------------------------ pods

#: The CronJob controller names a Job `<cronjob>-<scheduled time in minutes since epoch>`.
_CRONJOB_JOB_RE = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")


def _controller_ref(md: Obj) -> Obj | None:
    refs = [r for r in md.get("ownerReferences") or () if isinstance(r, dict)]
    for r in refs:
        if r.get("controller"):
            return r
    return refs[0] if refs else None


def cronjobs_of_jobs(jobs: Iterable[Any]) -> dict[tuple[str, str], str | None]:
    """(namespace, job name) -> owning CronJob's name, or None for a Job no CronJob owns."""
    out: dict[tuple[str, str], str | None] = {}
    for job in jobs:
        md = _md(_as_dict(job))
        ref = _controller_ref(md)
        out[(md.get("namespace") or "", md.get("name") or "")] = (
            ref.get("name") if ref and ref.get("kind") == "CronJob" else None)
    return out


def workload_of(pod: Obj, job_owners: dict[tuple[str, str], str | None] | None = None) -> tuple[str, str]:
    """(workload_kind, workload_name) of a pod; see the module docstring for the rules."""
    md = _md(pod)
    name = md.get("name") or ""
    ref = _controller_ref(md)
    if ref is None:
        return "Pod", name
    kind, owner = ref.get("kind") or "", ref.get("name") or ""
    if kind == "ReplicaSet":
        h = (md.get("labels") or {}).get("pod-template-hash")
        if h and owner.endswith("-" + h) and len(owner) > len(h) + 1:
            return "Deployment", owner[: -len(h) - 1]
        return "ReplicaSet", owner
    if kind == "Job":
        key = (md.get("namespace") or "", owner)
        if job_owners is not None and key in job_owners:
            cron = job_owners[key]
            return ("CronJob", cron) if cron else ("Job", owner)
        m = _CRONJOB_JOB_RE.match(owner)
        return ("CronJob", m["cronjob"]) if m else ("Job", owner)
    if kind == "Node":
        node = (pod.get("spec") or {}).get("nodeName") or owner
        suffix = "-" + node
        return "StaticPod", name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
    return kind, owner


def pods_table(objs: Iterable[Any], t: dt.datetime, jobs: Iterable[Any] | None = None) -> pa.Table:
    """INV_PODS rows for `objs` at snapshot time `t`. `jobs` (Job objects), when given, make
    Job -> CronJob exact instead of inferred from the Job's name."""
    job_owners = cronjobs_of_jobs(jobs) if jobs is not None else None
    cols: dict[str, list] = {k: [] for k in ("name", "namespace", "uid", "node", "ip", "host_network",
                                             "workload_kind", "workload_name", "phase")}
    for pod in _sorted(objs):
        md, spec = _md(pod), pod.get("spec") or {}
        kind, wname = workload_of(pod, job_owners)
        fixed = (md.get("name"), md.get("namespace"), md.get("uid"), spec.get("nodeName"),
                 bool(spec.get("hostNetwork")), kind, wname, (pod.get("status") or {}).get("phase"))
        for ip in pod_ips(pod) or [None]:
            for k, v in zip(("name", "namespace", "uid", "node", "host_network", "workload_kind",
                             "workload_name", "phase"), fixed):
                cols[k].append(v)
            cols["ip"].append(ip)
    return _table(S.INV_PODS, cols, t)


# ------------------------------------------------------------------------------ services


def services_table(objs: Iterable[Any], t: dt.datetime) -> pa.Table:
    cols: dict[str, list] = {"name": [], "namespace": [], "cluster_ip": [], "type": []}
    for svc in _sorted(objs):
        md, spec = _md(svc), svc.get("spec") or {}
        raw = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        ips = [c for c in (canonical_ip(x) for x in raw) if c]   # "None" (headless) is not an IP
        for ip in ips or [None]:
            cols["name"].append(md.get("name"))
            cols["namespace"].append(md.get("namespace"))
            cols["cluster_ip"].append(ip)
            cols["type"].append(spec.get("type") or "ClusterIP")
    return _table(S.INV_SERVICES, cols, t)


# ------------------------------------------------------------------------------ nodes

_PROVIDER_ALIASES = {"gce": "gcp"}
_ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
_REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
#: node-group labels of EKS (managed and eksctl), GKE, AKS and Karpenter; NAT gateways can be
#: configured per node group (jobs/config.py nat_gateways.node_groups)
_GROUP_LABELS = ("eks.amazonaws.com/nodegroup", "alpha.eksctl.io/nodegroup-name", "cloud.google.com/gke-nodepool",
                 "kubernetes.azure.com/agentpool", "agentpool", "karpenter.sh/nodepool")


def provider_of(provider_id: str | None) -> str | None:
    """aws:///us-east-1a/i-0abc -> aws; gce://proj/zone/name -> gcp; azure:///... -> azure;
    other schemes (kind, digitalocean, openstack, ...) as written; None without a providerID."""
    if not provider_id or "://" not in provider_id:
        return None
    scheme = provider_id.split("://", 1)[0].strip().lower()
    return _PROVIDER_ALIASES.get(scheme, scheme) or None


def _zone_from_provider_id(provider_id: str | None) -> tuple[str | None, str | None]:
    """(zone, region) encoded in AWS and GCE provider IDs, for nodes without topology labels."""
    if not provider_id:
        return None, None
    m = re.match(r"^aws:///(?P<zone>[a-z]{2}(?:-[a-z]+)+-\d+[a-z])/", provider_id)
    if m:
        return m["zone"], m["zone"][:-1]
    m = re.match(r"^gce://[^/]+/(?P<zone>[a-z]+-[a-z]+\d+-[a-z])/", provider_id)
    if m:
        return m["zone"], m["zone"].rsplit("-", 1)[0]
    return None, None


def _first(labels: Obj, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if labels.get(k):
            return labels[k]
    return None


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def nodes_table(objs: Iterable[Any], t: dt.datetime) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("name", "internal_ip", "external_ip", "zone", "region",
                                             "provider", "instance_type", "node_group")}
    for node in _sorted(objs):
        md, spec = _md(node), node.get("spec") or {}
        labels = md.get("labels") or {}
        pid = spec.get("providerID")
        pz, pr = _zone_from_provider_id(pid)
        zone = _first(labels, _ZONE_LABELS) or pz
        region = _first(labels, _REGION_LABELS) or pr
        fixed = (md.get("name"), zone, region, provider_of(pid), _first(labels, _TYPE_LABELS),
                 _first(labels, _GROUP_LABELS))
        internal, external = [], []
        for a in (node.get("status") or {}).get("addresses") or ():
            ip = canonical_ip(a.get("address"))
            if ip is None:
                continue        # Hostname / InternalDNS entries
            if a.get("type") == "InternalIP" and ip not in internal:
                internal.append(ip)
            elif a.get("type") == "ExternalIP" and ip not in external:
                external.append(ip)
        pairs = []
        for ip in internal:
            ext = next((e for e in external if _family(e) == _family(ip)), None)
            pairs.append((ip, ext))
        paired = {e for _, e in pairs}
        internal_families = {_family(ip) for ip in internal}
        pairs += [(None, e) for e in external if e not in paired and _family(e) not in internal_families]
        for ip, ext in pairs or [(None, None)]:
            cols["name"].append(fixed[0])
            cols["internal_ip"].append(ip)
            cols["external_ip"].append(ext)
            cols["zone"].append(fixed[1])
            cols["region"].append(fixed[2])
            cols["provider"].append(fixed[3])
            cols["instance_type"].append(fixed[4])
            cols["node_group"].append(fixed[5])
    return _table(S.INV_NODES, cols, t)


# ------------------------------------------------------------------------------ endpoints

_PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def endpoints_table(objs: Iterable[Any], t: dt.datetime) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("service", "namespace", "ip", "port", "proto", "pod", "node", "zone")}
    for es in _sorted(objs):
        if es.get("addressType") not in (None, "IPv4", "IPv6"):
            continue
        md = _md(es)
        service = (md.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            ref = next((r for r in md.get("ownerReferences") or () if r.get("kind") == "Service"), None)
            service = ref.get("name") if ref else None
        ports = [(p.get("port"), _PROTO.get(p.get("protocol") or "TCP")) for p in es.get("ports") or ()]
        for ep in es.get("endpoints") or ():
            target = ep.get("targetRef") or {}
            pod = target.get("name") if target.get("kind") == "Pod" else None
            for addr in ep.get("addresses") or ():
                ip = canonical_ip(addr)
                if ip is None:
                    continue
                for port, proto in ports or [(None, None)]:
                    cols["service"].append(service)
                    cols["namespace"].append(md.get("namespace"))
                    cols["ip"].append(ip)
                    cols["port"].append(port)
                    cols["proto"].append(proto)
                    cols["pod"].append(pod)
                    cols["node"].append(ep.get("nodeName"))
                    cols["zone"].append(ep.get("zone"))
    return _table(S.INV_ENDPOINTS, cols, t)


BUILDERS = {"pods": pods_table, "services": services_table, "nodes": nodes_table, "endpoints": endpoints_table}


# ------------------------------------------------------------------------------ the watcher
# What each informer keeps of an object: only the fields the builders read (a cluster's
# pods in full are hundreds of MiB; these are a few hundred bytes each).

_KEEP_MD = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "ownerReferences")


def _slim_md(md: Obj, labels: tuple[str, ...] = ()) -> Obj:
    out = {k: md[k] for k in _KEEP_MD if k in md}
    lb = md.get("labels") or {}
    kept = {k: lb[k] for k in labels if k in lb}
    if kept:
        out["labels"] = kept
    return out


def _slim_pod(o: Obj) -> Obj:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    return {"metadata": _slim_md(_md(o), ("pod-template-hash",)),
            "spec": {"nodeName": spec.get("nodeName"), "hostNetwork": spec.get("hostNetwork")},
            "status": {k: status.get(k) for k in ("phase", "podIP", "podIPs")}}


def _slim_service(o: Obj) -> Obj:
    spec = o.get("spec") or {}
    return {"metadata": _slim_md(_md(o)),
            "spec": {k: spec.get(k) for k in ("type", "clusterIP", "clusterIPs")}}


def _slim_node(o: Obj) -> Obj:
    return {"metadata": _slim_md(_md(o), _ZONE_LABELS + _REGION_LABELS + _TYPE_LABELS + _GROUP_LABELS),
            "spec": {"providerID": (o.get("spec") or {}).get("providerID")},
            "status": {"addresses": (o.get("status") or {}).get("addresses")}}


def _slim_slice(o: Obj) -> Obj:
    eps = [{k: ep.get(k) for k in ("addresses", "targetRef", "nodeName", "zone")} for ep in o.get("endpoints") or ()]
    return {"metadata": _slim_md(_md(o), (SERVICE_NAME_LABEL,)), "addressType": o.get("addressType"),
            "ports": o.get("ports"), "endpoints": eps}


def _slim_job(o: Obj) -> Obj:
    return {"metadata": _slim_md(_md(o))}


class NotSyncedError(RuntimeError):
    """A snapshot was asked for before every informer had its first full list."""


class InventoryWatcher:
    """Cluster-wide informers for pods, services, nodes and endpoint slices (and, with
    `watch_jobs=True`, batch/v1 Jobs for exact Job -> CronJob attribution; that needs
    list/watch on jobs in the inventory's ClusterRole). `snapshot(now)` builds the four
    inventory tables from the current state."""

    def __init__(self, api, *, start: bool = True, watch_jobs: bool = False, **informer_kwargs):
        def inf(name, path, slim):
            return Informer(api_lister(api, path), name=name, transform=lambda o: slim(strip_bulk(o)),
                            **informer_kwargs)

        self.informers: dict[str, Informer] = {
            "pods": inf("pods", "/api/v1/pods", _slim_pod),
            "services": inf("services", "/api/v1/services", _slim_service),
            "nodes": inf("nodes", "/api/v1/nodes", _slim_node),
            "endpoints": inf("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", _slim_slice),
        }
        self.jobs: Informer | None = None
        if watch_jobs:
            self.jobs = inf("jobs", "/apis/batch/v1/jobs", _slim_job)
        if start:
            self.start()

    def _all(self) -> list[Informer]:
        return list(self.informers.values()) + ([self.jobs] if self.jobs is not None else [])

    def start(self) -> "InventoryWatcher":
        for inf in self._all():
            inf.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        for inf in self._all():
            inf._stopping.set()     # signal all first, then join each
        for inf in self._all():
            inf.stop(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once pods, services, nodes and endpoint slices have all been listed (Jobs are
        optional: until they sync, Job -> CronJob is inferred from names)."""
        return wait_all_synced(self.informers.values(), timeout)

    @property
    def synced(self) -> bool:
        return all(inf.synced for inf in self.informers.values())

    def stats(self) -> dict[str, dict[str, int]]:
        return {kind: inf.stats() for kind, inf in
                list(self.informers.items()) + ([("jobs", self.jobs)] if self.jobs is not None else [])}

    def snapshot(self, now: dt.datetime) -> dict[str, pa.Table]:
        """{"pods", "services", "nodes", "endpoints"} -> table at snapshot time `now`."""
        missing = [k for k, inf in self.informers.items() if not inf.synced]
        if missing:
            raise NotSyncedError(f"inventory not synced yet: {', '.join(missing)} not listed from the API server")
        jobs = self.jobs.items() if self.jobs is not None and self.jobs.synced else None
        return {
            "pods": pods_table(self.informers["pods"].items(), now, jobs=jobs),
            "services": services_table(self.informers["services"].items(), now),
            "nodes": nodes_table(self.informers["nodes"].items(), now),
            "endpoints": endpoints_table(self.informers["endpoints"].items(), now),
        }
