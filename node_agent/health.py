"""Health and metrics over HTTP: `/healthz` (is the loop ticking?) and Prometheus `/metrics`.

Each process owns one `Metrics` (its own registry, so tests can run several side by side).
Counters that other components keep themselves (the collector's events and resyncs, the
informer's relists) are read at scrape time from the latest snapshot the loop published,
so the HTTP thread never calls into the collector.

The exposition (Prometheus text format 0.0.4: counters, gauges, histograms with labels) is
written here rather than with prometheus_client, whose import costs ~4 MiB of the agent's
128 MiB for the few dozen lines this needs.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger("netmon.health")

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def _fmt(v: float) -> str:
    v = float(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _labels(names, values, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str, labelnames=(), registry=None, **kw):
        self.name, self.help, self.labelnames = name, help_, tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple, "_Metric"] = {}
        self._init(**kw)
        if registry is not None:
            registry.register(self)

    def _init(self, **kw) -> None:
        self._value = 0.0

    def get(self) -> float:
        """The current value (of an unlabelled counter or gauge)."""
        return self._value

    def labels(self, *values) -> "_Metric":
        values = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = type(self)(self.name, self.help, **self._child_kw())
        return child

    def _child_kw(self) -> dict:
        return {}

    def _series(self):
        """(suffix, label values, extra label, value) of this metric and its children."""
        if self.labelnames:
            with self._lock:
                children = sorted(self._children.items())
            for values, child in children:
                for suffix, _, extra, v in child._series():
                    yield suffix, values, extra, v
        else:
            yield from self._own()

    def _own(self):
        yield "", (), "", self._value

    def collect(self):
        out = [f"# HELP {self.exposed} {self.help}", f"# TYPE {self.exposed} {self.kind}"]
        for suffix, values, extra, v in self._series():
            out.append(f"{self.exposed}{suffix}{_labels(self.labelnames, values, extra)} {_fmt(v)}")
        return out

    @property
    def exposed(self) -> str:
        return self.name


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._value += amount

    @property
    def exposed(self) -> str:
        return self.name if self.name.endswith("_total") else self.name + "_total"


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float) -> None:
        self._value = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def _init(self, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)) -> None:
        self.buckets = tuple(sorted(float(b) for b in buckets)) + (float("inf"),)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0

    def _child_kw(self) -> dict:
        return {"buckets": self.buckets[:-1]}

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self._counts[i] += 1
                    break

    def _own(self):
        with self._lock:
            counts, total = list(self._counts), self._sum
        acc = 0
        for b, c in zip(self.buckets, counts):
            acc += c
            yield "_bucket", (), f'le="{_fmt(b)}"', acc
        yield "_count", (), "", acc
        yield "_sum", (), "", total


class CollectorRegistry:
    def __init__(self, auto_describe: bool = True):
        self._metrics: list = []

    def register(self, metric) -> None:
        self._metrics.append(metric)

    def render(self) -> bytes:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.collect())
        return ("\n".join(lines) + "\n").encode()


class _Family:
    """A metric computed at scrape time (the published collector and informer snapshots)."""

    def __init__(self, kind: str, name: str, help_: str, labels=()):
        self.kind, self.name, self.help, self.labelnames = kind, name, help_, tuple(labels)
        self.samples: list[tuple[tuple, float]] = []

    def add_metric(self, values, value: float) -> None:
        self.samples.append((tuple(values), value))

    def lines(self) -> list[str]:
        name = self.name + "_total" if self.kind == "counter" else self.name
        out = [f"# HELP {name} {self.help}", f"# TYPE {name} {self.kind}"]
        out += [f"{name}{_labels(self.labelnames, v)} {_fmt(x)}" for v, x in self.samples]
        return out


def CounterMetricFamily(name: str, help_: str, labels=()):  # noqa: N802 - prometheus_client's names
    return _Family("counter", name, help_, labels)


def GaugeMetricFamily(name: str, help_: str, labels=()):  # noqa: N802
    return _Family("gauge", name, help_, labels)


def generate_latest(registry: CollectorRegistry) -> bytes:
    return registry.render()

# Collector stats that are monotonic counts; everything else a collector reports is a gauge.
_COUNTER_STATS = ("events", "events_lost", "resyncs", "transit", "parse_errors")


class Metrics:
    """Every metric the agent and the inventory snapshotter export."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.entries = Gauge("netmon_conntrack_entries", "Connections in the last full dump", registry=r)
        self.dump_seconds = Histogram(
            "netmon_dump_duration_seconds", "Duration of one collector dump + drain", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.bytes = Counter("netmon_bytes", "Bytes counted into cut windows", ["direction"], registry=r)
        self.packets = Counter("netmon_packets", "Packets counted into cut windows", ["direction"], registry=r)
        self.windows_cut = Counter("netmon_windows_cut", "Windows cut and handed to the exporter", registry=r)
        self.rows = Counter("netmon_rows", "Rows written in cut windows", registry=r)
        self.uploads = Counter("netmon_uploads", "Files uploaded to the lake", registry=r)
        self.upload_failures = Counter("netmon_upload_failures", "Failed uploads to the lake", registry=r)
        self.last_flush = Gauge(
            "netmon_last_successful_flush_timestamp_seconds", "Unix time of the last upload to the lake", registry=r
        )
        self.spool_files = Gauge("netmon_spool_files", "Files waiting in the spool", registry=r)
        self.spool_bytes = Gauge("netmon_spool_bytes", "Bytes waiting in the spool", registry=r)
        self.spool_dropped = Counter(
            "netmon_spool_dropped", "Spooled files dropped because the spool was full", registry=r
        )
        self.spool_dropped_bytes = Counter(
            "netmon_spool_dropped_bytes", "Bytes of spooled files dropped because the spool was full", registry=r
        )
        self.spool_errors = Counter("netmon_spool_errors", "Failed writes to the spool", registry=r)
        self.memory_windows = Gauge(
            "netmon_memory_windows", "Windows held in memory because the spool refused them (lost if the agent stops)",
            registry=r)
        self.memory_bytes = Gauge("netmon_memory_bytes", "Bytes of the windows held in memory", registry=r)
        self.last_tick = Gauge("netmon_loop_last_tick_timestamp_seconds", "Unix time of the last loop tick", registry=r)
        self.snapshots = Counter("netmon_inventory_snapshots", "Inventory snapshots taken", registry=r)
        self._lock = threading.Lock()
        self._collector_stats: dict[str, int] = {}
        self._informer_stats: dict[str, int] = {}
        r.register(_SnapshotCollector(self))

    def publish_collector_stats(self, stats: dict[str, int]) -> None:
        with self._lock:
            self._collector_stats = dict(stats)

    def publish_informer_stats(self, stats: dict[str, int]) -> None:
        with self._lock:
            self._informer_stats = dict(stats)

    def snapshots_now(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self._collector_stats), dict(self._informer_stats)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SnapshotCollector:
    """Exposes the latest collector/informer stats as metrics at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> list[str]:
        return [line for fam in self._families() for line in fam.lines()]

    def _families(self):
        coll, inf = self.metrics.snapshots_now()
        for name in ("events", "events_lost", "resyncs"):
            c = CounterMetricFamily(f"netmon_collector_{name}", f"Collector {name.replace('_', ' ')}")
            c.add_metric([], float(coll.get(name, 0)))
            yield c
        g = GaugeMetricFamily("netmon_collector_stat", "Every statistic the collector reports", labels=["stat"])
        for name, value in sorted(coll.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                g.add_metric([name], float(value))
        yield g
        c = CounterMetricFamily("netmon_informer_relists", "Informer relists after the first list (410 Gone, expired continue token)")
        c.add_metric([], float(inf.get("relists", 0)))
        yield c
        g = GaugeMetricFamily("netmon_informer_stat", "Every statistic the informer reports", labels=["stat"])
        for name, value in sorted(inf.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                g.add_metric([name], float(value))
        yield g


class Health:
    """Liveness: healthy while the loop has ticked within `stale_after` seconds."""

    def __init__(self, stale_after: float, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self.stale_after = stale_after
        self.metrics = metrics
        self.clock = clock
        self._last = None  # monotonic time of the last tick; None before the first one

    def tick(self) -> None:
        self._last = self.clock()
        self.metrics.last_tick.set(time.time())

    def healthy(self) -> tuple[bool, str]:
        if self._last is None:
            return False, "starting"
        age = self.clock() - self._last
        if age > self.stale_after:
            return False, f"loop stalled: last tick {age:.0f}s ago"
        return True, "ok"


class HealthServer:
    """A small threaded HTTP server for /healthz and /metrics."""

    def __init__(self, listen: tuple[str, int], health: Health):
        handler = _make_handler(health)
        server_cls = _ThreadingHTTPServer6 if ":" in listen[0] else ThreadingHTTPServer
        self.httpd = server_cls(listen, handler)  # OSError (port in use) goes to the caller
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> "HealthServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _make_handler(health: Health):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok, reason = health.healthy()
                self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
            elif path == "/metrics":
                self._send(200, health.metrics.render(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # scrapes are not events worth a log line
            pass

    return Handler


def parse_listen(text: str) -> tuple[str, int] | None:
    """`host:port`, `:port` or `[v6]:port` -> (host, port); empty or `off` disables the server."""
    text = (text or "").strip()
    if text.lower() in ("", "off", "none", "0"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {text!r} (expected HOST:PORT, e.g. 0.0.0.0:9808)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
