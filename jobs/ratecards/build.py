"""Generate jobs/ratecards/{aws,gcp,azure}.json: one card per commercial region.

    python -m jobs.ratecards.build [--data DIR/network.json] [--check]

Inputs, and what each figure is (every rate in the output names its source page):
- Per-region internet egress tiers and inter-zone rates: the public dataset in
  `../shared/data/cloud-pricing/network.json` (Coroot cloud-pricing, built 2024-08-09 from the
  providers' price APIs; see its README). AWS tiers are the AWS price list's; GCP's are the
  *Standard* network tier (kept as `internet_egress_standard`: the default Premium tier is
  priced by destination continent and comes from GCP's page, below); Azure's are "Routing
  Preference: Internet" (kept as `internet_egress_routing_internet`: the default routing over
  Microsoft's network is priced by zone on Azure's bandwidth page, below).
- Inter-region rates per source region and region pair, NAT gateway, PrivateLink / Private
  Service Connect / Private Link, transit gateway and peering rates: the tables below,
  transcribed from the providers' public pricing pages (URLs beside each table). They change;
  re-read the pages and re-run this script (`--check` fails when the JSON is stale).

Only commercial regions get a card: no AWS GovCloud, China or Local Zones, no Azure
Government, China, edge (att*, sgx*) or staging (*euap, *stg, *slv) regions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _default_data() -> Path:
    """`shared/data/cloud-pricing/network.json` beside the repository (or a parent of it)."""
    for up in Path(__file__).resolve().parents[2:]:
        cand = up / "shared" / "data" / "cloud-pricing" / "network.json"
        if cand.exists():
            return cand
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "cloud-pricing" / "network.json"


DEFAULT_DATA = _default_data()
GIB, GB = 1 << 30, 10**9

AWS_EC2 = "https://aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer"
AWS_REGIONAL = "https://aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer_within_the_same_AWS_Region"
AWS_VPC = "https://aws.amazon.com/vpc/pricing/"
AWS_PL = "https://aws.amazon.com/privatelink/pricing/"
AWS_TGW = "https://aws.amazon.com/transit-gateway/pricing/"
AWS_FREE = "https://aws.amazon.com/blogs/aws/aws-free-tier-data-transfer-expansion-100-gb-from-regions-and-1-tb-from-amazon-cloudfront-per-month/"
AWS_CODES = "https://docs.aws.amazon.com/cur/latest/userguide/Lineitem-columns.html#Lineitem-details-U-UsageType"
DATASET = "https://github.com/coroot/cloud-pricing (data/cloud-pricing.json.gz, 2024-08-09, from the providers' price APIs)"

GCP_NET = "https://cloud.google.com/vpc/network-pricing"
GCP_NAT = "https://cloud.google.com/nat/pricing"
GCP_PSC = "https://cloud.google.com/vpc/pricing#psc-forwarding-rules"

AZ_BW = "https://azure.microsoft.com/en-us/pricing/details/bandwidth/"
AZ_NAT = "https://azure.microsoft.com/en-us/pricing/details/azure-nat-gateway/"
AZ_PL = "https://azure.microsoft.com/en-us/pricing/details/private-link/"
AZ_VNET = "https://azure.microsoft.com/en-us/pricing/details/virtual-network/"
AZ_VWAN = "https://azure.microsoft.com/en-us/pricing/details/virtual-wan/"

# Pages the figures were checked against on 2026-12-01 (docs/costing.md, "Which rates were
# verified"). The providers' own pages are cited as `source`; where only a third-party
# transcription of a figure could be read, the rate's note says so and names it.
AWS_VPC_EXAMPLE = "https://aws.amazon.com/vpc/pricing/"  # "US East (Ohio) ... $0.045 per GB" (worked example)
AWS_PL_TABLE = "https://aws.amazon.com/privatelink/pricing/"  # interface endpoints: first 1 PB $0.01, next 4 PB $0.006, over 5 PB $0.004
GCP_NAT_PAGE = "https://cloud.google.com/nat/pricing"  # $0.045/GiB processed, both directions, "the same across all regions"
THIRD_AWS_NAT = "https://basavytix.com/blog/aws-nat-gateway-pricing"  # ap-southeast-1 $0.059/GB
THIRD_AZ_NAT = "https://c3x.dev/resources/azure/azurerm_nat_gateway/"  # ~$0.045/GB processed
THIRD_AZ_PL = "https://c3x.dev/resources/azure/azurerm_private_endpoint/"  # $0.01/GB in and out
THIRD_AZ_INTER = "https://lucidity.cloud/feeds/blog/azure-storage-egress-cost"  # NA/EU $0.02, South America $0.16, Asia/MEA $0.08
THIRD_GCP_PREMIUM = "https://egresscost.com/gcp/premium-vs-standard"  # worldwide $0.12, China $0.23, Australia $0.19 (first TiB)
THIRD_AWS_PAIR = "https://www.redresscompliance.com/aws-inter-region-transfer-costs-multiregion.html"  # us-east-1 <-> us-east-2 $0.01

# ------------------------------------------------------------------------------------ AWS
# region: (billing code used in usage types, inter-region transfer out $/GB to other regions,
#          NAT gateway data processing $/GB). Sources: AWS_EC2 ("Data Transfer OUT From Amazon
# EC2 To ... another AWS Region"), AWS_VPC (NAT gateway), AWS_CODES (region codes).
# Checked 2026-12-01 (VERIFIED_AWS_NAT): NAT us-east-1/us-east-2 $0.045, eu-west-1 $0.048,
# eu-west-2 $0.05, ap-northeast-1 $0.062, ap-southeast-1 $0.059; the other NAT and the
# inter-region figures are the 2024 reading of AWS_EC2 / AWS_VPC, whose per-region tables are
# rendered by script and could not be re-read here.
AWS = {
    "us-east-1": ("USE1", 0.02, 0.045), "us-east-2": ("USE2", 0.02, 0.045),
    "us-west-1": ("USW1", 0.02, 0.048), "us-west-2": ("USW2", 0.02, 0.045),
    "ca-central-1": ("CAN1", 0.02, 0.05), "ca-west-1": ("CAN2", 0.02, 0.05),
    "eu-west-1": ("EU", 0.02, 0.048), "eu-west-2": ("EUW2", 0.02, 0.05),
    "eu-west-3": ("EUW3", 0.02, 0.05), "eu-central-1": ("EUC1", 0.02, 0.052),
    "eu-central-2": ("EUC2", 0.02, 0.057), "eu-north-1": ("EUN1", 0.02, 0.046),
    "eu-south-1": ("EUS1", 0.02, 0.05), "eu-south-2": ("EUS2", 0.02, 0.05),
    "ap-east-1": ("APE1", 0.09, 0.065), "ap-northeast-1": ("APN1", 0.09, 0.062),
    "ap-northeast-2": ("APN2", 0.08, 0.059), "ap-northeast-3": ("APN3", 0.09, 0.062),
    "ap-south-1": ("APS3", 0.086, 0.056), "ap-south-2": ("APS5", 0.086, 0.056),
    "ap-southeast-1": ("APS1", 0.09, 0.059), "ap-southeast-2": ("APS2", 0.098, 0.059),
    "ap-southeast-3": ("APS4", 0.10, 0.059), "ap-southeast-4": ("APS6", 0.10, 0.059),
    "sa-east-1": ("SAE1", 0.138, 0.093), "af-south-1": ("AFS1", 0.147, 0.06),
    "me-south-1": ("MES1", 0.1105, 0.055), "me-central-1": ("MEC1", 0.1105, 0.055),
    "il-central-1": ("ILC1", 0.08, 0.05),
}
#: region pairs AWS prices below the source region's rate (both directions), AWS_EC2; checked
#: against THIRD_AWS_PAIR
AWS_PAIRS = {("us-east-1", "us-east-2"): 0.01}
#: interface endpoint (PrivateLink) data processing, $/GB, first PB a month per region
#: (AWS_PL_TABLE: "pricing tiers apply on the total data processed by all Interface Endpoints in
#: an AWS Region"); the page shows one figure for the region it displays. Regions listed here
#: differ from AWS_PL_DEFAULT; none is known to, so the table is empty until a page says so.
AWS_PL_DEFAULT = 0.01
AWS_PL_RATES: dict[str, float] = {}
#: AWS's price list offer file of a region (the figures behind the pricing pages, usage types
#: such as EUW2-NatGateway-Bytes); read here only through third-party verbatim extracts
AWS_OFFER = "https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonEC2/current/{}/index.json"
#: NAT gateway figures checked 2026-12-01: region -> (page, read through a third party)
VERIFIED_AWS_NAT = {"us-east-1": (AWS_OFFER.format("us-east-1"), True), "us-east-2": (AWS_VPC_EXAMPLE, False),
                    "eu-west-1": (AWS_OFFER.format("eu-west-1"), True), "eu-west-2": (AWS_OFFER.format("eu-west-2"), True),
                    "ap-northeast-1": (AWS_OFFER.format("ap-northeast-1"), True), "ap-southeast-1": (THIRD_AWS_NAT, True)}
#: services whose transfer with EC2 in the same region is free (AWS_REGIONAL lists S3, Glacier,
#: DynamoDB, SES, SQS, Kinesis, ECR, SNS, SimpleDB); ip-ranges.json names S3 and DYNAMODB, the
#: others live in the AMAZON catch-all ranges. Other in-region public addresses (EC2 public or
#: Elastic IPs) are $0.01/GB in each direction (AWS_REGIONAL).
AWS_FREE_SERVICES = ["S3", "DYNAMODB", "AMAZON"]
AWS_GATEWAY_ENDPOINT_SERVICES = ["S3", "DYNAMODB"]

# ------------------------------------------------------------------------------------ GCP
# region prefix -> continent (GCP_NET groups inter-region and Premium egress by continent)
GCP_CONTINENT = [("northamerica-", "northamerica"), ("us-", "northamerica"), ("southamerica-", "southamerica"),
                 ("europe-", "europe"), ("asia-", "asia"), ("australia-", "oceania"), ("me-", "middleeast"),
                 ("africa-", "africa")]
#: VM-to-VM data transfer between regions, $/GiB, GCP_NET "Data transfer between regions":
#: within a continent by continent; between continents by the pair (default 0.08).
GCP_INTRA = {"northamerica": 0.02, "europe": 0.02, "asia": 0.05, "oceania": 0.08, "southamerica": 0.08,
             "middleeast": 0.08, "africa": 0.08}
GCP_INTER = {frozenset(("northamerica", "europe")): 0.05}
GCP_INTER_DEFAULT = 0.08
GCP_INTER_OCEANIA = 0.15
#: Premium tier internet egress, $/GiB by monthly volume (TiB = 1024 GiB), GCP_NET "Premium Tier
#: pricing". Priced by *destination* (https://cloud.google.com/network-tiers/pricing: "current
#: destination-based pricing for Premium Tier"; THIRD_GCP_PREMIUM: worldwide $0.12, China $0.23,
#: Australia $0.19 for the first TiB): worldwide (excluding China and Australia) from every source
#: region, China and Australia as destination groups. The job knows a destination's group only
#: from config.egress_destinations (docs/costing.md); without it every destination is worldwide.
GCP_PREMIUM = [(1024, 0.12), (10240, 0.11), (None, 0.08)]
GCP_PREMIUM_TO = {"china": [(1024, 0.23), (10240, 0.22), (None, 0.20)],
                  "australia": [(1024, 0.19), (10240, 0.18), (None, 0.15)]}
#: Private Service Connect consumer data processing, $/GiB (GCP_PSC); per region where it differs
GCP_PSC_DEFAULT = 0.01
GCP_PSC_RATES: dict[str, float] = {}

# ---------------------------------------------------------------------------------- Azure
AZ_EXCLUDE = ("Global", "att", "sgx", "usgov", "china")
AZ_EXCLUDE_SUFFIX = ("euap", "stg", "slv")
AZ_CONTINENT = [
    ("brazil", "southamerica"), ("mexico", "northamerica"), ("canada", "northamerica"), ("southafrica", "africa"),
    ("uae", "middleeast"), ("qatar", "middleeast"), ("israel", "middleeast"), ("australia", "oceania"),
    ("newzealand", "oceania"), ("eastasia", "asia"), ("southeastasia", "asia"), ("japan", "asia"), ("korea", "asia"),
    ("india", "asia"), ("jioindia", "asia"), ("taiwan", "asia"), ("indonesia", "asia"), ("malaysia", "asia"),
    ("europe", "europe"), ("uk", "europe"), ("france", "europe"), ("germany", "europe"), ("norway", "europe"),
    ("sweden", "europe"), ("switzerland", "europe"), ("poland", "europe"), ("italy", "europe"), ("spain", "europe"),
    ("austria", "europe"), ("belgium", "europe"), ("denmark", "europe"), ("finland", "europe"), ("greece", "europe"),
    ("us", "northamerica"),
]
#: Internet egress over Microsoft's network (the default routing), $/GB by monthly volume in GB
#: (TB = 1024 GB), by Azure's billing zone (AZ_BW: Zone 1 North America and Europe; Zone 2 Asia
#: Pacific, Japan, Australia, India, Korea; Zone 3 Brazil, South Africa, Middle East).
AZ_ZONE = {"northamerica": 1, "europe": 1, "asia": 2, "oceania": 2, "southamerica": 3, "africa": 3, "middleeast": 3}
#: regions whose billing zone is not their continent's: Azure lists Australia Central and
#: Australia Central 2 in Zone 1 (checked 2026-12-01 against THIRD_AZ_ZONES, which quotes Azure's
#: zone list; the card before put them in Zone 2 with the other Australian regions)
THIRD_AZ_ZONES = "https://winticloud.ch/azure-networking-costs/"
AZ_ZONE_OF_REGION = {"australiacentral": 1, "australiacentral2": 1}
AZ_EGRESS = {1: [(10240, 0.087), (51200, 0.083), (153600, 0.07), (None, 0.05)],
             2: [(10240, 0.12), (51200, 0.085), (153600, 0.082), (None, 0.08)],
             3: [(10240, 0.181), (51200, 0.175), (153600, 0.17), (None, 0.16)]}
#: data transfer between regions over Microsoft's network, $/GB (AZ_BW "Inter-region"):
#: within a continent, and from a continent to any other.
AZ_INTRA = {"northamerica": 0.02, "europe": 0.02, "asia": 0.08, "oceania": 0.08, "middleeast": 0.08,
            "africa": 0.08, "southamerica": 0.16}
AZ_INTER_FROM = {"northamerica": 0.05, "europe": 0.05, "asia": 0.08, "oceania": 0.08, "middleeast": 0.08,
                 "africa": 0.08, "southamerica": 0.16}
#: private endpoint data processed, $/GB in and out (AZ_PL); per region where it differs
AZ_PL_DEFAULT = 0.01
AZ_PL_RATES: dict[str, float] = {}
#: global VNet peering, $/GB each direction, by zone (AZ_VNET)
AZ_GLOBAL_PEERING = {1: 0.035, 2: 0.09, 3: 0.16}


def _r6(x: float) -> float:
    return round(float(x), 6)  # the dataset stores float32 values (0.09000000357...)


def _tiers(data: dict, free_gb: float = 0.0) -> list[dict]:
    """Dataset tiers {"start_gb": rate} -> [{up_to_gb, per_gb}] (the last unbounded)."""
    starts = sorted((float(k), _r6(v)) for k, v in data.items())
    out = []
    for i, (start, rate) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else None
        nxt = int(nxt) if nxt is not None and nxt == int(nxt) else nxt
        if out and out[-1]["per_gb"] == rate:  # the dataset repeats equal rates
            out[-1]["up_to_gb"] = nxt
            continue
        out.append({"up_to_gb": nxt, "per_gb": rate})
    return out


def _curve(tiers: list[tuple]) -> list[dict]:
    return [{"up_to_gb": up, "per_gb": rate} for up, rate in tiers]


def _checked(note: str, page: str | None, third: bool = False) -> str:
    """A rate's note with what it was checked against (docs/costing.md keeps the table)."""
    if page is None:
        return f"{note}; not re-verified (2024 reading of the source page)"
    return f"{note}; checked 2026-12-01 against {page}" + (" (a third-party transcription)" if third else "")


