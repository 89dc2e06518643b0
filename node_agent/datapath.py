"""Does the host's conntrack see pod traffic? Decided at start-up and re-checked periodically.

Datapaths that bypass netfilter (Cilium with kube-proxy replacement and eBPF host routing,
Calico's eBPF dataplane, ...) leave no host conntrack entries for pod traffic, so the
conntrack collector would report nothing and nobody would be told. Evidence, cheapest first:

- **Traffic vs. conntrack.** Bytes on the pod-facing interfaces (every `veth` link: the host
  ends of pod interfaces for Cilium `lxc*`, Calico `cali*`, Flannel/bridge `veth*`, AWS VPC
  CNI `eni*`, OVS ports) against the bytes conntrack counted over the same interval
  (live entries' counters at the end + final counters of entries that ended - counters at
  the start). Interfaces see a routed packet twice (in and out) and count L2 headers, so a
  tracked datapath gives a ratio around 0.5; below `MIN_RATIO` with at least `MIN_BYTES` on
  the interfaces, conntrack is blind.
- **eBPF dataplane maps pinned** under /sys/fs/bpf (`cilium_*`, Calico's `cali_*`): a hint
  only (Cilium pins its maps in every mode, also when netfilter still sees pod traffic), used
  when there is not enough traffic to measure.

`--collector auto` (the default) uses conntrack when it sees pod traffic and the eBPF
collector otherwise; a periodic re-check that finds conntrack blind switches to eBPF while
running (connections then start again in the eBPF map: nothing is counted twice, because
conntrack counted nothing of them). `--collector conntrack` refuses to start on a blind
datapath with one line, and a re-check that finds it blind later logs one error line.
The decision is exported in the collector's stats (`datapath_*`, see docs/agent.md).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from node_agent.collectors.base import Collector, CollectorError

log = logging.getLogger("netmon.datapath")
BPFFS = "/sys/fs/bpf"
MIN_BYTES = 256 << 10     # interface bytes in a sample below which there is no evidence
MIN_RATIO = 0.05          # conntrack bytes / interface bytes below which conntrack is blind
DATAPLANES = {"cilium": ("cilium_",), "calico-ebpf": ("cali_",)}


def pinned_dataplanes(bpffs: str = BPFFS) -> dict[str, int]:
    """eBPF dataplanes whose maps are pinned on this host: {'cilium': 12, ...} (map count)."""
    found: dict[str, int] = {}
    for sub in ("tc/globals", "", "cilium", "calico"):
        d = os.path.join(bpffs, sub) if sub else bpffs
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for cni, prefixes in DATAPLANES.items():
            n = sum(1 for x in names if x.startswith(prefixes))
            if n:
                found[cni] = found.get(cni, 0) + n
        if sub in ("cilium", "calico"):
            found.setdefault("cilium" if sub == "cilium" else "calico-ebpf", 1)
    return found


def interface_bytes(netns: str | None = None) -> tuple[int, int]:
    """(rx + tx bytes summed over veth links, number of veth links) of this host or `netns`."""
    from node_agent.netlink.rtnl import links

    veths = [link for link in links(netns) if link.kind == "veth"]
    return sum(link.rx_bytes + link.tx_bytes for link in veths), len(veths)


@dataclass
class Verdict:
    blind: bool | None        # True: conntrack misses pod traffic; None: not enough traffic
    iface_bytes: int
    ct_bytes: int
    veths: int
    pinned: dict[str, int]

    def describe(self) -> str:
        parts = [f"veth interfaces carried {self.iface_bytes} B, conntrack counted {self.ct_bytes} B"]
        if self.pinned:
            parts.append("eBPF dataplane maps pinned: " + ", ".join(f"{k} ({v})" for k, v in sorted(self.pinned.items())))
        return "; ".join(parts)


def judge(iface_bytes: int, ct_bytes: int, veths: int, pinned: dict[str, int]) -> Verdict:
    if iface_bytes < MIN_BYTES:
        return Verdict(None, iface_bytes, ct_bytes, veths, pinned)
    return Verdict(ct_bytes < MIN_RATIO * iface_bytes, iface_bytes, ct_bytes, veths, pinned)


class Measure:
    """Conntrack bytes between two dumps, as sums only (no per-entry state): live counters at
    the end + final counters of entries that ended in between - live counters at the start."""

    def __init__(self, netns: str | None):
        self.netns = netns
        self.start_ct = self.ended_ct = 0
        self.start_if = 0

    def begin(self, dump_sum: int) -> None:
        self.start_ct, self.ended_ct = dump_sum, 0
        self.start_if = interface_bytes(self.netns)[0]

    def finish(self, dump_sum: int, pinned: dict[str, int]) -> Verdict:
        iface, veths = interface_bytes(self.netns)
        ct = max(0, dump_sum + self.ended_ct - self.start_ct)
        return judge(max(0, iface - self.start_if), ct, veths, pinned)


def _sum(samples) -> int:
    return sum(s.orig_bytes + s.reply_bytes for s in samples)


class AutoCollector(Collector):
    """Conntrack while it sees pod traffic, else eBPF (mode 'auto'); 'conntrack' refuses a
    blind datapath. Delegates everything else to the collector in use."""

    @property
    def name(self) -> str:
        """The collector in use ('conntrack' or 'ebpf'; 'auto' before open)."""
        return self.inner.name if self.inner is not None else "auto"

    @property
    def events_complete(self) -> bool:
        # read by the run loop at start: conntrack's DESTROY events let it dump once per
        # window; after a switch the eBPF collector reads its map at every drain anyway
        return bool(getattr(self.inner, "events_complete", False))

    @property
    def overrun(self) -> bool:
        return bool(getattr(self.inner, "overrun", False))

    def __init__(self, mode: str, conntrack_factory: Callable[[], Collector],
                 ebpf_factory: Callable[[], Collector] | None, netns: str | None = None,
                 sample_seconds: float = 2.0, recheck_seconds: float = 300.0, bpffs: str = BPFFS):
        if mode not in ("auto", "conntrack"):
            raise ValueError(f"datapath detection mode {mode!r}")
        self.mode = mode
        self._ct_factory, self._ebpf_factory = conntrack_factory, ebpf_factory
        self.netns = netns
        self.sample_seconds = sample_seconds
        self.recheck_seconds = recheck_seconds
        self.bpffs = bpffs
        self.inner: Collector | None = None
        self.verdict: Verdict | None = None
        self._measure: Measure | None = None
        self._next_check = 0.0
        self._warned = False
        self._st = {"datapath_checks": 0, "datapath_switches": 0}
        self._held_ended: list = []   # ended while the start-up sample ran, for the first drain

    # ------------------------------------------------------------------ start-up
    def open(self) -> None:
        ct = self._ct_factory()
        ct.open()
        try:
            m = Measure(self.netns)
            m.begin(_sum(ct.dump()))
            time.sleep(self.sample_seconds)
            # the connections that ended while sampling are handed to the accounter with its
            # first drain: their DESTROY counters continue a restored state (no lost bytes)
            ended = list(ct.drain_ended())
            m.ended_ct = _sum(ended)
            verdict = m.finish(_sum(ct.dump()), pinned_dataplanes(self.bpffs))
        except BaseException:
            ct.close()
            raise
        self.verdict = verdict
        self._st["datapath_checks"] += 1
        use_ebpf = verdict.blind or (verdict.blind is None and bool(verdict.pinned) and self.mode == "auto"
                                     and self._ebpf_factory is not None)
        if not use_ebpf:
            self.inner = ct
            self._held_ended = ended
            log.info("datapath: conntrack sees pod traffic (%s): conntrack collector", verdict.describe()
                     if verdict.blind is not None else "no traffic to judge by; " + verdict.describe())
        elif self.mode == "conntrack":
            ct.close()
            raise CollectorError(f"conntrack does not see pod traffic on this node ({verdict.describe()}); "
                                 "use --collector ebpf (or auto)")
        else:
            ct.close()
            self.inner = self._open_ebpf(verdict, at_start=True)
        self._next_check = time.monotonic() + self.recheck_seconds

    def _open_ebpf(self, verdict: Verdict, at_start: bool) -> Collector:
        why = ("conntrack does not see pod traffic" if verdict.blind
               else "an eBPF dataplane is installed and there was no traffic to check conntrack with")
        if self._ebpf_factory is None:
            raise CollectorError(f"{why} ({verdict.describe()}) and the ebpf collector is not available here")
        try:
            eb = self._ebpf_factory()
            eb.open()
        except CollectorError as exc:
            raise CollectorError(f"{why} ({verdict.describe()}) and {exc}") from None
        except Exception as exc:  # noqa: BLE001 - BCC/kernel failures come in many types
            msg = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CollectorError(f"{why} ({verdict.describe()}) and the ebpf collector cannot start: {msg}") from None
        log.warning("datapath: %s (%s): %s the ebpf collector", why, verdict.describe(),
                    "using" if at_start else "switching to")
        return eb

    # ------------------------------------------------------------------ periodic re-check
    def _is_ct(self) -> bool:
        return self.inner is not None and self.inner.name == "conntrack"

    def iter_dump(self):
        inner = self.inner
        if inner is None:
            raise CollectorError("collector is not open")
        if not self._is_ct():
            yield from inner.iter_dump()
            return
        m = self._measure
        if m is None and time.monotonic() < self._next_check:
            yield from inner.iter_dump()
            return
        total = 0
        for s in inner.iter_dump():
            total += s.orig_bytes + s.reply_bytes
            yield s
        if m is None:               # start of a measurement: until the next dump
            self._measure = Measure(self.netns)
            self._measure.begin(total)
        else:
            self._measure = None
            self._next_check = time.monotonic() + self.recheck_seconds
            self._recheck(m.finish(total, pinned_dataplanes(self.bpffs)))

    def dump(self):
        return list(self.iter_dump())

    def drain_ended(self):
        out = self.inner.drain_ended()
        if self._held_ended:
            out, self._held_ended = self._held_ended + list(out), []
        if self._measure is not None:
            self._measure.ended_ct += _sum(out)
        return out

    def _recheck(self, verdict: Verdict) -> None:
        self._st["datapath_checks"] += 1
        if verdict.blind is None:
            return                  # no traffic to judge by: keep the last verdict
        self.verdict = verdict
        if not verdict.blind:
            self._warned = False
            return
        if self.mode == "auto" and self._ebpf_factory is not None:
            try:
                eb = self._open_ebpf(verdict, at_start=False)
            except CollectorError as exc:
                if not self._warned:
                    log.error("datapath: %s", exc)
                    self._warned = True
                return
            old, self.inner = self.inner, eb
            old.close()
            self._st["datapath_switches"] += 1
        elif not self._warned:
            log.error("datapath: conntrack no longer sees pod traffic (%s); flows are missing: "
                      "restart with --collector ebpf (or auto)", verdict.describe())
            self._warned = True

    # ------------------------------------------------------------------ the rest
    def stats(self) -> dict[str, int]:
        out = dict(self.inner.stats()) if self.inner is not None else {}
        out.update(self._st)
        v = self.verdict
        out["datapath_collector_ebpf"] = int(self.inner is not None and self.inner.name == "ebpf")
        out["datapath_conntrack_blind"] = -1 if v is None or v.blind is None else int(v.blind)
        out["datapath_ebpf_dataplane_maps"] = sum(v.pinned.values()) if v is not None else 0
        return out

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
