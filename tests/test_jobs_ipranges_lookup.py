"""Cloud IP ranges: formats recognised by content, longest-prefix lookup, IPv4 and IPv6."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jobs.ipaddr import PrefixTable, is_imds, is_private, parse_ips
from jobs.ipranges import FIXTURES_DIR, CloudRanges, IPRangesError, detect

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cloud-ip-ranges"


def tags(ranges: CloudRanges, ips: list[str]) -> list[tuple]:
    p, s, r = ranges.lookup(parse_ips(ips))
    return list(zip(p.to_pylist(), s.to_pylist(), r.to_pylist()))


def test_parse_ips_vectorized_v4_and_v6():
    p = parse_ips(["10.0.0.1", "255.255.255.255", "2600:1f18::1", "not-an-ip", None, "300.1.1.1", "::ffff:1.2.3.4"])
    assert p.family.tolist() == [4, 4, 6, 0, 0, 0, 6]
    assert p.v4[0] == (10 << 24) + 1 and p.v4[1] == 2**32 - 1
    assert p.v6[2] == 0x2600_1F18 << 96 | 1


def test_prefix_table_longest_prefix_and_gaps():
    t = PrefixTable(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "fd00::/8", "fd00:1::/32"])
    got = t.lookup(parse_ips(["10.9.9.9", "10.1.9.9", "10.1.2.3", "11.0.0.0", "9.255.255.255",
                              "10.255.255.255", "fd00:1::5", "fd00:2::5", "fe80::1"]))
    assert got.tolist() == [0, 1, 2, -1, -1, 0, 4, 3, -1]


def test_private_and_imds():
    p = parse_ips(["10.1.1.1", "172.31.0.1", "172.32.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254",
                   "fd00:ec2::254", "fe80::1", "8.8.8.8", "2001:db8::1"])
    assert is_private(p).tolist() == [True, True, False, True, True, True, True, True, False, False]
    assert is_imds(p).tolist() == [False] * 5 + [True, True, False, False, False]


def test_fixtures_cover_the_agreed_prefixes():
    r = CloudRanges.load_dir(FIXTURES_DIR)
    assert tags(r, ["52.216.0.1", "52.217.255.254", "3.80.0.1", "3.95.255.1", "2600:1f18::1",
                    "34.80.0.1", "35.190.127.1", "20.38.108.1", "129.146.200.1", "3.96.0.1"]) == [
        ("aws", "S3", "us-east-1"), ("aws", "S3", "us-east-1"), ("aws", "EC2", "us-east-1"),
        ("aws", "EC2", "us-east-1"), ("aws", "EC2", "us-east-1"),
        ("gcp", "Google Cloud", "asia-east1"), ("gcp", "Google Cloud", "us-central1"),
        ("azure", "AzureStorage", "westeurope"), ("oracle", "OCI", "us-phoenix-1"), (None, None, None)]


def test_amazon_is_least_specific_but_longest_prefix_wins_otherwise():
    # 3.5.140.0/22 AMAZON contains 3.5.140.0/24 S3: the /24 wins inside it, AMAZON outside
    r = CloudRanges.load_dir(FIXTURES_DIR)
    assert tags(r, ["3.5.140.9", "3.5.141.9"]) == [("aws", "S3", "ap-northeast-2"), ("aws", "AMAZON", "ap-northeast-2")]
    # a more specific AMAZON prefix does not take an address away from a covering service
    doc = {"syncToken": "1", "prefixes": [
        {"ip_prefix": "3.80.0.0/12", "region": "us-east-1", "service": "EC2"},
        {"ip_prefix": "3.80.1.0/24", "region": "us-east-1", "service": "AMAZON"}], "ipv6_prefixes": []}
    assert tags(CloudRanges.from_documents([doc]), ["3.80.1.1"]) == [("aws", "EC2", "us-east-1")]


def test_files_recognised_by_content_not_name(tmp_path):
    names = ["a.json", "b.json", "c.json", "d.json"]
    for src, dst in zip(sorted(FIXTURES_DIR.glob("*.json")), names):
        shutil.copy(src, tmp_path / dst)
    (tmp_path / "notes.json").write_text(json.dumps({"hello": "world"}))  # skipped
    (tmp_path / "README.txt").write_text("not json")
    r = CloudRanges.load_dir(tmp_path)
    assert tags(r, ["52.216.0.1", "34.80.0.1", "20.38.108.1", "129.146.0.1"]) == [
        ("aws", "S3", "us-east-1"), ("gcp", "Google Cloud", "asia-east1"),
        ("azure", "AzureStorage", "westeurope"), ("oracle", "OCI", "us-phoenix-1")]
    # fixtures sort aws-, google-, microsoft-, oracle-
    assert [detect(json.loads((tmp_path / n).read_text())) for n in names] == ["aws", "gcp", "azure", "oracle"]
    assert detect({"hello": "world"}) is None


def test_bad_directories_give_clear_errors(tmp_path):
    with pytest.raises(IPRangesError, match="not found"):
        CloudRanges.load_dir(tmp_path / "missing")
    with pytest.raises(IPRangesError, match="no AWS, GCP, Azure or Oracle"):
        CloudRanges.load_dir(tmp_path)
    (tmp_path / "x.json").write_text("{broken")
    with pytest.raises(IPRangesError, match="not readable JSON"):
        CloudRanges.load_dir(tmp_path)


@pytest.mark.skipif(not REAL.is_dir(), reason="the published range files are not present here")
def test_real_published_files():
    r = CloudRanges.load_dir(REAL)
    got = tags(r, ["52.216.10.10", "3.80.5.5", "2600:1f18::10", "34.80.1.1", "20.38.108.5", "192.0.2.1"])
    assert got[0] == ("aws", "S3", "us-east-1")
    assert got[1] == ("aws", "EC2", "us-east-1")
    assert got[2] == ("aws", "EC2", "us-east-1")
    assert got[3][0] == "gcp" and got[3][2] == "asia-east1"
    assert got[4] == ("azure", "AzureStorage", "westeurope")
    assert got[5] == (None, None, None)
    # lookups are vectorized over many unique addresses at once
    many = parse_ips([f"52.216.{i % 256}.{i // 256}" for i in range(20000)])
    assert (r.table.lookup(many) >= 0).all()
    assert np.unique(np.asarray(r.service, dtype=object)[r.table.lookup(many)]).tolist() == ["S3"]
