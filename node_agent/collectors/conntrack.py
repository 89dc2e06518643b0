"""Conntrack collector: the kernel's connection table over ctnetlink.

pyroute2 creates the netlink socket inside another network namespace (tests, tools); the
agent's own sockets, the constants and the 20-byte dump request are encoded here. Our own struct parser
(node_agent/netlink/ctparse.py) reads the replies, because per-attribute parsing in
pyroute2 is ~25x too slow for a 50k-entry table.

Two sockets:
- a dump socket: one `IPCTNL_MSG_CT_GET | NLM_F_DUMP` request with AF_UNSPEC (both IPv4 and
  IPv6) per poll, multi-part replies until NLMSG_DONE;
- an event socket subscribed to NFNLGRP_CONNTRACK_DESTROY: the final counters of every
  connection that ends, so bytes between the last poll and the end are not lost. It is
  non-blocking, drained at each poll, with a large receive buffer (SO_RCVBUFFORCE as root).
  On overrun (ENOBUFS) events are lost: `events_lost` counts them (the socket's drop counter),
  and the next dump is a resync (`resyncs`); the accounter's rules make that safe (see
  docs/agent-accounting.md).
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from typing import Iterator

from node_agent.collectors.base import Collector, CollectorError
from node_agent.flows import ConnSample
from node_agent.netlink.ctparse import CtParser, NetlinkError, ParseError

ACCT_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_acct"
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
RECV_SIZE = 1 << 16   # the kernel sends dump datagrams of at most 32 KiB


# The netlink constants (linux/netlink.h, linux/netfilter/nfnetlink*.h) and the 20-byte dump
# request are encoded here: pyroute2's nfctsocket module costs ~3 MiB of RSS for them.
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET = 1, 1
NFNLGRP_CONNTRACK_DESTROY = 3
_REQ = struct.Struct("=IHHIIBBH")   # nlmsghdr + nfgenmsg (family, version, res_id)


def dump_request(seq: int) -> bytes:
    """IPCTNL_MSG_CT_GET | NLM_F_DUMP for AF_UNSPEC: both IPv4 and IPv6 in one dump."""
    return _REQ.pack(_REQ.size, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP,
                     seq, 0, socket.AF_UNSPEC, 0, 0)


def _socket(netns: str | None) -> socket.socket:
    """A ctnetlink socket in our own namespace, or (tests, tools) in `netns` via pyroute2."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER)
    from pyroute2.netns import create_socket

    return create_socket(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER)


def enable_acct(netns: str | None = None) -> dict[str, int]:
    """Set and verify nf_conntrack_acct=1 and nf_conntrack_events>=1 (per network namespace,
    node_agent/kernel.py); CollectorError with one line if not. Returns the values read back."""
    from node_agent.kernel import ensure_conntrack_settings

    try:
        return ensure_conntrack_settings(netns)
    except PermissionError as exc:
        raise CollectorError(f"cannot enable conntrack accounting: {exc}") from None
    except OSError as exc:
        raise CollectorError(f"cannot enable conntrack accounting: {exc}") from None


