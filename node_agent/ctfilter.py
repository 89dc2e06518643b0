"""One count per connection: what the conntrack collector holds back from the accounter.

Three kinds of entries would be counted wrongly if passed on, each counted in stats():

- **Counter-less entries** (created while `nf_conntrack_acct` was 0; `ConnSample.counters`
  False): they carry no bytes, so reporting them would be a silent 0-byte flow. Held back,
  counted per dump (`entries_without_counters`) and at their end
  (`ended_without_counters`).
- **Zone duplicates.** OVN-Kubernetes, Antrea and other OVS datapaths run one connection
  through several conntrack zones: the table holds one entry per zone, each with the full
  counters. Entries of one connection share the originator (address, port) and the real
  peer (reply source address, port) in every zone (a zone that NATs rewrites the other
  addresses), so that is the grouping key. Entries of the default zone 0 are always passed
  (the host stack's own view, what conntrack mode is built on); a zoned entry whose key also
  has a zone-0 entry is dropped, and among zoned entries of one key one is chosen (the
  pre-NAT view if any, then the lowest zone) and kept for its lifetime, so the accounter
  never sees a second entry of the connection appear when the first one ends.
  `zone_duplicates` = zoned entries held back in the last dump, `zone_duplicates_ended` the
  DESTROY events dropped.
- **Encapsulation of the node's own overlays and tunnels** (node_agent/tunnels.py): UDP
  entries to or from a tunnel port of a local VXLAN / Geneve / WireGuard device, and
  IPIP / GRE / SIT entries when such devices exist, with a host address on one side. The
  pod flows inside them are tracked as their own entries; the outer entries would price the
  same bytes again as node-to-node traffic. Their bytes and packets are counted as deltas
  (`tunnel_excluded_bytes`, `tunnel_excluded_packets`) and the live entries in
  `tunnel_entries`.

Cost: entries from the parser's fast paths always have counters and zone 0 (the parser
counts the others, see CtParser.zoned / .counterless), so on a node without zones a dump
batch is only scanned when the node has tunnel devices, for the tunnel ports.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from node_agent.flows import ConnSample

RECENT_END_S = 30.0   # zone siblings of a connection end within moments of each other


def _key(s: ConnSample) -> tuple:
    return (s.family, s.proto, s.src, s.sport, s.reply_src, s.reply_sport)


class ZoneDedup:
    """Zoned entries of one connection -> one (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.zoned_seen = False                   # the last dump had zoned entries
        self._chosen: dict[tuple, int] = {}        # key -> ct_id passed to the accounter
        self._siblings: dict[tuple, set[int]] = {}  # key -> every zoned ct_id seen (last dump)
        self._ended: dict[tuple, float] = {}       # key -> when its chosen entry ended
        self.duplicates = 0
        self.duplicates_ended = 0

    def _expire(self, now: float) -> None:
        if self._ended:
            for k in [k for k, t in self._ended.items() if now - t > RECENT_END_S]:
                del self._ended[k]

    def dump(self, zoned: list[ConnSample], zone0_keys: set[tuple]) -> list[ConnSample]:
        """The zoned entries of a complete dump -> the ones to pass on."""
        now = self.clock()
        self._expire(now)
        groups: dict[tuple, list[ConnSample]] = {}
        for s in zoned:
            groups.setdefault(_key(s), []).append(s)
        chosen: dict[tuple, int] = {}
        siblings: dict[tuple, set[int]] = {}
        out: list[ConnSample] = []
        held = 0
        for k, entries in groups.items():
            ids = {s.ct_id for s in entries}
            prev = self._chosen.get(k)
            known = self._siblings.get(k, set())
            siblings[k] = ids
            if k in zone0_keys:
                held += len(entries)
                continue
            if prev is not None and prev in ids:
                keep = prev
            elif (prev is not None or k in self._ended) and ids & known:
                # the chosen entry ended; its siblings stay held back until they end too
                self._ended.setdefault(k, now)
                held += len(entries)
                continue
            else:
                keep = min(entries, key=lambda s: (s.dst == s.reply_src, s.zone, s.ct_id)).ct_id
            chosen[k] = keep
            for s in entries:
                if s.ct_id == keep:
                    out.append(s)
                else:
                    held += 1
        for k, prev in self._chosen.items():   # chosen entries gone without a DESTROY we saw
            if k not in chosen and k not in self._ended:
                self._ended[k] = now
        self._chosen, self._siblings = chosen, siblings
        self.duplicates = held
        self.zoned_seen = bool(zoned)
        return out

    def ended(self, samples: list[ConnSample]) -> list[ConnSample]:
        """DESTROY events (zone 0 and zoned mixed) -> the ones to pass on."""
        if not any(s.zone for s in samples):
            return samples
        now = self.clock()
        self._expire(now)
        zone0 = {_key(s) for s in samples if not s.zone}
        out: list[ConnSample] = []
        for s in samples:
            if not s.zone:
                out.append(s)
                continue
            k = _key(s)
            chosen = self._chosen.get(k)
            if chosen == s.ct_id:
                del self._chosen[k]
                self._ended[k] = now
                out.append(s)
            elif chosen is not None or k in self._ended or k in zone0 or s.ct_id in self._siblings.get(k, ()):
                self.duplicates_ended += 1
            else:   # never seen in a dump (began and ended between polls): the first one counts
                self._ended[k] = now
                out.append(s)
        return out

    def tracked(self) -> int:
        return len(self._chosen) + len(self._ended)


class TunnelFilter:
    """Outer entries of the node's own tunnels -> held back, their bytes counted as deltas
    (the first dump is a baseline, as for the accounter)."""

    def __init__(self, tunnels_fn: Callable[[], object], host_fn: Callable[[], set[bytes]]):
        self._tunnels_fn = tunnels_fn    # -> node_agent.tunnels.Tunnels (or None)
        self._host_fn = host_fn          # -> packed host addresses
        self._last: dict[int, tuple[int, int]] = {}  # ct_id -> (cumulative bytes, packets)
        self._now: set[int] = set()      # live tunnel entries in the dump being read
        self._baseline = True
        self._t = None
        self._host: set[bytes] = set()
        self.excluded_bytes = 0
        self.excluded_packets = 0
        self.entries = 0

    def refresh(self) -> bool:
        """Read the tunnel set (once per dump / drain); True if there are tunnels."""
        self._t = self._tunnels_fn()
        if self._t:
            self._host = self._host_fn()
        return bool(self._t)

    def split(self, samples: list[ConnSample]) -> list[ConnSample]:
        t = self._t
        if not t:
            return samples
        udp, protos, host = t.udp_ports, t.encap_protos, self._host
        out: list[ConnSample] = []
        last = self._last
        for s in samples:
            p = s.proto
            if ((p == 17 and (s.dport in udp or s.sport in udp)) or p in protos) and (s.src in host or s.dst in host):
                b = s.orig_bytes + s.reply_bytes
                n = s.orig_packets + s.reply_packets
                prev = last.pop(s.ct_id, None)
                if prev is None and self._baseline and not s.ended:
                    prev = (b, n)
                pb, pn = prev or (0, 0)
                if b >= pb and n >= pn:
                    self.excluded_bytes += b - pb
                    self.excluded_packets += n - pn
                if not s.ended:
                    last[s.ct_id] = (b, n)
                    self._now.add(s.ct_id)
                continue
            out.append(s)
        return out

    def begin_dump(self) -> None:
        self._now = set()

    def end_dump(self) -> None:
        """Forget tunnel entries that vanished without a DESTROY."""
        for i in [i for i in self._last if i not in self._now]:
            del self._last[i]
        self.entries = len(self._now)
        self._baseline = False


class EntryFilter:
    """What the conntrack collector applies to its dumps and DESTROY events (module docstring).

    Per dump: `begin_dump()`, `batch(samples, special)` for each parsed batch (returns what to
    pass on now; zoned entries are held until the dump is complete), `end_dump()` (the zoned
    entries to pass on). Per drain: `ended(samples, special)`. `special` says the parser
    produced zoned or counter-less samples in that batch (CtParser.special moved)."""

    def __init__(self, tunnels_fn: Callable[[], object] | None = None,
                 host_fn: Callable[[], set[bytes]] | None = None):
        self.zones = ZoneDedup()
        self.tunnels = TunnelFilter(tunnels_fn or (lambda: None), host_fn or set)
        self.without_counters = 0        # in the last dump
        self.ended_without_counters = 0  # monotonic
        self._zoned: list[ConnSample] = []
        self._zone0: set[tuple] = set()
        self._nocount = 0

    def begin_dump(self) -> None:
        self._zoned, self._zone0, self._nocount = [], set(), 0
        self.tunnels.refresh()
        self.tunnels.begin_dump()

    def batch(self, samples: list[ConnSample], special: bool) -> list[ConnSample]:
        if special:
            keep = []
            for s in samples:
                if not s.counters:
                    self._nocount += 1
                elif s.zone:
                    self._zoned.append(s)
                else:
                    keep.append(s)
            samples = keep
        if self.zones.zoned_seen or self._zoned:   # zone-0 keys decide which zoned entries count
            self._zone0.update(map(_key, samples))
        return self.tunnels.split(samples)

    def end_dump(self) -> list[ConnSample]:
        self.without_counters = self._nocount
        out = self.tunnels.split(self.zones.dump(self._zoned, self._zone0))
        self.tunnels.end_dump()
        self._zoned, self._zone0 = [], set()
        return out

    def ended(self, samples: list[ConnSample], special: bool) -> list[ConnSample]:
        if special:
            n = len(samples)
            samples = [s for s in samples if s.counters]
            self.ended_without_counters += n - len(samples)
            samples = self.zones.ended(samples)
        if self.tunnels.refresh():
            samples = self.tunnels.split(samples)
        return samples

    def stats(self) -> dict[str, int]:
        return {
            "entries_without_counters": self.without_counters,
            "ended_without_counters": self.ended_without_counters,
            "zone_duplicates": self.zones.duplicates,
            "zone_duplicates_ended": self.zones.duplicates_ended,
            "zone_connections_tracked": self.zones.tracked(),
            "tunnel_entries": self.tunnels.entries,
            "tunnel_excluded_bytes": self.tunnels.excluded_bytes,
            "tunnel_excluded_packets": self.tunnels.excluded_packets,
        }
