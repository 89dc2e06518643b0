"""eBPF flow collector (`--collector ebpf`): bpf/flows.c counts bytes and packets per
connection on the cgroup v2 root; this module turns the map into `ConnSample`s that match
conntrack mode row for row.

NAT. cgroup egress runs after the OUTPUT/POSTROUTING hooks and cgroup ingress after the
reply was de-NATed, so a host process that dials a ClusterIP leaves two map entries: egress
client -> backend (post-DNAT) and ingress ClusterIP -> client (de-NATed). A pod's own netns
sees the ClusterIP both ways (kube-proxy translates later, in the host netns). Either way the
kernel's conntrack table knows both tuples, so each map entry is matched against the NAT'ed
conntrack entries (tuples where the reply source differs from the dialed destination) by any
of its four views, and the entries of one connection are merged into one sample: `dst`/`dport`
= what was dialed (the ClusterIP), `reply_src`/`reply_sport` = the backend, as in conntrack
mode. Only entries created since the previous poll are looked up (one dump of the DNAT'ed
conntrack entries per poll that has new entries); a hit is remembered for the entry's
lifetime, so it survives the conntrack entry expiring first. User-space state is therefore
per NAT'ed connection only; everything else is derived from the map at each poll.

Identity. `ct_id` = a hash of the connection's tuple and its first-seen time (kernel
monotonic ns, kept in the map), stable for the agent's lifetime, so a 5-tuple reused after
its entry was removed is a new connection.

End of a connection. TCP: RST, or FIN in both directions, and then idle for `close_grace`
(the last ACKs still count); idle for `tcp_idle_timeout` (TCP) or `idle_timeout` (UDP,
ICMP). The final counters are queued for `drain_ended()` and the map entries deleted. Both
ends of a connection between two pods of this node are counted in two network namespaces;
the originator's side is kept (as the host's conntrack keeps one entry).
"""
from __future__ import annotations

import atexit
import logging
import socket
import struct
import time
from typing import Callable, Iterable

from node_agent import bpfload
from node_agent.collectors.base import Collector, CollectorError
from node_agent.flows import ConnSample

KEY = struct.Struct("=Q16s16sHHBB2x")      # struct flow_key in bpf/flows.c
VAL = struct.Struct("=QQQQQQII")           # struct flow_val
F_LOCAL_FIRST, F_FIN_ORIG, F_FIN_REPLY, F_RST, F_ORIG_IS_B = 1, 2, 4, 8, 16
S_FULL_PACKETS, S_FULL_BYTES, S_UNTRACKED, S_SHORT = range(4)
ICMP_PROTOS = (1, 58)
# ctnetlink (linux/netfilter/nfnetlink_conntrack.h, nf_conntrack_common.h)
NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET = 1, 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
CTA_STATUS, CTA_STATUS_MASK = 3, 26
IPS_DST_NAT = 1 << 5
PROG_NAMES = (b"netmon_flow_in", b"netmon_flow_out")
log = logging.getLogger("netmon.ebpf")

# A NAT source returns conntrack samples (only src/dst/sport/dport/reply_src/reply_sport and
# proto/family are used). Default: a dump of this netns's conntrack table.
NatSource = Callable[[], Iterable[ConnSample]]


