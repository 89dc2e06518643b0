"""Cost-job configuration (`netmon-jobs cost --config FILE`, YAML or JSON).

```yaml
provider: aws            # used when a node has no provider (no spec.providerID)
region: us-east-1        # used when a node has no region label
nat_gateway: false       # shorthand: every node without a public IP uses a NAT gateway
nat_gateways:            # or: which nodes use one (any selector matches; public-IP nodes never)
  - {name: private-a, node_cidrs: [10.0.0.0/19], node_groups: [workers], nodes: ["ip-10-0-*"], zones: [us-east-1a]}
gateway_endpoints: [S3, DYNAMODB]   # services reached through VPC gateway endpoints: no NAT processing
subnets:                 # zones of private addresses outside the cluster (RDS, ElastiCache, ...)
  - {cidr: 10.0.64.0/20, zone: us-east-1a}
price_fallback: {aws: us-east-1}    # price regions no card knows as this one (rate_card says so)
network_tier: premium    # or standard: GCP Standard tier, Azure routing preference Internet
rate_limits: {max_per_gb: 1.0}      # rates above this are rejected as typos
dns_lookback: 24h        # how old a DNS answer may be and still name a destination
clock_skew: 10m          # raw windows starting later than now + this are quarantined (future_window)
horizon: 1096d           # raw windows starting before now - this are quarantined (beyond_horizon)
ip_ranges_dir: /path     # cloud IP-range files (AWS, GCP, Azure, Oracle)
egress_destinations:     # where internet destinations are, for providers that price egress by
  - {cidr: 203.0.113.0/24, destination: australia}   # destination (GCP Premium: china, australia;
  - {domain: "*.cn", destination: china}             # default worldwide); CIDRs before domains
rules:                   # user CIDR rules, longest prefix first; like Kubecost's network-costs
  - {cidr: 10.20.0.0/16, class: peering, name: shared-vpc, region: us-east-1, rate_per_gb: 0.01}
egress_baseline:         # internet egress the account already used in a month outside the lake, GB
  "2026-01": {aws/us-east-1: 99.5}   # (days before the lake starts, other clusters): the month's
                                     # tiers and free allowance start from it; aws/free_allowance: GB
                                     # sets the allowance used (default: the pools' sum, capped)
```
"""
from __future__ import annotations

import ipaddress
import json
import math
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


@dataclass(frozen=True)
class NatGateway:
    """Which nodes send their internet-bound traffic through a NAT gateway. A node matches
    when any selector matches it (an empty selector list matches nothing; `all: true` every
    node). Nodes with an external IP never use one (they route through the internet gateway)."""
    name: str
    node_cidrs: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()          # node-name globs
    node_groups: tuple[str, ...] = ()    # inventory/nodes.node_group (the node-group label)
    zones: tuple[str, ...] = ()
    all: bool = False


@dataclass(frozen=True)
class Subnet:
    """Placement of private addresses outside the cluster (managed databases, endpoints)."""
    cidr: str
    zone: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class EgressDestination:
    """Internet destinations (a CIDR or a domain glob) in a destination group a rate card
    prices separately (GCP Premium tier: `china`, `australia`; anything else is worldwide)."""
    destination: str
    cidr: str | None = None
    domain: str | None = None


PROVIDERS = ("aws", "gcp", "azure")
NETWORK_TIERS = ("premium", "standard")
DEFAULT_MAX_PER_GB = 1.0   # no published network rate of the three providers comes near $1/GB


