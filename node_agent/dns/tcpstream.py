"""DNS over TCP: segments of a server's response stream -> whole DNS messages.

Each TCP segment from port 53 arrives from bpf/dns.c with its sequence number. A message is
a 2-byte length prefix and the message (RFC 1035 4.2.2; RFC 7766: several per connection).
A message that fits one segment is parsed at once; a longer one is buffered per stream
(client, server, client port) until complete, in sequence order. What cannot be trusted is
dropped and counted: a gap or out-of-order segment (`dns_tcp_gaps`), a copy cut at the BPF
program's 4096 bytes inside a message (its complete part is still parsed, as for UDP:
`dns_tcp_truncated`), streams idle for `idle_s` or beyond `max_streams` (`dns_tcp_evicted`).
"""
from __future__ import annotations

import time

MAX_MESSAGE = 65535


def _starts_message(data: bytes, pos: int) -> bool:
    """A length prefix followed by a plausible response header: length >= 12, QR set,
    opcode QUERY, one question (what every resolver sends and every server echoes)."""
    if len(data) - pos < 2 + 6:
        return len(data) - pos >= 2 and ((data[pos] << 8) | data[pos + 1]) >= 12 and len(data) - pos == 2
    need = (data[pos] << 8) | data[pos + 1]
    flags = data[pos + 4]
    return need >= 12 and flags & 0x80 and not flags & 0x78 and data[pos + 6] == 0 and data[pos + 7] == 1


class _Stream:
    __slots__ = ("next_seq", "need", "buf", "at")

    def __init__(self, next_seq: int, need: int, buf: bytearray, at: float):
        self.next_seq, self.need, self.buf, self.at = next_seq, need, buf, at


class TcpReassembler:
    def __init__(self, max_streams: int = 256, idle_s: float = 10.0, clock=time.monotonic):
        self.max_streams = max_streams
        self.idle_s = idle_s
        self.clock = clock
        self._streams: dict[tuple, _Stream] = {}
        self.stats = {"dns_tcp_messages": 0, "dns_tcp_reassembled": 0, "dns_tcp_gaps": 0,
                      "dns_tcp_truncated": 0, "dns_tcp_evicted": 0}

    def feed(self, key: tuple, seq: int, data: bytes, wire_len: int) -> list[bytes]:
        """One segment's payload (copied `data`, `wire_len` bytes on the wire) -> complete
        messages (without their length prefix)."""
        now = self.clock()
        out: list[bytes] = []
        st = self._streams.pop(key, None)
        cut = wire_len > len(data)
        gap = False
        if st is not None:
            if seq != st.next_seq or now - st.at > self.idle_s:
                self.stats["dns_tcp_gaps"] += 1
                gap = True
                st = None           # start over: this segment may begin a new message
            else:
                take = data[: st.need - len(st.buf)]
                st.buf += take
                data = data[len(take):]
                if cut and len(st.buf) < st.need:       # the rest of the message was not copied
                    self.stats["dns_tcp_truncated"] += 1
                    out.append(bytes(st.buf))
                    return out
                if len(st.buf) == st.need:
                    out.append(bytes(st.buf))
                    self.stats["dns_tcp_messages"] += 1
                    self.stats["dns_tcp_reassembled"] += 1   # from more than one segment
                    seq = st.next_seq + len(take)
                    st = None
                else:
                    st.next_seq = (seq + len(take)) & 0xFFFFFFFF
                    st.at = now
                    self._keep(key, st)
                    return out
        pos = 0
        while len(data) - pos >= 2:
            if not _starts_message(data, pos):
                # the middle of a message whose start we missed (a gap, or the agent started
                # mid-stream): nothing here can be framed reliably
                if not gap:
                    self.stats["dns_tcp_gaps"] += 1
                return out
            need = (data[pos] << 8) | data[pos + 1]
            pos += 2
            have = data[pos: pos + need]
            pos += len(have)
            if len(have) == need:
                out.append(bytes(have))
                self.stats["dns_tcp_messages"] += 1
                continue
            if cut:
                self.stats["dns_tcp_truncated"] += 1
                out.append(bytes(have))
                return out
            self._keep(key, _Stream((seq + pos) & 0xFFFFFFFF, need, bytearray(have), now))
            return out
        if len(data) - pos == 1:   # a length prefix split across segments: rare, not worth it
            self.stats["dns_tcp_gaps"] += 1
        return out

    def _keep(self, key: tuple, st: _Stream) -> None:
        if len(self._streams) >= self.max_streams:
            oldest = min(self._streams, key=lambda k: self._streams[k].at)
            del self._streams[oldest]
            self.stats["dns_tcp_evicted"] += 1
        self._streams[key] = st

    def __len__(self) -> int:
        return len(self._streams)
