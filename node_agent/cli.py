"""`netmon-agent`: the node agent (`run`) and the cluster inventory snapshotter (`inventory`).

Every flag can also come from an environment variable (shown in --help), so the DaemonSet
and Deployment configure the agent through a ConfigMap. Bad input (unknown lake scheme,
bad duration, unwritable spool, no Kubernetes config, unreachable API server, a collector
that cannot start) is one `error: ...` line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

DEFAULT_SPOOL = "/var/lib/netmon/spool"
DEFAULT_INVENTORY_SPOOL = "/var/lib/netmon/inventory-spool"


class UsageError(Exception):
    """Bad input or an environment the agent cannot run in: printed as one line, exit 2."""


# ---------------------------------------------------------------------------- arguments


def _env(name: str, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


def _env_bool(name: str) -> bool | None:
    v = _env(name)
    if v is None:
        return None
    return v.strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netmon-agent", description="netmon node agent and inventory snapshotter")
    sub = p.add_subparsers(dest="command", metavar="{run,inventory}")

    def common(sp, listen_default: str, spool_default: str, spool_env: str):
        sp.add_argument("--lake", default=_env("NETMON_LAKE"),
                        help="lake URL: a directory, file://, s3://bucket/prefix, or an fsspec URL [NETMON_LAKE]")
        sp.add_argument("--s3-endpoint", default=_env("NETMON_S3_ENDPOINT"),
                        help="S3 endpoint override (MinIO, moto) [NETMON_S3_ENDPOINT]")
        sp.add_argument("--spool", default=_env(spool_env, spool_default),
                        help=f"local directory for windows not yet in the lake (default {spool_default}) [{spool_env}]")
        sp.add_argument("--spool-max-bytes", default=_env("NETMON_SPOOL_MAX_BYTES", "256Mi"),
                        help="spool bound; the oldest files are dropped beyond it (default 256Mi) [NETMON_SPOOL_MAX_BYTES]")
        sp.add_argument("--kubeconfig", default=_env("KUBECONFIG"),
                        help="kubeconfig path (default: in-cluster config, else ~/.kube/config) [KUBECONFIG]")
        sp.add_argument("--listen", default=_env("NETMON_LISTEN", listen_default),
                        help=f"HOST:PORT for /healthz and /metrics, 'off' to disable (default {listen_default}) [NETMON_LISTEN]")
        sp.add_argument("--upload-retry-max", default=_env("NETMON_UPLOAD_RETRY_MAX", "60s"),
                        help="longest wait between upload retries while storage is down (default 60s) [NETMON_UPLOAD_RETRY_MAX]")
        sp.add_argument("--log-level", default=_env("NETMON_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="[NETMON_LOG_LEVEL]")

    run = sub.add_parser("run", help="count this node's traffic into the lake")
    common(run, "0.0.0.0:9808", DEFAULT_SPOOL, "NETMON_SPOOL")
    run.add_argument("--node", default=_env("NODE_NAME"), help="this node's name [NODE_NAME]")
    run.add_argument("--collector", default=_env("NETMON_COLLECTOR", "auto"), choices=["auto", "conntrack", "ebpf"],
                     help="flow source: auto = conntrack if it sees pod traffic, else ebpf (default auto) [NETMON_COLLECTOR]")
    run.add_argument("--flush-interval", default=_env("NETMON_FLUSH_INTERVAL", "60s"),
                     help="window length, aligned to the wall clock (default 60s) [NETMON_FLUSH_INTERVAL]")
    run.add_argument("--poll-interval", default=_env("NETMON_POLL_INTERVAL", "5s"),
                     help="how often the collector is read (default 5s) [NETMON_POLL_INTERVAL]")
    run.add_argument("--standalone", action="store_true", default=bool(_env_bool("NETMON_STANDALONE")),
                     help="run without Kubernetes: no pod enrichment [NETMON_STANDALONE]")
    run.add_argument("--dns", dest="dns", action=argparse.BooleanOptionalAction, default=_env_bool("NETMON_DNS"),
                     help="trace DNS answers into raw/dns (default: on in a cluster, off with --standalone) [NETMON_DNS]")
    run.add_argument("--cgroup-path", default=_env("NETMON_CGROUP_PATH"),
                     help="cgroup v2 root for the eBPF programs (default: found in /proc/mounts) [NETMON_CGROUP_PATH]")
    run.add_argument("--shutdown-grace", default=_env("NETMON_SHUTDOWN_GRACE", "30s"),
                     help="on SIGTERM, how long to keep trying to write the last windows (default 30s, the "
                          "DaemonSet's terminationGracePeriodSeconds) [NETMON_SHUTDOWN_GRACE]")
    run.add_argument("--dns-ttl-cap", default=_env("NETMON_DNS_TTL_CAP", "120s"),
                     help="longest time an IP keeps its domain (default 120s) [NETMON_DNS_TTL_CAP]")

    inv = sub.add_parser("inventory", help="snapshot pods, services, nodes and endpoint slices into the lake")
    common(inv, "0.0.0.0:9809", DEFAULT_INVENTORY_SPOOL, "NETMON_INVENTORY_SPOOL")
    inv.add_argument("--interval", default=_env("NETMON_INVENTORY_INTERVAL", "60s"),
                     help="snapshot interval, aligned to the wall clock (default 60s) [NETMON_INVENTORY_INTERVAL]")
    return p


def _duration(flag: str, text: str) -> float:
    from node_agent.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _size(flag: str, text: str) -> int:
    from node_agent.durations import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _listen(text: str):
    from node_agent.health import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None


# ---------------------------------------------------------------------------- shared setup


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    for noisy in ("kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _open_storage(args, metrics):
    """Lake and spool, both checked before anything else starts."""
    from lake.storage import LakeError, open_lake
    from node_agent.spool import Spool, SpoolError

    if not args.lake:
        raise UsageError("--lake is required (or set NETMON_LAKE)")
    max_bytes = _size("--spool-max-bytes", args.spool_max_bytes)
    try:
        lake = open_lake(args.lake, s3_endpoint=args.s3_endpoint)
    except LakeError as exc:
        raise UsageError(str(exc)) from None
    try:
        spool = Spool(args.spool, max_bytes, metrics=metrics)
    except SpoolError as exc:
        raise UsageError(f"{exc} (set --spool to a writable directory)") from None
    return lake, spool


def _kube_api(kubeconfig: str | None):
    from node_agent.kube import KubeConfigError, check_reachable, load_api_client

    try:
        api = load_api_client(kubeconfig)
        version = check_reachable(api)
    except KubeConfigError as exc:
        raise UsageError(f"{exc} (use --standalone to run without Kubernetes)") from None
    logging.getLogger("netmon.agent").info("Kubernetes API server %s (%s)", api.configuration.host, version or "?")
    return api


def _kube_http_api(kubeconfig: str | None):
    """The node agent's API client: node_agent/kubehttp.py (standard library, ~30 MiB less
    than the kubernetes package); the kubernetes client only for credential plugins."""
    from node_agent.kube import KubeConfigError
    from node_agent.kubehttp import check_reachable_http, load_http_api

    try:
        api = load_http_api(kubeconfig)
        if api is None:
            logging.getLogger("netmon.agent").info("kubeconfig needs a credential plugin: using the kubernetes client")
            return _kube_api(kubeconfig)
        version = check_reachable_http(api)
    except KubeConfigError as exc:
        raise UsageError(f"{exc} (use --standalone to run without Kubernetes)") from None
    logging.getLogger("netmon.agent").info("Kubernetes API server %s (%s)", api.host, version or "?")
    return api


def _start_health(listen, stale_after: float, metrics):
    from node_agent.health import Health, HealthServer

    health = Health(stale_after, metrics)
    server = None
    if listen is not None:
        try:
            server = HealthServer(listen, health).start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None
    return health, server


_STOPPED_AT: list[float] = []   # monotonic time of the first SIGTERM/SIGINT


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        logging.getLogger("netmon.agent").info("received %s", signal.Signals(signum).name)
        if not _STOPPED_AT:
            _STOPPED_AT.append(time.monotonic())
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


# ---------------------------------------------------------------------------- run


def make_collector(name: str, args):
    from node_agent.collectors.base import CollectorError

    try:
        if name in ("auto", "conntrack"):   # both check that conntrack sees pod traffic (datapath.py)
            from node_agent.collectors.conntrack import ConntrackCollector
            from node_agent.datapath import AutoCollector

            def ebpf():
                from node_agent.collectors.ebpf import EbpfCollector

                return EbpfCollector(cgroup_path=args.cgroup_path)

            return AutoCollector(name, ConntrackCollector, ebpf if name == "auto" else None)
        if name == "ebpf":
            try:
                from node_agent.collectors.ebpf import EbpfCollector
            except ImportError as exc:
                raise UsageError(f"the ebpf collector is not available here: {exc}") from None
            return EbpfCollector(cgroup_path=args.cgroup_path)
    except CollectorError as exc:
        raise UsageError(str(exc)) from None
    raise UsageError(f"unknown collector {name!r}")


def cmd_run(args) -> int:
    from lake.schema import check_node_name
    from node_agent.health import Metrics

    if not args.node:
        raise UsageError("--node is required (or set NODE_NAME)")
    try:
        check_node_name(args.node)
    except ValueError as exc:
        raise UsageError(f"--node: {exc}") from None
    flush = _duration("--flush-interval", args.flush_interval)
    if flush < 1 or flush != int(flush):
        # window files are named by their start second: two windows in one second would share a name
        raise UsageError(f"--flush-interval: {args.flush_interval!r} must be a whole number of seconds, at least 1s")
    poll = _duration("--poll-interval", args.poll_interval)
    if poll > flush:
        raise UsageError(f"--poll-interval ({args.poll_interval}) must not be longer than --flush-interval ({args.flush_interval})")
    dns_ttl_cap = _duration("--dns-ttl-cap", args.dns_ttl_cap)
    listen = _listen(args.listen)
    retry_max = _duration("--upload-retry-max", args.upload_retry_max)
    grace = _duration("--shutdown-grace", args.shutdown_grace)
    dns_mode = args.dns if args.dns is not None else (None if not args.standalone else False)

    metrics = Metrics()
    lake, spool = _open_storage(args, metrics)
    api = None if args.standalone else _kube_http_api(args.kubeconfig)

    from node_agent.agent import Agent
    from node_agent.exporter import Exporter

    log = logging.getLogger("netmon.agent")
    collector = make_collector(args.collector, args)
    from node_agent.collectors.base import CollectorError

    try:
        collector.open()
    except CollectorError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - kernel/BPF failures come in many types
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UsageError(f"cannot start the {args.collector} collector: {msg}") from None
    health_server = pod_index = dns = None
    exporter = None
    try:
        health, health_server = _start_health(listen, max(3 * poll, 30.0), metrics)
        exporter = Exporter(lake, spool, metrics, backoff_max=retry_max).start()  # uploads what an earlier run spooled
        if api is not None:
            from node_agent.informer import PodIndex

            # a deleted pod's IP stays attributable for a window plus TIME_WAIT (120 s) and slack
            pod_index = PodIndex(api, args.node, retain_deleted=flush + 180)
            if not pod_index.wait_synced(30):
                log.warning("pod informer not synced after 30s; pod columns stay empty until it is")
        dns = _start_dns(dns_mode, args, dns_ttl_cap)
        from node_agent.accounter import Accounter
        from node_agent.agent import state_ident
        from node_agent.enrich import Attribution
        from node_agent.localaddrs import LocalAddrs

        local_addrs = LocalAddrs().addresses
        attribution = Attribution(local_addrs, pod_index)
        agent = Agent(
            collector=collector, accounter=Accounter(resolve=attribution.resolve), exporter=exporter,
            node=args.node, poll_interval=poll, flush_interval=flush, metrics=metrics, health=health,
            local_addrs=local_addrs, pod_index=pod_index, dns=dns, attribution=attribution,
            state_path=os.path.join(spool.dir, "accounter.state"), state_ident=state_ident(args.node, collector.name),
        )
        stop = _stop_event()
        agent.run(stop)
    finally:
        if dns is not None:
            dns.close()
        collector.close()
        if pod_index is not None:
            pod_index.stop()
        if exporter is not None:
            # keep trying to write what is only in memory until shortly before the kubelet's SIGKILL
            left = grace - (time.monotonic() - _STOPPED_AT[0]) - 2 if _STOPPED_AT else grace - 2
            exporter.close(timeout=min(10.0, max(1.0, left)), memory_timeout=max(1.0, left))
        if health_server is not None:
            health_server.close()
    log.info("stopped")
    return 0


def _start_dns(mode: bool | None, args, ttl_cap: float):
    """DNS tracing: forced on (--dns: failure is an error), forced off, or auto (on in a
    cluster; if it cannot start, a warning and the agent runs without raw/dns)."""
    if mode is False:
        return None
    try:
        from node_agent.agent import DnsFeed  # noqa: PLC0415 - needs BCC, optional

        return DnsFeed.start(cgroup_path=args.cgroup_path, ttl_cap=ttl_cap)
    except Exception as exc:  # noqa: BLE001 - BCC/kernel problems come in many types
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        if mode:
            raise UsageError(f"cannot start DNS tracing: {msg} (use --no-dns to run without it)") from None
        logging.getLogger("netmon.agent").warning("DNS tracing unavailable, running without raw/dns: %s", msg)
        return None


# ---------------------------------------------------------------------------- inventory


def cmd_inventory(args) -> int:
    from node_agent.health import Metrics

    interval = _duration("--interval", args.interval)
    listen = _listen(args.listen)
    retry_max = _duration("--upload-retry-max", args.upload_retry_max)
    metrics = Metrics()
    lake, spool = _open_storage(args, metrics)
    api = _kube_api(args.kubeconfig)

    from node_agent.exporter import Exporter
    from node_agent.inventory_loop import run_inventory

    health_server = None
    exporter = None
    try:
        health, health_server = _start_health(listen, max(3 * interval, 60.0), metrics)
        exporter = Exporter(lake, spool, metrics, backoff_max=retry_max).start()
        run_inventory(api, exporter, interval, metrics, health, _stop_event())
    finally:
        if exporter is not None:
            exporter.close(timeout=10)
        if health_server is not None:
            health_server.close()
    logging.getLogger("netmon.inventory").info("stopped")
    return 0


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from node_agent.lean import allow_heavy_imports, refuse_heavy_imports  # noqa: PLC0415
    installed = refuse_heavy_imports()   # before pyarrow is used: see node_agent/lean.py
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return 2
        _setup_logging(args.log_level)
        try:
            return cmd_run(args) if args.command == "run" else cmd_inventory(args)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    finally:
        if installed:
            allow_heavy_imports()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