@dataclass
class JobConfig:
    provider: str = "aws"
    region: str = "us-east-1"
    nat_gateway: bool = False
    dns_lookback_s: float = 86400.0
    rules: list[Rule] = field(default_factory=list)
    ip_ranges_dir: str | None = None
    nat_gateways: list[NatGateway] = field(default_factory=list)
    gateway_endpoints: tuple[str, ...] = ()
    subnets: list[Subnet] = field(default_factory=list)
    price_fallback: dict[str, str] = field(default_factory=dict)
    network_tier: str = "premium"
    max_per_gb: float = DEFAULT_MAX_PER_GB
    clock_skew_s: float = 600.0
    horizon_s: float = 1096 * 86400.0
    egress_baseline: dict[str, dict[str, float]] = field(default_factory=dict)  # month -> {key: GB}
    egress_destinations: tuple[EgressDestination, ...] = ()

    def __post_init__(self):
        if self.nat_gateway and not self.nat_gateways:  # legacy flag: every node without a public IP
            self.nat_gateways = [NatGateway("nat", all=True)]

    @classmethod
    def from_dict(cls, data: dict | None) -> "JobConfig":
        data = dict(data or {})
        known = {"provider", "region", "nat_gateway", "nat_gateways", "gateway_endpoints", "subnets",
                 "price_fallback", "network_tier", "rate_limits", "dns_lookback", "rules", "ip_ranges_dir",
                 "clock_skew", "horizon", "egress_destinations", "egress_baseline"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}")
        provider = str(data.get("provider") or "aws").lower()
        if provider not in PROVIDERS:
            raise ConfigError(f"provider: unknown provider {data.get('provider')!r}; expected one of {', '.join(PROVIDERS)}")
        limits = data.get("rate_limits") or {}
        if not isinstance(limits, dict) or set(limits) - {"max_per_gb"}:
            raise ConfigError("rate_limits: expected a mapping with max_per_gb")
        max_per_gb = _number("rate_limits.max_per_gb", limits.get("max_per_gb", DEFAULT_MAX_PER_GB), 0, None)
        rules = [_rule(i, r, max_per_gb) for i, r in enumerate(_list("rules", data.get("rules")))]
        nat = data.get("nat_gateway", False)
        if not isinstance(nat, bool):
            raise ConfigError(f"nat_gateway: expected true or false, got {nat!r}")
        gws = [_nat(i, g) for i, g in enumerate(_list("nat_gateways", data.get("nat_gateways")))]
        if nat and gws:
            raise ConfigError("nat_gateway and nat_gateways: use one (nat_gateway: true means every node without a public IP)")
        eps = tuple(str(e).upper() for e in _list("gateway_endpoints", data.get("gateway_endpoints")))
        subnets = [_subnet(i, s) for i, s in enumerate(_list("subnets", data.get("subnets")))]
        fb = data.get("price_fallback") or {}
        if not isinstance(fb, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fb.items()):
            raise ConfigError("price_fallback: expected a mapping provider -> region, e.g. {aws: us-east-1}")
        bad = sorted(set(k.lower() for k in fb) - set(PROVIDERS))
        if bad:
            raise ConfigError(f"price_fallback: unknown provider(s) {', '.join(bad)}; expected {', '.join(PROVIDERS)}")
        tier = str(data.get("network_tier") or "premium").lower()
        if tier not in NETWORK_TIERS:
            raise ConfigError(f"network_tier: expected premium or standard, got {data.get('network_tier')!r}")
        region = data.get("region") or "us-east-1"
        if not isinstance(region, str):
            raise ConfigError(f"region: expected a region name, got {region!r}")
        ranges = data.get("ip_ranges_dir")
        if ranges is not None and not isinstance(ranges, str):
            raise ConfigError(f"ip_ranges_dir: expected a directory path, got {ranges!r}")
        return cls(
            provider=provider,
            region=region,
            nat_gateway=nat,
            dns_lookback_s=parse_duration(data.get("dns_lookback", "24h")),
            rules=rules,
            ip_ranges_dir=ranges,
            nat_gateways=gws,
            gateway_endpoints=eps,
            subnets=subnets,
            price_fallback={k.lower(): v for k, v in fb.items()},
            network_tier=tier,
            max_per_gb=max_per_gb,
            clock_skew_s=_positive_duration("clock_skew", data.get("clock_skew", "10m")),
            horizon_s=_positive_duration("horizon", data.get("horizon", "1096d")),
            egress_baseline=_baseline(data.get("egress_baseline")),
            egress_destinations=tuple(_destination(i, d) for i, d in
                                      enumerate(_list("egress_destinations", data.get("egress_destinations")))),
        )

    def check_cards(self, cards) -> None:
        """Regions and services named by the config must be known to the rate cards."""
        where = [("region", self.provider, self.region)]
        where += [(f"price_fallback.{p}", p, r) for p, r in self.price_fallback.items()]
        where += [(f"rules[{i}].region", self.provider, r.region) for i, r in enumerate(self.rules) if r.region]
        where += [(f"subnets[{i}].region", self.provider, s.region) for i, s in enumerate(self.subnets) if s.region]
        for key, provider, region in where:
            if not cards.has_region(provider, region):
                raise ConfigError(f"{key}: no {provider} rate card for region {region!r} "
                                  f"(known: {', '.join(cards.regions(provider)[:6])}, ...)")
        for month, pools in self.egress_baseline.items():
            for name, gb in pools.items():
                provider, _, region = name.partition("/")
                key = f"egress_baseline.{month}.{name}"
                if region == FREE_ALLOWANCE:
                    from jobs import pricing  # noqa: PLC0415
                    free_gb = pricing.provider_card(cards, provider).free_gb
                    if not free_gb:
                        raise ConfigError(f"{key}: {provider} has no free allowance for internet egress")
                    if gb > free_gb:
                        raise ConfigError(f"{key}: {gb:g} GB is more than the {provider} free allowance ({free_gb:g} GB)")
                elif not (cards.has_region(provider, region) or provider in self.price_fallback):
                    raise ConfigError(f"{key}: no {provider} rate card for region {region!r} "
                                      f"(known: {', '.join(cards.regions(provider)[:6])}, ...)")
        known = cards.egress_destinations()
        for i, d in enumerate(self.egress_destinations):
            if d.destination not in known:
                raise ConfigError(f"egress_destinations[{i}].destination: no rate card prices egress to "
                                  f"{d.destination!r} (known: {', '.join(sorted(known)) or 'none'})")
        allowed = set(cards.gateway_endpoint_services(self.provider))
        bad = [e for e in self.gateway_endpoints if e not in allowed]
        if bad:
            raise ConfigError(f"gateway_endpoints: {', '.join(bad)} cannot be reached by a {self.provider} gateway "
                              f"endpoint (expected {', '.join(sorted(allowed)) or 'none'})")


    def tier_start(self, month: str, cards) -> dict:
        """The month-to-date tier state (pricing.tier_costs' keys) the month's first hour starts
        from: its `egress_baseline`, {} without one."""
        from jobs import pricing  # noqa: PLC0415 - pricing imports this module's users
        return pricing.baseline_state(self.egress_baseline.get(month, {}), cards)