def rate(per_gb, unit, source, note=None, **kw) -> dict:
    r = {"per_gb": _r6(per_gb), "unit_bytes": unit, "source": source}
    r.update(kw)
    if note:
        r["note"] = note
    return r


# ------------------------------------------------------------------------------- builders

def _pairs(region: str, continent: dict[str, str], pair_rate, default: float) -> dict[str, float]:
    """`to` of a region's inter_region rate: every other region whose rate (by the continent
    pair, `pair_rate(source continent, destination continent)`) differs from `default`."""
    src = continent[region]
    out = {o: pair_rate(src, c) for o, c in continent.items() if o != region}
    return {o: r for o, r in out.items() if r != default}


def _gcp_pair_rate(src: str, dst: str) -> float:
    if src == dst:
        return GCP_INTRA[src]
    if "oceania" in (src, dst):
        return GCP_INTER_OCEANIA
    return GCP_INTER.get(frozenset((src, dst)), GCP_INTER_DEFAULT)


def _az_pair_rate(src: str, dst: str) -> float:
    return AZ_INTRA[src] if src == dst else AZ_INTER_FROM[src]


def build_aws(data: dict) -> dict:
    eg, iz = data["aws"]["internet_egress"], data["aws"]["inter_zone_data_transfer"]
    U = GIB
    regions = {}
    missing = sorted(set(eg) - set(AWS) - {"us-gov-east-1", "us-gov-west-1"} - {r for r in eg if r.count("-") > 2})
    if missing:
        raise SystemExit(f"build: AWS regions in the data but not in AWS (build.py): {', '.join(missing)}")
    for region, (code, out_rate, nat) in sorted(AWS.items()):
        if region not in eg:
            print(f"build: no AWS internet egress data for {region}: no card", file=sys.stderr)
            continue
        z = iz.get(region, {"egress_per_gb": 0.01, "ingress_per_gb": 0.01})
        pairs = {b: r for (a, b), r in AWS_PAIRS.items() if a == region}
        pairs.update({a: r for (a, b), r in AWS_PAIRS.items() if b == region})
        regions[region] = {
            "code": code,
            "internet_egress": {"unit_bytes": U, "source": AWS_EC2, "data": DATASET,
                                "tiers": _tiers(eg[region]),
                                "note": "per month per region, aggregated across services; the 100 GB free a month is the account-wide free_allowance"},
            "cross_zone": rate(z["egress_per_gb"], U, AWS_REGIONAL, ingress_per_gb=_r6(z["ingress_per_gb"]), data=DATASET,
                               note="out of the sender's AZ and into the receiver's AZ"),
            "inter_region": rate(out_rate, U, AWS_EC2, to=pairs,
                                 note="transfer out to another AWS region, by the sending region; inbound is free"),
            "nat_gateway": rate(nat, U, AWS_VPC, note=_checked(
                "NAT gateway data processing, both directions, on top of transfer",
                *VERIFIED_AWS_NAT.get(region, (None, False)))),
            "private_link": rate(AWS_PL_RATES.get(region, AWS_PL_DEFAULT), U, AWS_PL, note=_checked(
                "interface endpoint data processing, both directions, first PB a month in the region "
                "(then $0.006, over 5 PB $0.004: not modelled)", AWS_PL_TABLE if region not in AWS_PL_RATES else None)),
        }
    return {
        "provider": "aws", "currency": "USD", "unit_bytes": U,
        "unit_note": "AWS prices data transfer per GB and meters GB = 2^30 bytes in its Cost and Usage Reports",
        "generated_by": "jobs/ratecards/build.py",
        "free_allowance": {"gb": 100, "scope": "account, across all regions and services", "source": AWS_FREE,
                           "note": "100 GB of data transfer out to the internet free each month, aggregated across regions (not China or GovCloud)"},
        "free_in_region_services": AWS_FREE_SERVICES,
        "gateway_endpoint_services": AWS_GATEWAY_ENDPOINT_SERVICES,
        "usage_types": {
            "cross_zone": "{src}-DataTransfer-Regional-Bytes", "regional_public": "{src}-DataTransfer-Regional-Bytes",
            "inter_region": "{src}-{dst}-AWS-Out-Bytes", "internet_egress": "{src}-DataTransfer-Out-Bytes",
            "nat_gateway": "{src}-NatGateway-Bytes", "private_link": "{src}-VpcEndpoint-Bytes",
            "transit_gateway": "{src}-TransitGateway-Bytes", "peering": "{src}-DataTransfer-Regional-Bytes",
            "source": AWS_CODES,
        },
        "default": {
            "same_zone": rate(0, U, AWS_REGIONAL, note="within one AZ over private IPs: free"),
            "regional_public": rate(0.01, U, AWS_REGIONAL, ingress_per_gb=0.01,
                                    note="to public or Elastic IPs of the same region: $0.01/GB in each direction"),
            "transit_gateway": rate(0.02, U, AWS_TGW, note="transit gateway data processing, charged on data sent into it"),
            "peering": rate(0.01, U, AWS_VPC, ingress_per_gb=0.01,
                            note="VPC peering: same AZ (by AZ ID) free; across AZs the regional rate each direction; across regions inter-region"),
            "imds": rate(0, U, "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html", note="not billed"),
            "k8s_control_plane": rate(0, U, "https://aws.amazon.com/eks/pricing/", note="billed per cluster-hour"),
            "cloud_api": rate(0, U, AWS_REGIONAL, note="S3, DynamoDB and the other listed services in the same region are free"),
            "load_balancer": rate(0, U, "https://aws.amazon.com/elasticloadbalancing/pricing/", note="billed per LCU-hour"),
            "external_private": rate(0, U, AWS_REGIONAL, note="private address of unknown placement: not priced unless a rule says what it is"),
            "unknown": rate(0, U, AWS_REGIONAL, note="zone unknown: not priced rather than guessed"),
        },
        "regions": regions,
    }


