"""Classification: every traffic class, user rules, domain patterns, cloud range tags."""
from __future__ import annotations

import pytest

from jobs.classify import domain_class
from jobs.config import JobConfig
from lake import schema as S
from test_jobs_stages_world import GB, World, fixture_ranges, rows_by, three_zone_world


def classes(world, config=None, ranges=None) -> dict:
    return {k: r["traffic_class"] for k, r in rows_by(world.costs(config, ranges)).items()}


def test_every_traffic_class():
    w = three_zone_world().snapshot(0)
    f = lambda src, dst, node="n-a", **kw: w.flow(src, dst, node=node, tx=GB, **kw)
    f("10.0.1.21", "10.0.1.22")                       # same_zone: pod -> pod on n-a
    f("10.0.1.21", "10.0.2.21")                       # cross_zone
    f("10.0.1.22", "10.1.1.21")                       # cross_region: us-west-2 pod
    f("10.0.2.21", "172.20.0.1", node="n-b")          # k8s_control_plane: kubernetes ClusterIP
    f("10.0.3.21", "10.0.2.99", node="n-c")           # external_private: private IP outside the cluster, no name
    f("10.0.1.21", "169.254.169.254")                 # imds
    f("10.0.1.21", "10.200.0.5")                      # private_link by DNS name
    f("10.0.1.21", "10.200.0.6")                      # k8s_control_plane by DNS name (EKS)
    f("10.0.1.21", "10.200.0.7")                      # load_balancer by DNS name
    f("10.0.1.21", "10.200.0.8")                      # cloud_api by DNS name
    f("10.0.1.21", "10.30.0.1")                       # peering by user rule
    f("10.0.1.21", "10.31.0.1")                       # transit_gateway by user rule
    f("10.0.1.21", "52.216.1.2")                      # cloud_api: S3 in the source's region
    f("10.0.1.21", "8.8.8.8")                         # internet_egress
    w.dns("10.0.1.21", "vpce-0abc-123.s3.us-east-1.vpce.amazonaws.com", "10.200.0.5", -1)
    w.dns("10.0.1.21", "ABC123.gr7.us-east-1.eks.amazonaws.com", "10.200.0.6", -1)
    w.dns("10.0.1.21", "internal-my-lb-123.us-east-1.elb.amazonaws.com", "10.200.0.7", -1)
    w.dns("10.0.1.21", "storage.googleapis.com", "10.200.0.8", -1)
    cfg = JobConfig.from_dict({"rules": [{"cidr": "10.30.0.0/16", "class": "peering", "name": "shared-vpc"},
                                         {"cidr": "10.31.0.0/16", "class": "transit_gateway", "name": "tgw"}]})
    got = classes(w, cfg, fixture_ranges())
    assert got == {
        ("10.0.1.21", "10.0.1.22"): "same_zone",
        ("10.0.1.21", "10.0.2.21"): "cross_zone",
        ("10.0.1.22", "10.1.1.21"): "cross_region",
        ("10.0.2.21", "172.20.0.1"): "k8s_control_plane",
        ("10.0.3.21", "10.0.2.99"): "external_private",
        ("10.0.1.21", "169.254.169.254"): "imds",
        ("10.0.1.21", "10.200.0.5"): "private_link",
        ("10.0.1.21", "10.200.0.6"): "k8s_control_plane",
        ("10.0.1.21", "10.200.0.7"): "load_balancer",
        ("10.0.1.21", "10.200.0.8"): "cloud_api",
        ("10.0.1.21", "10.30.0.1"): "peering",
        ("10.0.1.21", "10.31.0.1"): "transit_gateway",
        ("10.0.1.21", "52.216.1.2"): "cloud_api",
        ("10.0.1.21", "8.8.8.8"): "internet_egress",
    }
    # unknown: a pod on a node the inventory has no zone for
    w2 = three_zone_world().node("n-z", "10.0.9.10", None).pod("lost-1", "x", "n-z", "10.0.9.21").snapshot(0)
    w2.flow("10.0.1.21", "10.0.9.21", node="n-a", tx=GB)
    assert classes(w2) == {("10.0.1.21", "10.0.9.21"): "unknown"}
    assert set(got.values()) | {"unknown"} == set(S.TRAFFIC_CLASSES)  # all thirteen covered


