"""Published cloud IP ranges: which provider, service and region an external address is in.

Reads the providers' own files from a directory, recognising each by its content:
- AWS ip-ranges.json: `prefixes[].ip_prefix` and `ipv6_prefixes[].ipv6_prefix`, `service`, `region`;
- GCP cloud.json: `prefixes[].ipv4Prefix|ipv6Prefix`, `service`, `scope` (the region);
- Azure Service Tags: `values[].properties.addressPrefixes`, `region`, `systemService`;
- Oracle public_ip_addresses.json: `regions[].region`, `regions[].cidrs[].cidr`, `tags`.

Longest prefix wins, except that catch-all services (AWS "AMAZON", Azure tags without a
systemService, Oracle "OCI") rank below any specific service covering the same address, and
a regional tag ranks above a global one for the same prefix.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from jobs.ipaddr import ParsedIPs, PrefixTable, parse_cidrs

log = logging.getLogger(__name__)

FIXTURES_DIR = Path(__file__).parent / "fixtures"
_GENERIC = {("aws", "AMAZON"), ("azure", "AzureCloud"), ("oracle", "OCI")}


class IPRangesError(ValueError):
    """An IP-range directory or file that cannot be used."""


def _aws(doc):
    for p in doc.get("prefixes", []):
        yield p["ip_prefix"], p.get("service"), p.get("region")
    for p in doc.get("ipv6_prefixes", []):
        yield p["ipv6_prefix"], p.get("service"), p.get("region")


def _gcp(doc):
    for p in doc["prefixes"]:
        cidr = p.get("ipv4Prefix") or p.get("ipv6Prefix")
        if cidr:
            yield cidr, p.get("service"), p.get("scope")


def _azure(doc):
    for v in doc["values"]:
        props = v.get("properties", {})
        service = props.get("systemService") or v.get("name", "").split(".", 1)[0] or None
        for cidr in props.get("addressPrefixes", []):
            yield cidr, service, props.get("region") or None


def _oracle(doc):
    for r in doc["regions"]:
        for c in r.get("cidrs", []):
            yield c["cidr"], ",".join(c.get("tags") or []) or None, r.get("region")


def detect(doc) -> str | None:
    """Which provider's format a parsed JSON document is in (None if none)."""
    if not isinstance(doc, dict):
        return None
    prefixes = doc.get("prefixes")
    if isinstance(prefixes, list) and ("ipv6_prefixes" in doc or any("ip_prefix" in p for p in prefixes[:5])):
        return "aws"
    if isinstance(prefixes, list) and any("ipv4Prefix" in p or "ipv6Prefix" in p for p in prefixes[:5]):
        return "gcp"
    values = doc.get("values")
    if isinstance(values, list) and values and isinstance(values[0], dict) and "addressPrefixes" in values[0].get("properties", {}):
        return "azure"
    regions = doc.get("regions")
    if isinstance(regions, list) and regions and isinstance(regions[0], dict) and "cidrs" in regions[0]:
        return "oracle"
    return None


_READERS = {"aws": _aws, "gcp": _gcp, "azure": _azure, "oracle": _oracle}


@dataclass
class CloudRanges:
    provider: np.ndarray  # object arrays, one entry per prefix
    service: np.ndarray
    region: np.ndarray
    table: PrefixTable

    @classmethod
    def from_documents(cls, docs: list[dict]) -> "CloudRanges":
        cidrs, prov, serv, reg, ranks = [], [], [], [], []
        for doc in docs:
            provider = detect(doc)
            if provider is None:
                raise IPRangesError("document is not an AWS, GCP, Azure or Oracle IP-range file")
            for cidr, service, region in _READERS[provider](doc):
                cidrs.append(cidr)
                prov.append(provider)
                serv.append(service)
                reg.append(region)
        parsed = parse_cidrs(cidrs)
        plen = parsed[1]
        ranks = [((p, s) not in _GENERIC and bool(s), int(n), bool(r)) for p, s, r, n in zip(prov, serv, reg, plen)]
        obj = lambda xs: np.array(xs, dtype=object)
        return cls(obj(prov), obj(serv), obj(reg), PrefixTable(cidrs, ranks, parsed))

    @classmethod
    def load_dir(cls, path: str | Path) -> "CloudRanges":
        """Load every recognised JSON file in `path` (others are skipped with a warning)."""
        root = Path(path)
        if not root.is_dir():
            raise IPRangesError(f"IP-range directory not found: {root}")
        docs = []
        for f in sorted(root.iterdir()):
            if not f.is_file() or f.suffix.lower() != ".json":
                continue
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                raise IPRangesError(f"{f}: not readable JSON: {exc}") from exc
            if detect(doc) is None:
                log.warning("skipping %s: not a known cloud IP-range format", f)
                continue
            docs.append(doc)
        if not docs:
            raise IPRangesError(f"no AWS, GCP, Azure or Oracle IP-range file in {root}")
        return cls.from_documents(docs)

    def lookup(self, ips: ParsedIPs) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(provider, service, region) string arrays aligned with `ips`, null where uncovered."""
        idx = self.table.lookup(ips)
        mask = idx < 0
        take = np.maximum(idx, 0)

        def col(values):
            if len(values) == 0:
                return pa.nulls(len(idx), pa.string())
            vals = values[take]
            vals[mask] = None
            return pa.array(vals, pa.string())

        return col(self.provider), col(self.service), col(self.region)