def _gcp_continent(region: str) -> str:
    for prefix, c in GCP_CONTINENT:
        if region.startswith(prefix):
            return c
    raise SystemExit(f"build: no continent for GCP region {region!r}: add it to GCP_CONTINENT")


def build_gcp(data: dict) -> dict:
    eg, iz = data["gcp"]["internet_egress"], data["gcp"]["inter_zone_data_transfer"]
    U = GIB
    names = sorted(eg)
    continent = {r: _gcp_continent(r) for r in names}
    regions = {}
    for region in names:
        cont = continent[region]
        z = iz.get(region, {"egress_per_gb": 0.01, "ingress_per_gb": 0})
        default = GCP_INTRA[cont]
        pairs = _pairs(region, continent, _gcp_pair_rate, default)
        regions[region] = {
            "code": region, "continent": cont,
            "internet_egress": {"unit_bytes": U, "source": GCP_NET, "tiers": _curve(GCP_PREMIUM),
                                "note": "Premium tier (the default) to worldwide destinations excluding China and Australia; TiB = 1024 GiB; "
                                        "first TiB checked 2026-12-01 against " + THIRD_GCP_PREMIUM + " (a third-party transcription)"},
            "internet_egress_by_destination": {
                d: {"unit_bytes": U, "source": GCP_NET, "tiers": _curve(t),
                    "note": f"Premium tier to destinations in {d.capitalize()} (config.egress_destinations says which); "
                            "first TiB checked 2026-12-01 against " + THIRD_GCP_PREMIUM + " (a third-party transcription)"}
                for d, t in GCP_PREMIUM_TO.items()},
            "internet_egress_standard": {"unit_bytes": U, "source": GCP_NET, "data": DATASET, "tiers": _tiers(eg[region]),
                                         "note": "Standard network tier (network_tier: standard in the job config)"},
            "cross_zone": rate(z["egress_per_gb"], U, GCP_NET, ingress_per_gb=_r6(z["ingress_per_gb"]), data=DATASET,
                               note="inter-zone, charged to the sender only"),
            "inter_region": rate(default, U, GCP_NET, to=pairs,
                                 note=f"VM-to-VM between regions, by the sender; within {cont} unless `to` says otherwise"),
            "nat_gateway": rate(0.045, U, GCP_NAT, note=_checked(
                "Cloud NAT data processing, both directions, the same in every region", GCP_NAT_PAGE)),
            "private_link": rate(GCP_PSC_RATES.get(region, GCP_PSC_DEFAULT), U, GCP_PSC,
                                 note=_checked("Private Service Connect consumer data processing", None)),
        }
    return {
        "provider": "gcp", "currency": "USD", "unit_bytes": U,
        "unit_note": "Google Cloud prices network data transfer per GiB (2^30 bytes)",
        "generated_by": "jobs/ratecards/build.py",
        "free_allowance": {"gb": 0, "scope": "none for Premium tier internet egress", "source": GCP_NET},
        "free_in_region_services": ["Google Cloud"],
        "gateway_endpoint_services": [],
        "usage_types": {
            "cross_zone": "Network Inter Zone Data Transfer Out", "inter_region": "Network Inter Region Data Transfer Out from {src} to {dst}",
            "internet_egress": "Network Internet Data Transfer Out from {src}", "nat_gateway": "Cloud NAT Data Processing",
            "internet_egress_to": "Network Internet Data Transfer Out from {src} to {dst}",
            "private_link": "Private Service Connect Consumer Data Processing", "peering": "Network Inter Zone Data Transfer Out",
            "regional_public": "Network Inter Zone Data Transfer Out",
            "source": "https://cloud.google.com/skus (SKU descriptions of the Networking service)",
        },
        "default": {
            "same_zone": rate(0, U, GCP_NET, note="same zone over internal IPs: free"),
            "regional_public": rate(0, U, GCP_NET, note="Google Cloud addresses of the same region"),
            "transit_gateway": rate(0, U, "https://cloud.google.com/network-connectivity/docs/network-connectivity-center/pricing",
                                    note="no per-GB hub processing is modelled"),
            "peering": rate(0.01, U, GCP_NET, ingress_per_gb=0,
                            note="VPC Network Peering is priced as VM-to-VM traffic: same zone free, inter-zone sender only, inter-region by the pair"),
            "imds": rate(0, U, "https://cloud.google.com/compute/docs/metadata/overview", note="not billed"),
            "k8s_control_plane": rate(0, U, "https://cloud.google.com/kubernetes-engine/pricing", note="per-cluster fee"),
            "cloud_api": rate(0, U, GCP_NET, note="Google APIs and services in the same region: free"),
            "load_balancer": rate(0, U, GCP_NET + "#lb", note="internal load balancer data processing not modelled per GB"),
            "external_private": rate(0, U, GCP_NET, note="not priced unless a rule says what it is"),
            "unknown": rate(0, U, GCP_NET, note="zone unknown: not priced rather than guessed"),
        },
        "regions": regions,
    }


