"""Work cells: the cost job's unit of parallel work, one hour x a bounded share of its raw files.

An hour of a large cluster holds tens of millions of flow rows, far more than one task may
hold in memory, so it is cut into cells of about `max_rows` rows each. A cell's files are
contiguous in (window_start, node) order: a cell covers a few windows of many nodes (or a
few nodes of one window), so the inventory snapshots it selects stay few whatever the
cluster's size. A cell needs of its hour only the shared context (jobs/context.py: inventory
and DNS) and, for one rule, the other rows of its windows: the second hop of a relayed
NodePort/LB connection (§2 of docs/costing.md) matches one node's row against another node's
row of the same window. So a cell holds whole windows when they fit; a window larger than a
cell is cut between its nodes' files, and each of its cells also gets the outside-client rows
of the window's other cells (`tasks.relay_clients`, four narrow columns). Tiers are settled by
the driver from the cells' summaries.

Rows are estimated from file sizes with the bytes per row read from a few Parquet footers, so
planning costs no more than a handful of small reads however many files an hour has.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lake import schema as S

#: default rows per cell: a cell of this size peaks well under 1 GiB in a worker (see
#: docs/architecture.md "Cells"), so 4 GiB workers run several at once
DEFAULT_CELL_ROWS = 400_000
#: bytes of worker memory per raw row of a cell, and a fixed base (imports, rate cards, IP
#: ranges, the hour's shared context); tasks declare `memory=` from these so Ray schedules by it
BYTES_PER_ROW = 900
BASE_BYTES = 400 << 20
#: bytes per raw row of a split window for the outside-client rows its cells receive (a
#: fraction of the rows, four columns)
CLIENT_BYTES_PER_ROW = 16


@dataclass(frozen=True)
class Cell:
    hour: dt.datetime
    index: int                 # position within the hour: names the cell's part
    files: tuple[str, ...]     # raw flow files, in (window_start, node) order
    rows: int                  # estimated raw rows
    #: the window this cell holds part of, when the window is larger than a cell (its cells
    #: exchange outside-client rows for the relay rule), and that window's estimated rows
    window: dt.datetime | None = None
    window_rows: int = 0

    @property
    def memory(self) -> int:
        """Bytes of worker memory the cell's task declares."""
        return memory_for(self.rows) + CLIENT_BYTES_PER_ROW * self.window_rows


def memory_for(rows: int) -> int:
    return BASE_BYTES + BYTES_PER_ROW * max(int(rows), 0)


def _order(rel: str):
    parsed = S.parse_raw_file_name(rel)
    return (parsed[2], parsed[1], rel) if parsed else (dt.datetime.max.replace(tzinfo=dt.timezone.utc), "", rel)


def make_cells(hour_inputs: dict[dt.datetime, list[tuple[str, int]]], max_rows: int) -> list[Cell]:
    """Cut each hour's files into cells of at most `max_rows` estimated rows (a single file
    larger than that is a cell of its own). `hour_inputs`: hour -> [(path, estimated rows)].
    Cells come out in hour order, numbered from 0 within each hour; an hour without files
    gets one empty cell (its partition is still written, empty)."""
    if max_rows <= 0:
        raise ValueError(f"cell rows must be positive, got {max_rows}")
    out: list[Cell] = []
    for hour in sorted(hour_inputs):
        files = sorted(hour_inputs[hour], key=lambda f: _order(f[0]))
        cur: list[str] = []
        rows = 0
        index = 0

        def flush(window=None, window_rows=0):
            nonlocal cur, rows, index
            if cur:
                out.append(Cell(hour, index, tuple(cur), rows, window, window_rows))
                index += 1
                cur, rows = [], 0

        # A cell holds whole windows when they fit: one rule (the second hop of a relayed
        # NodePort/LB connection, jobs/resolve.py) matches rows of different nodes in one window.
        for window in _windows(files):
            w = sum(int(n) for _, n in window)
            # a window larger than a cell is cut between its nodes' files (one file larger
            # than a cell is a whole window in a cell of its own, below)
            if w > max_rows and len(window) > 1:
                flush()
                start = _order(window[0][0])[0]
                for rel, n in window:
                    if cur and rows + n > max_rows:
                        flush(start, w)
                    cur.append(rel)
                    rows += int(n)
                flush(start, w)
                continue
            if cur and rows + w > max_rows:
                flush()
            cur += [rel for rel, _ in window]
            rows += w
        flush()
        if index == 0:
            out.append(Cell(hour, 0, (), 0))
    return out


def _windows(files: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Consecutive files (in window, node order) grouped by their window."""
    groups: list[list[tuple[str, int]]] = []
    last = object()
    for rel, n in files:
        key = _order(rel)[0]
        if not groups or key != last:
            groups.append([])
            last = key
        groups[-1].append((rel, n))
    return groups


def _footer_rows(lake, rel: str) -> int:
    import pyarrow.parquet as pq  # noqa: PLC0415
    with lake.fs.open_input_file(lake.path(rel)) as f:
        return pq.ParquetFile(f).metadata.num_rows


def rows_per_byte(lake, files: list[tuple[str, int]], sample: int = 4) -> float:
    """Rows per stored byte of raw flow files, from the footers of up to `sample` of them
    (the largest: small files are dominated by the footer itself)."""
    picked = sorted(files, key=lambda f: -f[1])[:sample]
    rows = size = 0
    for rel, n_bytes in picked:
        try:
            rows += lake.call(lambda rel=rel: _footer_rows(lake, rel), f"reading {rel}")
            size += n_bytes
        except Exception:  # noqa: BLE001 - unreadable files are the cells' to quarantine
            continue
    return rows / size if size and rows else 1 / 40  # ~40 B/row: the simulator's zstd files


def estimate_rows(lake, files: list[tuple[str, int]], sample: int = 4) -> list[tuple[str, int]]:
    """(path, size in bytes) -> (path, estimated rows)."""
    rate = rows_per_byte(lake, files, sample) if files else 0.0
    return [(rel, max(1, int(size * rate))) for rel, size in files]