class ConntrackNat:
    """NAT source: a dump-only ctnetlink socket (no DESTROY subscription: only the tuples are
    needed) in this network namespace or `netns`, parsed by node_agent/netlink/ctparse.py.

    The dump asks the kernel for DNAT'ed entries only (CTA_STATUS/CTA_STATUS_MASK filter,
    Linux >= 5.19), so its cost follows the number of NAT'ed connections, not the table;
    a kernel that rejects the filter gets a full dump (the index skips non-NAT entries)."""

    def __init__(self, netns: str | None = None, timeout: float = 30.0):
        self.netns = netns
        self.timeout = timeout
        self._sock = None
        self._seq = 0
        self.filtered = True

    def _open(self) -> None:
        from pyroute2.netlink import NETLINK_NETFILTER
        from pyroute2.netns import create_socket

        try:
            self._sock = create_socket(self.netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER)
            self._sock.bind((0, 0))
        except OSError as e:
            raise CollectorError(f"ebpf collector: cannot open a ctnetlink socket for NAT lookups: {e.strerror or e}") from None

    def _request(self, seq: int) -> bytes:
        attrs = b""
        if self.filtered:   # (status & IPS_DST_NAT) == IPS_DST_NAT
            # attribute headers in host order, ctnetlink payloads in network order
            attrs = (struct.pack("=HH", 8, CTA_STATUS) + struct.pack("!I", IPS_DST_NAT)
                     + struct.pack("=HH", 8, CTA_STATUS_MASK) + struct.pack("!I", IPS_DST_NAT))
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0) + attrs    # nfgenmsg: both families
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        return hdr + body

    def __call__(self) -> list[ConnSample]:
        from node_agent.netlink.ctparse import NetlinkError

        try:
            return self._dump()
        except NetlinkError:
            if not self.filtered:
                raise
            self.filtered = False          # older kernel: no status filter in dumps
            return self._dump()

    def _dump(self) -> list[ConnSample]:
        import select

        from node_agent.netlink.ctparse import CtParser, ParseError

        if self._sock is None:
            self._open()
        sock = self._sock
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        sock.send(self._request(self._seq))
        parser, out, done = CtParser(), [], False
        deadline = time.monotonic() + self.timeout
        while not done:
            if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise CollectorError("ebpf collector: conntrack dump for NAT lookups timed out")
            try:
                done = parser.feed(sock.recv(1 << 16), out)
            except ParseError:
                continue
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class EbpfCollector(Collector):
    name = "ebpf"

    def __init__(
        self,
        cgroup_path: str | None = None,
        max_flows: int = 65536,
        idle_timeout: float = 120.0,
        tcp_idle_timeout: float = 1800.0,
        close_grace: float = 10.0,
        nat_source: NatSource | None = None,
        conntrack_netns: str | None = None,
    ):
        self.cgroup_path = cgroup_path
        self.max_flows = int(max_flows)
        self.idle_ns = int(idle_timeout * 1e9)
        self.tcp_idle_ns = int(tcp_idle_timeout * 1e9)
        self.grace_ns = int(close_grace * 1e9)
        # Where the NAT happened: the host netns on a node (kube-proxy); tests pass theirs.
        self._nat_source = nat_source if nat_source is not None else ConntrackNat(conntrack_netns)
        self._loaded: bpfload.Loaded | None = None
        self._att: bpfload.Attachments | None = None
        self._flows: int | None = None     # map fd
        # NAT'ed map entries: unpacked key -> (canonical tuple, reversed?)
        self._resolved: dict[tuple, tuple[tuple, bool]] = {}
        self._last_read = -1 << 62      # first poll: every entry is new
        self._live = 0
        self._ended: list[ConnSample] = []
        self._polled_since_drain = False
        self._map_entries = 0
        self._stats = {"resyncs": 0, "events_lost": 0, "nat_dumps": 0, "nat_resolved": 0,
                       "stale_detached": 0, "ended": 0, "duplicates_dropped": 0, "nat_errors": 0}

    # ------------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        self._resolved.clear()
        self._last_read = -1 << 62
        try:
            cgroup = bpfload.find_cgroup2(self.cgroup_path)
            self._loaded = bpfload.load("flows.c", ["netmon_flow_in", "netmon_flow_out"],
                                        ["netmon_flows", "netmon_fstats"], [f"-DMAX_FLOWS={self.max_flows}"])
            self._stats["stale_detached"] = bpfload.remove_stale(cgroup, PROG_NAMES)
            self._att = bpfload.Attachments(cgroup)
            atexit.register(self.close)
            progs = self._loaded.progs
            self._att.attach(progs["netmon_flow_in"], bpfload.CGROUP_INET_INGRESS, "netmon_flow_in")
            self._att.attach(progs["netmon_flow_out"], bpfload.CGROUP_INET_EGRESS, "netmon_flow_out")
        except bpfload.BpfError as e:
            self.close()
            raise CollectorError(f"ebpf collector: {e}") from None
        except OSError as e:   # the cgroup queries (BPF_PROG_QUERY needs CAP_NET_ADMIN)
            self.close()
            raise CollectorError(f"ebpf collector: {self.cgroup_path or 'cgroup'}: {e.strerror or e}") from None
        except Exception:
            self.close()
            raise
        self._flows = self._loaded.maps["netmon_flows"]
        self.cgroup_path = cgroup

    def close(self) -> None:
        """Detach and release everything; never raises (it runs in the agent's finally)."""
        att, self._att = self._att, None
        try:
            if att is not None:
                att.close()
        except bpfload.BpfError as e:
            log.warning("ebpf collector: %s", e)
        finally:
            closer = getattr(self._nat_source, "close", None)
            if closer is not None:
                closer()
            if self._loaded is not None:
                self._loaded.close()
                self._loaded = None
            self._flows = None
            atexit.unregister(self.close)

    # -------------------------------------------------------------------------- reading

    def _read(self) -> tuple[bytes, bytes]:
        """The map's keys and values as two flat buffers (struct flow_key / flow_val arrays)."""
        try:
            return bpfload.lookup_batch(self._flows, KEY.size, VAL.size)
        except OSError as e:
            raise CollectorError(f"ebpf collector: reading the flow map failed: {e.strerror} "
                                 "(batch map lookups need Linux >= 5.6)") from None

    def _nat_index(self) -> dict[tuple, tuple[tuple, bool]]:
        """Tuple view -> (canonical tuple, reversed?) for NAT'ed conntrack entries only."""
        self._stats["nat_dumps"] += 1
        idx: dict[tuple, tuple[tuple, bool]] = {}
        try:
            samples = self._nat_source()
        except (OSError, CollectorError) as e:
            # No conntrack (module not loaded, no permission): flows are still counted, with
            # the addresses the sockets saw. Counted and logged once, never fatal.
            self._stats["nat_errors"] += 1
            if self._stats["nat_errors"] == 1:
                log.warning("ebpf collector: conntrack NAT lookup failed, reporting pre-NAT addresses: %s", e)
            return idx
        for s in samples:
            if s.reply_src == s.dst and s.reply_sport == s.dport:
                continue
            canon = (s.family, s.proto, s.src, s.sport, s.dst, s.dport, s.reply_src, s.reply_sport)
            p = s.proto
            for a, ap, b, bp in ((s.src, s.sport, s.dst, s.dport), (s.src, s.sport, s.reply_src, s.reply_sport)):
                idx[(p, a, ap, b, bp)] = (canon, False)
                idx[(p, b, bp, a, ap)] = (canon, True)
        return idx

    def _poll(self) -> list[ConnSample]:
        if self._flows is None:
            raise CollectorError("ebpf collector is not open")
        self._polled_since_drain = True
        read_at = time.monotonic_ns()
        kbytes, vbytes = self._read()
        self._map_entries = len(kbytes) // KEY.size
        # Entries first seen since the last read need a NAT lookup (the map's clock is the
        # coarse monotonic one, a tick behind at most: one second of margin).
        new_since, self._last_read = self._last_read - 1_000_000_000, read_at
        resolved = self._resolved
        nat = None
        icmp = ICMP_PROTOS

        # Merge map entries into connections: canonical -> [netns, b0, p0, b1, p1, first, last,
        # flags, local_orig, keys]; entries of the same connection in other network namespaces
        # (both ends on this node) go to `others` (rare) and one side is chosen below.
        # One pass over the raw buffers, no per-entry objects beyond the unpacked tuples.
        groups: dict[tuple, list] = {}
        others: dict[tuple, dict[int, list]] = {}
        for kt, (b0, b1, p0, p1, first, last, flags, _pad) in zip(KEY.iter_unpack(kbytes), VAL.iter_unpack(vbytes)):
            netns, s, d, sp, dp, proto, fam = kt     # sides A, B of the key
            if fam == 4:
                s, d = s[:4], d[:4]
            if flags & F_ORIG_IS_B:                  # orient like the first packet
                s, d, sp, dp = d, s, dp, sp
            hit = resolved.get(kt) if resolved else None
            if hit is None and first >= new_since:
                if nat is None:
                    nat = self._nat_index()
                if proto in icmp:       # ct tuples: echo id as sport, dport 0
                    hit = nat.get((proto, s, sp, d, 0)) or nat.get((proto, s, 0, d, sp))
                else:
                    hit = nat.get((proto, s, sp, d, dp))
                if hit is not None:
                    self._stats["nat_resolved"] += 1
                    resolved[kt] = hit
            if hit is None:
                rev = False
                canon = (fam, proto, s, sp, d, 0, d, 0) if proto in icmp else (fam, proto, s, sp, d, dp, d, dp)
            else:
                canon, rev = hit
                if rev:
                    b0, b1, p0, p1 = b1, b0, p1, p0
                    flags = (flags & ~(F_FIN_ORIG | F_FIN_REPLY)) | (F_FIN_REPLY if flags & F_FIN_ORIG else 0) | (
                        F_FIN_ORIG if flags & F_FIN_REPLY else 0)
            local_orig = bool(flags & F_LOCAL_FIRST) != rev   # local socket is the originator
            acc = groups.get(canon)
            if acc is not None and acc[0] != netns:
                per_ns = others.setdefault(canon, {})
                acc = per_ns.get(netns)
                if acc is None:
                    per_ns[netns] = [netns, b0, p0, b1, p1, first, last, flags, local_orig, [kt]]
                    continue
            if acc is None:
                groups[canon] = [netns, b0, p0, b1, p1, first, last, flags, local_orig, [kt]]
            else:
                acc[1] += b0; acc[2] += p0; acc[3] += b1; acc[4] += p1
                if first < acc[5]:
                    acc[5] = first
                if last > acc[6]:
                    acc[6] = last
                acc[7] |= flags
                acc[8] = acc[8] or local_orig
                acc[9].append(kt)

        live: list[ConnSample] = []
        idle_ns, tcp_idle_ns, grace_ns = self.idle_ns, self.tcp_idle_ns, self.grace_ns
        now = time.monotonic_ns()
        for canon, acc in groups.items():
            sides = None
            if canon in others:
                # The originator's side if seen, else the lowest netns cookie: a choice that
                # does not change between polls.
                sides = [acc, *others[canon].values()]
                chosen = min(sides, key=lambda x: (not x[8], x[0]))
                first = min(x[5] for x in sides)
                last = max(x[6] for x in sides)
                flags = 0
                for x in sides:
                    flags |= x[7]
            else:
                chosen, first, last, flags = acc, acc[5], acc[6], acc[7]
            ct_id = hash((canon, first)) & 0x7FFFFFFFFFFFFFFF
            _ns, b0, p0, b1, p1 = chosen[:5]
            fam, proto, s, sp, d, dp, rs, rsp = canon
            idle = now - last
            if proto == 6:
                done = idle >= tcp_idle_ns or (idle >= grace_ns and (
                    flags & F_RST or (flags & F_FIN_ORIG and flags & F_FIN_REPLY)))
            else:
                done = idle >= idle_ns
            if done:
                self._ended.append(ConnSample(ct_id, fam, proto, s, d, sp, dp, rs, rsp, b0, p0, b1, p1, True))
                self._stats["ended"] += 1
                for x in (sides or (acc,)):
                    if x is not chosen:
                        self._stats["duplicates_dropped"] += 1
                    for kt in x[9]:
                        self._delete(kt)
                continue
            live.append(ConnSample(ct_id, fam, proto, s, d, sp, dp, rs, rsp, b0, p0, b1, p1, False))
        self._live = len(live)
        return live

    def _delete(self, kt: tuple) -> None:
        self._resolved.pop(kt, None)
        bpfload.map_delete(self._flows, KEY.pack(*kt))

    # ---------------------------------------------------------------------- interface

    def dump(self) -> list[ConnSample]:
        return self._poll()

    def drain_ended(self) -> list[ConnSample]:
        if not self._polled_since_drain and self._flows is not None:
            self._poll()
        self._polled_since_drain = False
        out, self._ended = self._ended, []
        return out

    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["live"] = self._live
        out["nat_tracked"] = len(self._resolved)
        out["map_entries"] = self._map_entries
        out["map_max_entries"] = self.max_flows
        if self._loaded is not None:
            st = self._loaded.maps["netmon_fstats"]
            for name, slot in (("map_full_packets", S_FULL_PACKETS), ("map_full_bytes", S_FULL_BYTES),
                               ("untracked_packets", S_UNTRACKED), ("short_packets", S_SHORT)):
                out[name] = bpfload.percpu_u64_sum(st, slot)
            out["events_lost"] = out["map_full_packets"]
        return out