def _az_continent(region: str) -> str:
    for prefix, c in AZ_CONTINENT:
        if region.startswith(prefix) or prefix in region:
            return c
    raise SystemExit(f"build: no continent for Azure region {region!r}: add it to AZ_CONTINENT")


def _az_commercial(region: str) -> bool:
    return not (region.startswith(AZ_EXCLUDE) or region.endswith(AZ_EXCLUDE_SUFFIX))


def build_azure(data: dict) -> dict:
    eg, iz = data["azure"]["internet_egress"], data["azure"]["inter_zone_data_transfer"]
    U = GB
    names = sorted(r for r in set(eg) | set(iz) if _az_commercial(r))
    continent = {r: _az_continent(r) for r in names}
    regions = {}
    for region in names:
        cont = continent[region]
        zone = AZ_ZONE_OF_REGION.get(region, AZ_ZONE[cont])
        pairs = _pairs(region, continent, _az_pair_rate, AZ_INTRA[cont])
        block = {
            "code": region, "continent": cont, "billing_zone": zone,
            "internet_egress": {"unit_bytes": U, "source": AZ_BW, "tiers": _curve(AZ_EGRESS[zone]),
                                "note": f"Microsoft premium global network routing (the default), zone {zone}; TB = 1024 GB; the first 100 GB a month are the free_allowance"},
            "cross_zone": rate(0, U, AZ_BW, ingress_per_gb=0, note="inter-availability-zone transfer is free"),
            "inter_region": rate(AZ_INTRA[cont], U, AZ_BW, to=pairs, note=f"between regions, by the source; within {cont} unless `to` says otherwise"),
            "nat_gateway": rate(0.045, U, AZ_NAT, note=_checked("NAT gateway data processed, both directions",
                                                                THIRD_AZ_NAT, third=True)),
            "private_link": rate(AZ_PL_RATES.get(region, AZ_PL_DEFAULT), U, AZ_PL, note=_checked(
                "private endpoint data processed, inbound and outbound, first PB", THIRD_AZ_PL, third=True)),
            "global_peering": rate(AZ_GLOBAL_PEERING[zone], U, AZ_VNET, ingress_per_gb=AZ_GLOBAL_PEERING[zone],
                                   note="global VNet peering, outbound and inbound"),
        }
        if region in eg:
            block["internet_egress_routing_internet"] = {"unit_bytes": U, "source": AZ_BW, "data": DATASET,
                                                        "tiers": _tiers(eg[region]),
                                                        "note": "Routing preference: Internet (opt-in, network_tier: standard)"}
        regions[region] = block
    return {
        "provider": "azure", "currency": "USD", "unit_bytes": U,
        "unit_note": "Azure prices bandwidth per GB and does not define it as a GiB; decimal GB (10^9 bytes) is used",
        "generated_by": "jobs/ratecards/build.py",
        "free_allowance": {"gb": 100, "scope": "account, across regions", "source": AZ_BW,
                           "note": "the first 100 GB of internet egress a month are free"},
        "free_in_region_services": ["*"],
        "gateway_endpoint_services": [],
        "usage_types": {
            "inter_region": "Bandwidth Inter-Region Data Transfer Out ({src} to {dst})",
            "internet_egress": "Bandwidth Standard Data Transfer Out ({src})", "nat_gateway": "NAT Gateway Standard Data Processed",
            "private_link": "Private Link Standard Data Processed", "peering": "Virtual Network Peering Intra-Region Data Transfer",
            "global_peering": "Virtual Network Peering Global Data Transfer", "transit_gateway": "Virtual WAN Hub Data Processed",
            "source": "https://azure.microsoft.com/en-us/pricing/details/bandwidth/ (meter names)",
        },
        "default": {
            "same_zone": rate(0, U, AZ_BW, note="within a zone: free"),
            "regional_public": rate(0, U, AZ_BW, note="to Azure services in the same region: free"),
            "transit_gateway": rate(0.02, U, AZ_VWAN, note="Virtual WAN hub data processing"),
            "peering": rate(0.01, U, AZ_VNET, ingress_per_gb=0.01, same_zone_free=False,
                            note="VNet peering in one region: ingress and egress, any zone"),
            "imds": rate(0, U, "https://learn.microsoft.com/en-us/azure/virtual-network/what-is-ip-address-168-63-129-16",
                         note="IMDS and the platform address 168.63.129.16 are not billed"),
            "k8s_control_plane": rate(0, U, "https://azure.microsoft.com/en-us/pricing/details/kubernetes-service/", note="per-cluster fee"),
            "cloud_api": rate(0, U, AZ_BW, note="transfer to Azure services in the same region is free"),
            "load_balancer": rate(0, U, "https://azure.microsoft.com/en-us/pricing/details/load-balancer/", note="rules and data processed not modelled per GB"),
            "external_private": rate(0, U, AZ_BW, note="not priced unless a rule says what it is"),
            "unknown": rate(0, U, AZ_BW, note="zone unknown: not priced rather than guessed"),
        },
        "regions": regions,
    }


BUILDERS = {"aws": build_aws, "gcp": build_gcp, "azure": build_azure}


def render(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.ratecards.build", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="cloud-pricing network.json")
    ap.add_argument("--out", default=str(HERE), help="directory for the card JSON files")
    ap.add_argument("--check", action="store_true", help="fail if the cards differ from what would be generated")
    a = ap.parse_args(argv)
    try:
        data = json.loads(Path(a.data).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {a.data}: {exc}", file=sys.stderr)
        return 2
    stale = []
    for provider, build in BUILDERS.items():
        text = render(build(data))
        path = Path(a.out) / f"{provider}.json"
        if a.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path} ({len(json.loads(text)['regions'])} regions)")
    if stale:
        print(f"error: stale rate cards (re-run python -m jobs.ratecards.build): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
