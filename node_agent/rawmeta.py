"""What a raw/flows window file says about its own completeness (Parquet key/value metadata).

Readers of the lake cannot see /metrics, so each window file carries the collector figures
that qualify its rows (docs/lake.md, "Window metadata"), all as decimal strings:

| key | meaning |
| --- | --- |
| `netmon.collector` | `conntrack` or `ebpf` (the collector that produced the rows) |
| `netmon.entries_without_counters` | conntrack entries without byte counters in the window's last dump (created while `nf_conntrack_acct` was 0): their traffic is not in the rows |
| `netmon.ended_without_counters` | such entries that ended during the window |
| `netmon.zone_duplicates` | zoned conntrack entries held back as duplicates of a connection counted once (last dump) |
| `netmon.tunnel_excluded_bytes` | bytes of the node's own tunnel encapsulation left out during the window |
| `netmon.conntrack_events` | `nf_conntrack_events` as read back (2: entries older than the agent send no DESTROY) |

Deltas are taken between consecutive cuts from the collector's monotonic stats.
"""
from __future__ import annotations

_DELTAS = ("ended_without_counters", "tunnel_excluded_bytes")
_LEVELS = ("entries_without_counters", "zone_duplicates")


class WindowMeta:
    def __init__(self) -> None:
        self._prev: dict[str, int] = {}

    def cut(self, collector_name: str, stats: dict[str, int]) -> dict[str, str]:
        out = {"netmon.collector": "ebpf" if stats.get("datapath_collector_ebpf") else collector_name}
        if out["netmon.collector"] == "auto":
            out["netmon.collector"] = "conntrack"
        for k in _LEVELS:
            out[f"netmon.{k}"] = str(int(stats.get(k, 0)))
        for k in _DELTAS:
            v = int(stats.get(k, 0))
            out[f"netmon.{k}"] = str(max(0, v - self._prev.get(k, 0)))
            self._prev[k] = v
        if "kernel_ct_events" in stats:
            out["netmon.conntrack_events"] = str(int(stats["kernel_ct_events"]))
        return out