class ConntrackCollector(Collector):
    """Live conntrack entries and DESTROY events of one network namespace."""

    name = "conntrack"
    # every connection that ends sends its final counters (DESTROY), so the run loop only
    # drains events between cuts and dumps the table once per window (and after lost events)
    events_complete = True

    def __init__(self, netns: str | None = None, rcvbuf: int = 32 << 20, dump_timeout: float = 30.0):
        self.netns = netns              # None: the agent's own namespace (hostNetwork on a node)
        self.rcvbuf = rcvbuf
        self.dump_timeout = dump_timeout
        self._dump_sock: socket.socket | None = None
        self._event_sock: socket.socket | None = None
        self._parser = CtParser()
        # zone duplicates, counter-less entries, tunnel encapsulation (node_agent/ctfilter.py)
        self._filter = _entry_filter(netns)
        self._kernel: dict[str, int] = {}
        self._seq = int(time.time()) & 0xFFFF
        self._overrun = False
        self._stats = {
            "entries": 0, "dumps": 0, "events": 0, "event_overruns": 0, "events_lost": 0,
            "resyncs": 0, "parse_errors": 0, "malformed": 0, "dump_seconds_total_ms": 0,
        }

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        self._kernel = enable_acct(self.netns)
        destroy_group = NFNLGRP_CONNTRACK_DESTROY

        try:
            self._dump_sock = _socket(self.netns)
            self._dump_sock.bind((0, 0))
            self._event_sock = _socket(self.netns)
            try:
                self._event_sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except PermissionError:
                self._event_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            self._event_sock.bind((0, 1 << (destroy_group - 1)))
            self._event_sock.setblocking(False)
        except OSError as exc:
            self.close()
            hint = " (needs root: CAP_NET_ADMIN)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
            raise CollectorError(f"cannot open a ctnetlink socket: {exc.strerror or exc}{hint}") from None
        try:  # a dump proves we may read the table (CAP_NET_ADMIN) before the agent starts
            for _ in self.iter_dump():
                pass
        except CollectorError:
            self.close()
            raise

    def close(self) -> None:
        for s in (self._dump_sock, self._event_sock):
            if s is not None:
                s.close()
        self._dump_sock = self._event_sock = None

    # ------------------------------------------------------------------ dump
    def _request(self) -> bytes:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return dump_request(self._seq)

    def iter_dump(self) -> Iterator[ConnSample]:
        sock = self._dump_sock
        if sock is None:
            raise CollectorError("conntrack collector is not open")
        self._drain_stale(sock)
        flt = self._filter
        flt.begin_dump()
        t0 = time.monotonic()
        sock.send(self._request())
        parser = self._parser
        batch: list[ConnSample] = []
        done = False
        entries = 0
        before = parser.malformed
        deadline = t0 + self.dump_timeout
        while not done:
            if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise CollectorError(f"conntrack dump timed out after {self.dump_timeout:.0f} s")
            data = sock.recv(RECV_SIZE)
            special = parser.special
            try:
                done = parser.feed(data, batch)
            except ParseError:
                self._stats["parse_errors"] += 1  # that datagram is lost; the dump goes on
            except NetlinkError as exc:
                hint = " (needs root: CAP_NET_ADMIN)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
                raise CollectorError(f"conntrack dump failed: {exc.strerror}{hint}") from None
            batch = flt.batch(batch, parser.special != special)
            entries += len(batch)
            yield from batch
            batch = []
        batch = flt.end_dump()
        entries += len(batch)
        yield from batch
        st = self._stats
        st["dumps"] += 1
        st["entries"] = entries
        st["malformed"] += parser.malformed - before
        st["dump_seconds_total_ms"] += int((time.monotonic() - t0) * 1000)
        if self._overrun:  # this dump re-established the truth after lost events
            st["resyncs"] += 1
            self._overrun = False

    def dump(self) -> list[ConnSample]:
        return list(self.iter_dump())

    @staticmethod
    def _drain_stale(sock: socket.socket) -> None:
        """Discard what an abandoned previous dump left in the socket."""
        while True:
            try:
                sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return

    # ------------------------------------------------------------------ events
    def drain_ended(self) -> list[ConnSample]:
        sock = self._event_sock
        if sock is None:
            raise CollectorError("conntrack collector is not open")
        out: list[ConnSample] = []
        parser = self._parser
        before = parser.malformed
        special = parser.special
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: resync at the next dump
                    self._stats["event_overruns"] += 1
                    self._overrun = True
                    continue
                raise
            try:
                parser.feed(data, out)
            except (ParseError, NetlinkError):
                self._stats["parse_errors"] += 1
        self._stats["events"] += len(out)
        self._stats["malformed"] += parser.malformed - before
        self._stats["events_lost"] = self._socket_drops()
        return self._filter.ended([s for s in out if s.ended], parser.special != special)

    def _socket_drops(self) -> int:
        """Events the kernel dropped on our event socket (SO_MEMINFO drop counter)."""
        try:
            raw = self._event_sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
            return struct.unpack("9I", raw[:36])[SK_MEMINFO_DROPS]
        except (OSError, struct.error):
            return self._stats["event_overruns"]

    @property
    def overrun(self) -> bool:
        """True after lost events until the next dump has resynced."""
        return self._overrun

    def stats(self) -> dict[str, int]:
        return {**self._stats, **self._filter.stats(), **self._kernel}


def _entry_filter(netns: str | None):
    from node_agent.ctfilter import EntryFilter
    from node_agent.localaddrs import LocalAddrs
    from node_agent.tunnels import TunnelWatch

    return EntryFilter(TunnelWatch(netns), LocalAddrs(netns).packed)
