"""eBPF overhead benchmark (needs root): bulk TCP throughput over a veth pair between two
network namespaces with and without netmon's programs attached (flow counter ingress+egress
and the DNS tracer), and the agent's CPU per window in ebpf mode against conntrack mode on
the same connection table.

    .venv/bin/python bench/ebpf.py [--runs 6] [--seconds 2] [--flows 5000]

Prints every run, the medians and the ratios (throughput target: attached/detached >= 0.95).
Traffic stays inside namespaces this script creates (tests/netns.py); the programs are
attached to a cgroup of its own holding only the benchmark's processes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import resource
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from netns import make_pair  # noqa: E402

SINK = textwrap.dedent("""
    import socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7001)); s.listen(8)
    print("ready", flush=True)
    def drain(c):
        buf = bytearray(1 << 20)
        while c.recv_into(buf):
            pass
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
""")

SOURCE = textwrap.dedent("""
    import socket, sys, time
    secs = float(sys.argv[1])
    s = socket.create_connection(("10.77.0.2", 7001))
    buf = b"x" * (1 << 20)
    n = 0
    t0 = time.perf_counter(); end = t0 + secs
    while time.perf_counter() < end:
        s.sendall(buf); n += len(buf)
    s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
    print(n / (time.perf_counter() - t0))