def test_user_rules_longest_prefix_and_precedence_over_imds_and_dns():
    w = three_zone_world().snapshot(0)
    for dst in ("10.30.1.1", "10.30.9.9", "169.254.169.254", "10.200.0.5", "198.18.0.1"):
        w.flow("10.0.1.21", dst, node="n-a", tx=GB)
    w.dns("10.0.1.21", "x.vpce.amazonaws.com", "10.200.0.5", -1)
    cfg = JobConfig.from_dict({"rules": [
        {"cidr": "10.30.0.0/16", "class": "peering", "name": "vpc-b", "zone": "use1-az4", "region": "us-east-1"},
        {"cidr": "10.30.1.0/24", "class": "external_private", "name": "onprem-vpn"},
        {"cidr": "169.254.169.254/32", "class": "cloud_api"},
        {"cidr": "10.200.0.0/16", "class": "peering"},
        {"cidr": "198.18.0.0/15", "class": "private_link", "name": "dx"},
    ]})
    rows = rows_by(w.costs(cfg))
    assert rows[("10.0.1.21", "10.30.1.1")]["traffic_class"] == "external_private"   # /24 beats /16
    peered = rows[("10.0.1.21", "10.30.9.9")]
    assert peered["traffic_class"] == "peering"
    assert (peered["dst_zone"], peered["dst_region"]) == ("use1-az4", "us-east-1")
    assert rows[("10.0.1.21", "169.254.169.254")]["traffic_class"] == "cloud_api"    # rule before IMDS
    assert rows[("10.0.1.21", "10.200.0.5")]["traffic_class"] == "peering"           # rule before DNS name
    assert rows[("10.0.1.21", "198.18.0.1")]["traffic_class"] == "private_link"       # public range by rule


def test_rules_never_apply_to_cluster_destinations():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=GB)
    cfg = JobConfig.from_dict({"rules": [{"cidr": "10.0.0.0/8", "class": "peering"}]})
    assert classes(w, cfg) == {("10.0.1.21", "10.0.2.21"): "cross_zone"}


@pytest.mark.parametrize("domain,cls", [
    ("vpce-1.ec2.us-east-1.vpce.amazonaws.com", "private_link"),
    ("myvault.privatelink.vaultcore.azure.net", "private_link"),
    ("x.privatelink.blob.core.windows.net", "private_link"),
    ("abc.hcp.eastus.azmk8s.io", "k8s_control_plane"),
    ("gke-1.gke.googleapis.com", "k8s_control_plane"),
    ("internal-a-1.eu-west-1.elb.amazonaws.com", "load_balancer"),
    ("svc.internal.cloudapp.azure.com", "load_balancer"),
    ("a-1.eu-west-1.elb.amazonaws.com", "private_link"),    # any other AWS name at a private IP: an interface endpoint
    ("sqs.us-east-1.amazonaws.com", "private_link"),        # interface endpoint with private DNS
    ("db1.abc123.us-east-1.rds.amazonaws.com", "zonal"),    # managed database: priced by zones
    ("c1.abc.0001.use1.cache.amazonaws.com", "zonal"),
    ("storage.googleapis.com", "cloud_api"),
    ("kv.vault.azure.net", "cloud_api"),
    ("acct.blob.core.windows.net", "cloud_api"),
    ("db.corp.example", "external_private"),
    (None, "external_private"),
    ("S3.US-EAST-1.AMAZONAWS.COM.", "private_link"),         # case-insensitive, trailing dot
    ("STORAGE.GOOGLEAPIS.COM.", "cloud_api"),
])
def test_domain_patterns(domain, cls):
    assert domain_class(domain) == cls


