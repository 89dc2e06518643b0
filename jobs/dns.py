"""As-of DNS: which name a destination IP was looked up by (docs/costing.md §4, dst_domain).

The most recent answer with ip == dst_ip and window_end - lookback <= seen_at <= window_end,
preferring answers to the same client (client_ip == src_ip), else any client. Equal seen_at
times are broken by the greatest domain name, so the result does not depend on file order.

Vectorized as-of search: answers are sorted by (ip id, seen_at, domain rank) and encoded as
one int64 key `group * span + (seen_at - base)`; a flow's query key is built the same way
from its window end, and `searchsorted(..., side="right") - 1` finds the latest answer at or
before it, which is then checked for the same group and the lookback.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.inventory import ids_in, to_us
from lake import schema as S


def _link_names(chains) -> pa.Array:
    """Per answer: the first name of its CNAME chain that matches a private-link pattern
    (lower-case), else null. Patterns run once per distinct chain name."""
    from jobs.classify import PRIVATE_LINK_RE  # noqa: PLC0415 (classify imports resolve, not dns)
    chains = chains.combine_chunks() if isinstance(chains, pa.ChunkedArray) else chains
    n = len(chains)
    out = np.full(n, -1, np.int64)
    flat = pc.utf8_lower(pc.list_flatten(chains))
    if len(flat) == 0:
        return pa.nulls(n, pa.string())
    parent = pc.list_parent_indices(chains).to_numpy()
    enc = pc.dictionary_encode(flat)
    names = enc.dictionary.to_pylist()
    hit = np.array([bool(x) and PRIVATE_LINK_RE.match(x.rstrip(".")) is not None for x in names], bool)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    m = hit[codes]
    if m.any():
        first_parent, first = np.unique(parent[m], return_index=True)
        out[first_parent] = codes[np.flatnonzero(m)[first]]
    return pa.DictionaryArray.from_arrays(pa.array(out, mask=out < 0).cast(pa.int32()), enc.dictionary).cast(pa.string())


class DnsIndex:
    def __init__(self, dns: pa.Table | None, lookback_s: float):
        dns = S.empty(S.RAW_DNS) if dns is None else S.conform(dns, S.RAW_DNS)
        seen = pc.coalesce(dns.column("seen_at"), dns.column("window_end"))
        keep = pc.and_(pc.is_valid(dns.column("ip")), pc.and_(pc.is_valid(dns.column("domain")), pc.is_valid(seen)))
        t = pa.table({"ip": dns.column("ip"), "client_ip": dns.column("client_ip"),
                      "domain": pc.utf8_lower(dns.column("domain")), "seen": seen,
                      "cname": _link_names(dns.column("cname_chain"))}).filter(keep)
        t = t.sort_by("seen")
        self.table = t
        self.seen = to_us(t.column("seen"))
        self.lookback_us = int(lookback_s * 1_000_000)

    def lookup(self, ipd: pa.Array, src_ids: np.ndarray, dst_ids: np.ndarray, we_us: np.ndarray,
               with_cname: bool = False):
        """dst_domain per row (string array, null where no answer). `ipd` is the dictionary the
        src/dst ids point into. With `with_cname`, also the chosen answer's private-link CNAME
        (dst_cname; null when its chain has none)."""
        n = len(dst_ids)
        if with_cname:
            dom, row, answers = self._lookup(ipd, src_ids, dst_ids, we_us)
            if row is None:
                return dom, pa.nulls(n, pa.string())
            cn = answers.column("cname")
            enc = pc.dictionary_encode(cn)
            enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
            codes = enc.indices.fill_null(-1).to_numpy().astype(np.int64)
            r = np.where(row >= 0, codes[np.maximum(row, 0)], -1)
            return dom, pa.DictionaryArray.from_arrays(pa.array(r, mask=r < 0).cast(pa.int32()), enc.dictionary)
        return self._lookup(ipd, src_ids, dst_ids, we_us)[0]

    def _lookup(self, ipd, src_ids, dst_ids, we_us):
        """(dst_domain, row per query into the answers searched or -1 (None when no answers),
        the answers searched)."""
        n = len(dst_ids)
        if n == 0 or len(self.seen) == 0:
            return pa.nulls(n, pa.string()), None, None
        base = int(we_us.min()) - self.lookback_us
        top = int(we_us.max())
        lo, hi = np.searchsorted(self.seen, [base, top], side="left")[0], np.searchsorted(self.seen, top, side="right")
        t = self.table.slice(lo, hi - lo)
        seen = self.seen[lo:hi]
        ip = ids_in(t.column("ip"), ipd)
        ok = ip >= 0
        if not ok.any():
            return pa.nulls(n, pa.string()), None, None
        t, seen, ip = t.filter(pa.array(ok)), seen[ok], ip[ok]
        client = ids_in(t.column("client_ip"), ipd)
        enc = pc.dictionary_encode(t.column("domain")).combine_chunks()
        domains = enc.dictionary
        rank = np.argsort(np.argsort(np.array(domains.to_pylist(), dtype=object)))  # name order
        drank = rank[enc.indices.to_numpy()]

        n_ip = len(ipd)
        has = np.zeros(n_ip, bool)
        has[ip] = True
        q = np.flatnonzero(has[np.maximum(dst_ids, 0)] & (dst_ids >= 0))
        out = np.full(n, -1, np.int64)
        if len(q) == 0:
            return pa.nulls(n, pa.string()), None, None
        qt = we_us[q]
        # time unit coarse enough that group * span fits int64
        span, div = top - base + 1, 1
        while (max(n_ip, len(ip)) + 1) * (span // div + 1) >= (1 << 62):
            div *= 1000

        def asof(group: np.ndarray, qgroup: np.ndarray) -> np.ndarray:
            """Row of the latest answer in `group` at or before each query, -1 if none."""
            sp = span // div + 1
            order = np.lexsort((drank, seen, group))
            keys = group[order] * sp + (seen[order] - base) // div
            found = qgroup >= 0
            qk = np.where(found, qgroup, 0) * sp + (qt - base) // div
            pos = np.searchsorted(keys, qk, side="right") - 1
            pc_ = np.maximum(pos, 0)
            row = order[pc_]
            good = found & (pos >= 0) & (group[row] == qgroup) & (seen[row] >= qt - self.lookback_us) & (seen[row] <= qt)
            return np.where(good, row, -1)

        any_client = asof(ip, dst_ids[q])
        # same client: group by (client, ip) pair
        pair = np.where(client >= 0, client * n_ip + ip, -1)
        pairs = np.unique(pair[pair >= 0])
        same = np.full(len(q), -1, np.int64)
        if len(pairs):
            gp = np.where(pair >= 0, np.searchsorted(pairs, pair), -1)
            qp = src_ids[q] * n_ip + dst_ids[q]
            pi = np.minimum(np.searchsorted(pairs, qp), len(pairs) - 1)
            qg = np.where((src_ids[q] >= 0) & (pairs[pi] == qp), pi, -1)
            # answers to other clients get group -1 and never match a query group >= 0
            same = asof(gp, qg)
        row = np.where(same >= 0, same, any_client)
        dcode = enc.indices.to_numpy()
        out[q] = np.where(row >= 0, dcode[np.maximum(row, 0)], -1)
        rows = np.full(n, -1, np.int64)
        rows[q] = row
        return pa.DictionaryArray.from_arrays(pa.array(out, mask=out < 0).cast(pa.int32()), domains), rows, t