""")

FLOWS = textwrap.dedent("""
    import socket, sys
    base, n = int(sys.argv[1]), int(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        s.sendto(b"f" * 64, ("10.77.0.2", base + i))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--flows", type=int, default=5000, help="connections in the table for the CPU part")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--polls-per-window", type=int, default=12, help="60 s window / 5 s poll")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2

    from node_agent import bpfload
    from node_agent.accounter import Accounter
    from node_agent.collectors.conntrack import ConntrackCollector
    from node_agent.collectors.ebpf import EbpfCollector
    from node_agent.dns.tracer import DnsTracer

    cgroup = os.path.join(bpfload.find_cgroup2(), f"netmon-bench-{uuid.uuid4().hex[:6]}")
    os.mkdir(cgroup)
    a, b = make_pair("nmbench")
    sink = None

    def in_cgroup():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    def run(script, *argv):
        r = subprocess.run(a.cmd(sys.executable, "-c", script, *map(str, argv)), preexec_fn=in_cgroup,
                           capture_output=True, text=True, check=True)
        return r.stdout

    def child_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    try:
        a.enable_conntrack()
        sink = b.popen(sys.executable, "-c", SINK, stdout=subprocess.PIPE, text=True, preexec_fn=in_cgroup)
        assert sink.stdout.readline().strip() == "ready"

        # ------------------------------------------------------------- throughput
        stats_path = "/proc/sys/kernel/bpf_stats_enabled"
        with open(stats_path) as f:
            stats_before = f.read().strip()
        bpf_ns = bpf_runs = bpf_bytes = 0
        per_prog: dict[str, list[int]] = {}
        res = {False: [], True: []}
        cpu_gb = {False: [], True: []}   # sender CPU s per GB: on veth the receive softirq runs there too
        for i in range(args.runs):
            for attached in (False, True) if i % 2 == 0 else (True, False):
                col = tr = None
                if attached:
                    col = EbpfCollector(cgroup_path=cgroup, conntrack_netns=a.name)
                    col.open()
                    tr = DnsTracer(cgroup_path=cgroup)
                    tr.open()
                try:
                    if attached:
                        with open(stats_path, "w") as f:   # per-program run time (restored below)
                            f.write("1")
                    c0 = child_cpu()
                    t0 = time.perf_counter()
                    bps = float(run(SOURCE, args.seconds))
                    cpu_gb[attached].append((child_cpu() - c0) / (bps * (time.perf_counter() - t0) / 1e9))
                    if attached:
                        for fd in col._att.prog_fds() + tr._att.prog_fds():
                            ns, cnt = bpfload.prog_run_stats(fd)
                            bpf_ns += ns
                            bpf_runs += cnt
                            acc = per_prog.setdefault(bpfload.prog_name(fd).decode(), [0, 0])
                            acc[0] += ns
                            acc[1] += cnt
                        bpf_bytes += bps * args.seconds
                finally:
                    with open(stats_path, "w") as f:
                        f.write(stats_before)
                    if tr is not None:
                        tr.close()
                    if col is not None:
                        col.close()
                res[attached].append(bps)
                print(f"run {i + 1} {'attached' if attached else 'detached'}: {bps * 8 / 1e9:.2f} Gbit/s, "
                      f"{cpu_gb[attached][-1]:.3f} CPU s/GB", flush=True)
        off, on = statistics.median(res[False]), statistics.median(res[True])
        print(f"throughput median: detached {off * 8 / 1e9:.2f} Gbit/s, attached {on * 8 / 1e9:.2f} Gbit/s, "
              f"ratio {on / off:.3f} (target >= 0.95)")
        # On a shared machine other load only ever lowers a run, so the best runs are the
        # least disturbed estimate of each configuration.
        off, on = max(res[False]), max(res[True])
        print(f"throughput best: detached {off * 8 / 1e9:.2f} Gbit/s, attached {on * 8 / 1e9:.2f} Gbit/s, "
              f"ratio {on / off:.3f}")
        c_off, c_on = statistics.median(cpu_gb[False]), statistics.median(cpu_gb[True])
        print(f"sender+receive CPU per GB median: detached {c_off:.3f} s, attached {c_on:.3f} s, "
              f"throughput-equivalent ratio {c_off / c_on:.3f} (less sensitive to other load)")
        if bpf_runs:
            per_gb = bpf_ns / 1e9 / (bpf_bytes / 1e9)
            print(f"BPF programs (kernel bpf_stats): {bpf_runs} runs, {bpf_ns / bpf_runs:.0f} ns per run, "
                  f"{per_gb * 1000:.1f} ms per GB = {per_gb / c_off * 100:.1f}% of the transfer's CPU; "
                  f"estimated throughput ratio on a CPU-bound path {c_off / (c_off + per_gb):.3f}")
            print("  per program: " + ", ".join(f"{n} {ns / max(c, 1):.0f} ns x {c}" for n, (ns, c) in sorted(per_prog.items())))

        # ------------------------------------------------------------ agent CPU
        # Same table for both: --flows UDP flows, then each poll adds flows/polls new ones (a
        # busy node: every poll sees new connections, so ebpf mode's NAT dump runs every poll).
        ct = ConntrackCollector(netns=a.name)
        eb = EbpfCollector(cgroup_path=cgroup, conntrack_netns=a.name)
        ct.open()
        eb.open()
        try:
            run(FLOWS, 20000, args.flows)
            accs = {"conntrack": (Accounter(), ct), "ebpf": (Accounter(), eb)}
            for acc, col in accs.values():
                acc.poll(col)           # baseline
            per_poll = max(1, args.flows // args.polls_per_window // 10)
            ws = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
            windows = {"conntrack": [], "ebpf": []}
            port = 40000
            for w in range(args.windows):
                cpu = {"conntrack": 0.0, "ebpf": 0.0}
                for p in range(args.polls_per_window):
                    run(FLOWS, port, per_poll)
                    port += per_poll
                    for name, (acc, col) in (accs.items() if p % 2 else reversed(accs.items())):
                        t0 = time.process_time()
                        acc.poll(col)
                        cpu[name] += time.process_time() - t0
                for name, (acc, col) in accs.items():
                    t0 = time.process_time()
                    acc.cut(ws, ws + dt.timedelta(minutes=1), "bench", {"10.77.0.1"})
                    cpu[name] += time.process_time() - t0
                    windows[name].append(cpu[name])
            entries = {n: len(c.dump()) for n, (_a, c) in accs.items()}
        finally:
            eb.close()
            ct.close()
        print(f"table: {entries} entries; {args.polls_per_window} polls + 1 cut per window, "
              f"{per_poll} new flows per poll")
        for name in ("conntrack", "ebpf"):
            print(f"agent CPU per window, {name}: min {min(windows[name]) * 1000:.0f} ms, "
                  f"median {statistics.median(windows[name]) * 1000:.0f} ms over {args.windows} windows")
        print(f"ratio ebpf/conntrack CPU per window: min {min(windows['ebpf']) / min(windows['conntrack']):.2f}, "
              f"median {statistics.median(windows['ebpf']) / statistics.median(windows['conntrack']):.2f}")
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()
        a.delete()
        b.delete()
        os.rmdir(cgroup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