def test_cloud_range_tags_on_external_destinations():
    w = three_zone_world().snapshot(0)
    for dst in ("52.216.7.7", "3.81.2.3", "2600:1f18:1::5", "34.81.0.1", "35.190.10.1", "20.38.109.1",
                "20.38.1.1", "129.146.3.4", "8.8.8.8"):
        w.flow("10.0.1.21", dst, node="n-a", tx=GB)
    rows = rows_by(w.costs(ranges=fixture_ranges()))
    tag = lambda d: tuple(rows[("10.0.1.21", d)][k] for k in ("dst_cloud_provider", "dst_cloud_service", "dst_cloud_region"))
    assert tag("52.216.7.7") == ("aws", "S3", "us-east-1")            # S3 preferred over AMAZON
    assert tag("3.81.2.3") == ("aws", "EC2", "us-east-1")
    assert tag("2600:1f18:1::5") == ("aws", "EC2", "us-east-1")
    assert tag("34.81.0.1") == ("gcp", "Google Cloud", "asia-east1")
    assert tag("35.190.10.1") == ("gcp", "Google Cloud", "us-central1")
    assert tag("20.38.109.1") == ("azure", "AzureStorage", "westeurope")  # longest prefix
    assert tag("20.38.1.1") == ("azure", "AzureCloud", "westeurope")
    assert tag("129.146.3.4") == ("oracle", "OCI", "us-phoenix-1")
    assert tag("8.8.8.8") == (None, None, None)
    cls = {d: rows[("10.0.1.21", d)]["traffic_class"] for d in ("52.216.7.7", "3.81.2.3", "2600:1f18:1::5",
                                                                  "34.81.0.1", "20.38.109.1", "8.8.8.8")}
    # AWS services of the source's own region are cloud services; other providers are the internet
    assert cls == {"52.216.7.7": "cloud_api", "3.81.2.3": "cloud_api", "2600:1f18:1::5": "cloud_api",
                   "34.81.0.1": "internet_egress", "20.38.109.1": "internet_egress", "8.8.8.8": "internet_egress"}


def test_cloud_services_in_other_regions_are_inter_region():
    w = three_zone_world().snapshot(0)
    w.flow("10.1.1.21", "52.216.7.7", node="n-w", tx=GB)   # us-west-2 pod -> S3 us-east-1
    w.flow("10.0.1.21", "3.5.140.9", node="n-a", tx=GB)    # us-east-1 pod -> S3 ap-northeast-2
    rows = rows_by(w.costs(ranges=fixture_ranges()))
    a, b = rows[("10.1.1.21", "52.216.7.7")], rows[("10.0.1.21", "3.5.140.9")]
    assert (a["traffic_class"], a["dst_region"], a["dst_cloud_service"]) == ("cross_region", "us-east-1", "S3")
    assert (b["traffic_class"], b["dst_region"]) == ("cross_region", "ap-northeast-2")


def test_private_link_by_cname_chain_and_azure_platform_address():
    w = World().node("z-a", "10.2.0.10", "westeurope-1", region="westeurope", provider="azure")
    w.pod("app-1", "web", "z-a", "10.2.0.21").snapshot(0)
    for dst in ("10.2.9.5", "10.2.9.6", "168.63.129.16"):
        w.flow("10.2.0.21", dst, node="z-a", tx=GB)
    # the ordinary name, CNAME'd through privatelink: the chain decides
    w.dns("10.2.0.21", "acct.blob.core.windows.net", "10.2.9.5", -1, node="z-a",
          chain=["acct.privatelink.blob.core.windows.net"])
    w.dns("10.2.0.21", "other.blob.core.windows.net", "10.2.9.6", -1, node="z-a", chain=["other.blob.core.windows.net.x"])
    rows = rows_by(w.costs())
    pl = rows[("10.2.0.21", "10.2.9.5")]
    assert (pl["traffic_class"], pl["dst_domain"], pl["dst_cname"]) == (
        "private_link", "acct.blob.core.windows.net", "acct.privatelink.blob.core.windows.net")
    assert rows[("10.2.0.21", "10.2.9.6")]["traffic_class"] == "cloud_api"
    assert rows[("10.2.0.21", "10.2.9.6")]["dst_cname"] is None
    assert rows[("10.2.0.21", "168.63.129.16")]["traffic_class"] == "imds"


