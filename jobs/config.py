"""Cost-job configuration (`netmon-jobs cost --config FILE`, YAML or JSON).

```yaml
provider: aws            # used when a node has no provider (no spec.providerID)
region: us-east-1        # used when a node has no region label
nat_gateway: false       # internet egress leaves through a NAT gateway (adds per-GB processing)
dns_lookback: 24h        # how old a DNS answer may be and still name a destination
clock_skew: 10m          # raw windows starting later than now + this are quarantined (future_window)
horizon: 1096d           # raw windows starting before now - this are quarantined (beyond_horizon)
ip_ranges_dir: /path     # cloud IP-range files (AWS, GCP, Azure, Oracle)
rules:                   # user CIDR rules, longest prefix first; like Kubecost's network-costs
  - {cidr: 10.20.0.0/16, class: peering, name: shared-vpc, region: us-east-1, rate_per_gb: 0.01}
```
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lake.schema import TRAFFIC_CLASSES


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value) -> float:
    """`60s`, `5m`, `1h`, `1d` or plain seconds -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"invalid duration {value!r}: expected e.g. 60s, 5m, 1h or seconds")
    return float(m[1]) * _UNIT_S[m[2]]


@dataclass(frozen=True)
class Rule:
    cidr: str
    cls: str
    name: str | None = None
    zone: str | None = None
    region: str | None = None
    rate_per_gb: float | None = None

    @property
    def label(self) -> str:
        return self.name or self.cidr


@dataclass
class JobConfig:
    provider: str = "aws"
    region: str = "us-east-1"
    nat_gateway: bool = False
    dns_lookback_s: float = 86400.0
    rules: list[Rule] = field(default_factory=list)
    ip_ranges_dir: str | None = None
    clock_skew_s: float = 600.0
    horizon_s: float = 1096 * 86400.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "JobConfig":
        data = dict(data or {})
        known = {"provider", "region", "nat_gateway", "dns_lookback", "rules", "ip_ranges_dir", "clock_skew", "horizon"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        rules = [_rule(i, r) for i, r in enumerate(data.get("rules") or [])]
        return cls(
            provider=str(data.get("provider") or "aws").lower(),
            region=str(data.get("region") or "us-east-1"),
            nat_gateway=bool(data.get("nat_gateway", False)),
            dns_lookback_s=parse_duration(data.get("dns_lookback", "24h")),
            rules=rules,
            ip_ranges_dir=data.get("ip_ranges_dir"),
            clock_skew_s=parse_duration(data.get("clock_skew", "10m")),
            horizon_s=parse_duration(data.get("horizon", "1096d")),
        )


def _rule(i: int, r) -> Rule:
    if not isinstance(r, dict) or "cidr" not in r or "class" not in r:
        raise ConfigError(f"rules[{i}]: expected a mapping with 'cidr' and 'class'")
    extra = set(r) - {"cidr", "class", "name", "zone", "region", "rate_per_gb"}
    if extra:
        raise ConfigError(f"rules[{i}]: unknown key(s) {', '.join(sorted(extra))}")
    try:
        cidr = str(ipaddress.ip_network(str(r["cidr"]), strict=False))
    except ValueError:
        raise ConfigError(f"rules[{i}]: invalid CIDR {r['cidr']!r}") from None
    if r["class"] not in TRAFFIC_CLASSES:
        raise ConfigError(f"rules[{i}]: unknown class {r['class']!r}; expected one of {', '.join(TRAFFIC_CLASSES)}")
    rate = r.get("rate_per_gb")
    if rate is not None:
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ConfigError(f"rules[{i}]: rate_per_gb must be a number, got {rate!r}") from None
        if rate < 0:
            raise ConfigError(f"rules[{i}]: rate_per_gb must not be negative")
    return Rule(cidr, r["class"], r.get("name"), r.get("zone"), r.get("region"), rate)


def load_config(path: str | Path | None) -> JobConfig:
    """Read a YAML or JSON config file; None gives the defaults."""
    if path is None:
        return JobConfig()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # only needed for YAML configs

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise different types
        raise ConfigError(f"cannot parse config {p}: {exc}".splitlines()[0]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config {p}: expected a mapping at the top level")
    return JobConfig.from_dict(data)