FREE_ALLOWANCE = "free_allowance"
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _baseline(v) -> dict[str, dict[str, float]]:
    """egress_baseline: {YYYY-MM: {provider/region or provider/free_allowance: GB >= 0}}."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError("egress_baseline: expected a mapping month (YYYY-MM) -> {provider/region: GB}")
    out: dict[str, dict[str, float]] = {}
    for month, pools in v.items():
        if not isinstance(month, str) or not _MONTH.match(month):
            raise ConfigError(f"egress_baseline: {month!r} is not a month (YYYY-MM, quoted in YAML)")
        key = f"egress_baseline.{month}"
        if not isinstance(pools, dict) or not pools:
            raise ConfigError(f"{key}: expected a mapping provider/region -> GB, e.g. {{aws/us-east-1: 99.5}}")
        out[month] = {}
        for name, gb in pools.items():
            provider, sep, region = str(name).partition("/")
            if not sep or not region or "/" in region or provider != provider.lower() or provider not in PROVIDERS:
                raise ConfigError(f"{key}: {name!r} is not provider/region (or provider/{FREE_ALLOWANCE}) "
                                  f"with a provider of {', '.join(PROVIDERS)}")
            x = _number(f"{key}.{name}", gb, 0, None)
            if not math.isfinite(x):
                raise ConfigError(f"{key}.{name}: must be a finite number of GB, got {gb!r}")
            out[month][name] = x
    return out


def _list(key: str, v) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError(f"{key}: expected a list, got {type(v).__name__}")
    return v


def _number(key: str, v, lo: float | None, hi: float | None) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{key}: must be a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: must be a number, got {v!r}") from None
    if x != x or (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
        raise ConfigError(f"{key}: {x:g} is outside the sane range (must be {rng}; raise rate_limits.max_per_gb if it is real)"
                          if hi is not None else f"{key}: must be {rng}, got {x:g}")
    return x


def _cidr(key: str, value) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.ip_network(str(value), strict=False)
            raise ConfigError(f"{key}: CIDR {value!r} has host bits set (did you mean {net}?)") from None
        raise ConfigError(f"{key}: invalid CIDR {value!r}") from None


def _keys(key: str, r, allowed: set, required: set = frozenset()):
    if not isinstance(r, dict):
        raise ConfigError(f"{key}: expected a mapping")
    extra = set(r) - allowed
    if extra:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(extra))}; expected {', '.join(sorted(allowed))}")
    missing = required - set(r)
    if missing:
        raise ConfigError(f"{key}: missing {', '.join(sorted(missing))}")


def _positive_duration(key: str, value) -> float:
    try:
        s = parse_duration(value)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if s <= 0:
        raise ConfigError(f"{key}: must be longer than 0, got {value!r}")
    return s


def _rule(i: int, r, max_per_gb: float = DEFAULT_MAX_PER_GB) -> Rule:
    key = f"rules[{i}]"
    if not isinstance(r, dict) or "cidr" not in r or "class" not in r:
        raise ConfigError(f"{key}: expected a mapping with 'cidr' and 'class'")
    _keys(key, r, {"cidr", "class", "name", "zone", "region", "rate_per_gb"})
    cidr = _cidr(key, r["cidr"])
    if r["class"] not in TRAFFIC_CLASSES:
        raise ConfigError(f"{key}: unknown class {r['class']!r}; expected one of {', '.join(TRAFFIC_CLASSES)}")
    rate = r.get("rate_per_gb")
    if rate is not None:
        rate = _number(f"{key}.rate_per_gb", rate, 0, max_per_gb)
    return Rule(cidr, r["class"], r.get("name"), r.get("zone"), r.get("region"), rate)


def _strs(key: str, v) -> tuple[str, ...]:
    v = _list(key, v)
    if not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{key}: expected a list of strings")
    return tuple(v)


def _nat(i: int, g) -> NatGateway:
    key = f"nat_gateways[{i}]"
    _keys(key, g, {"name", "node_cidrs", "nodes", "node_groups", "zones", "all"}, {"name"})
    cidrs = tuple(_cidr(f"{key}.node_cidrs", c) for c in _list(f"{key}.node_cidrs", g.get("node_cidrs")))
    all_ = g.get("all", False)
    if not isinstance(all_, bool):
        raise ConfigError(f"{key}.all: expected true or false")
    gw = NatGateway(str(g["name"]), cidrs, _strs(f"{key}.nodes", g.get("nodes")),
                    _strs(f"{key}.node_groups", g.get("node_groups")), _strs(f"{key}.zones", g.get("zones")), all_)
    if not (gw.all or gw.node_cidrs or gw.nodes or gw.node_groups or gw.zones):
        raise ConfigError(f"{key}: selects no node (give node_cidrs, nodes, node_groups, zones or all: true)")
    return gw


def _subnet(i: int, s) -> Subnet:
    key = f"subnets[{i}]"
    _keys(key, s, {"cidr", "zone", "region"}, {"cidr"})
    return Subnet(_cidr(key, s["cidr"]), s.get("zone"), s.get("region"))


def _destination(i: int, d) -> EgressDestination:
    key = f"egress_destinations[{i}]"
    _keys(key, d, {"cidr", "domain", "destination"}, {"destination"})
    if ("cidr" in d) == ("domain" in d):
        raise ConfigError(f"{key}: give one of cidr or domain")
    dest = d["destination"]
    if not isinstance(dest, str) or not dest.strip():
        raise ConfigError(f"{key}.destination: expected a destination name such as china or australia")
    if "cidr" in d:
        return EgressDestination(dest.strip().lower(), cidr=_cidr(key, d["cidr"]))
    if not isinstance(d["domain"], str) or not d["domain"].strip():
        raise ConfigError(f"{key}.domain: expected a domain or glob such as *.cn")
    return EgressDestination(dest.strip().lower(), domain=d["domain"].strip().lower().rstrip("."))


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
    try:
        cfg = JobConfig.from_dict(data)
        # the rate cards are input too: load and check them with the config, before any work
        from jobs.pipeline import _cards_for  # noqa: PLC0415 (pipeline imports config)
        cfg.check_cards(_cards_for(cfg))
    except ValueError as exc:
        raise ConfigError(f"config {p}: {exc}") from None
    return cfg
