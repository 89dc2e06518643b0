"""What a lake holds for the byte tests: the agent's flow rows, summed per key.

Shared by the end-to-end and fault tests, which compare these sums with the kernel's own
figures (conntrack listings, nft counters)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

COUNTERS = ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")


def flow_files(lake: Path, node: str) -> list[Path]:
    """The node's raw/flows window files in a local lake directory, oldest first."""
    return sorted(Path(lake).glob(f"raw/flows/date=*/hour=*/node={node}/*.parquet"))


def flow_rows(lake: Path, node: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in flow_files(lake, node) for r in pq.read_table(f).to_pylist()]


def sum_counters(rows: Iterable[dict], key: Callable[[dict], object]) -> dict[object, tuple[int, int, int, int]]:
    """{key(row): (tx_bytes, tx_packets, rx_bytes, rx_packets)} summed over the rows."""
    acc: dict[object, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        e = acc[key(r)]
        for i, c in enumerate(COUNTERS):
            e[i] += r[c]
    return {k: tuple(v) for k, v in acc.items()}