def test_managed_databases_are_priced_by_zone_from_subnets():
    w = three_zone_world().snapshot(0)
    for dst in ("10.0.64.5", "10.0.80.5", "10.0.96.5"):
        w.flow("10.0.1.21", dst, node="n-a", tx=GB)
    w.dns("10.0.1.21", "db1.abc.us-east-1.rds.amazonaws.com", "10.0.64.5", -1)
    w.dns("10.0.1.21", "db2.abc.us-east-1.rds.amazonaws.com", "10.0.80.5", -1)
    w.dns("10.0.1.21", "c1.abc.0001.use1.cache.amazonaws.com", "10.0.96.5", -1)
    cfg = JobConfig.from_dict({"subnets": [{"cidr": "10.0.64.0/20", "zone": "us-east-1a"},
                                           {"cidr": "10.0.80.0/20", "zone": "us-east-1b"}]})
    got = classes(w, cfg)
    assert got == {("10.0.1.21", "10.0.64.5"): "same_zone", ("10.0.1.21", "10.0.80.5"): "cross_zone",
                   ("10.0.1.21", "10.0.96.5"): "unknown"}   # no subnet says where the cache is


def test_cluster_destinations_get_no_cloud_tags():
    w = three_zone_world().node("n-pub", "10.0.4.10", "us-east-1a", external_ip="3.80.0.9").snapshot(0)
    w.flow("10.0.1.21", "3.80.0.9", node="n-a", tx=GB)  # a node's public IP, inside an EC2 range
    r = rows_by(w.costs(ranges=fixture_ranges()))[("10.0.1.21", "3.80.0.9")]
    assert (r["dst_kind"], r["dst_name"], r["dst_cloud_provider"], r["traffic_class"]) == ("node", "n-pub", None, "same_zone")


def test_dns_index_keeps_the_private_link_name_of_the_chosen_answer():
    """The as-of DNS index returns, with the domain, the private-link CNAME of the answer it
    chose: anywhere in the chain, the newest answer's own chain, null for old files."""
    import numpy as np
    import pyarrow as pa
    from jobs.dns import DnsIndex
    from test_jobs_stages_world import at
    rows = [  # (client, domain, ip, minute, chain)
        ("10.0.0.1", "kv.vault.azure.net", "10.9.0.1", 0, ["kv.privatelink.vaultcore.azure.net", "x.cloudapp.net"]),
        ("10.0.0.1", "st.blob.core.windows.net", "10.9.0.2", 0, ["st.privatelink.blob.core.windows.net"]),
        ("10.0.0.1", "st.blob.core.windows.net", "10.9.0.2", 2, ["blob.ams.store.core.windows.net"]),  # newer, no link
        ("10.0.0.1", "old.example.com", "10.9.0.3", 0, None),                                          # before the column
    ]
    t = pa.Table.from_pylist([dict(window_start=at(m), window_end=at(m), node="n", client_ip=c, domain=d, ip=ip,
                                   ttl_s=60, seen_at=at(m), cname_chain=ch) for c, d, ip, m, ch in rows], schema=S.RAW_DNS)
    idx = DnsIndex(t, 3600)
    ipd = pa.array(["10.0.0.1", "10.9.0.1", "10.9.0.2", "10.9.0.3"])
    we = np.full(3, int(at(3).timestamp() * 1e6), np.int64)
    dom, cname = idx.lookup(ipd, np.zeros(3, np.int64), np.array([1, 2, 3]), we, with_cname=True)
    assert dom.to_pylist() == ["kv.vault.azure.net", "st.blob.core.windows.net", "old.example.com"]
    assert cname.to_pylist() == ["kv.privatelink.vaultcore.azure.net", None, None]
    assert idx.lookup(ipd, np.zeros(3, np.int64), np.array([1, 2, 3]), we).to_pylist() == dom.to_pylist()
