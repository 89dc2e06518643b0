"""Test hosts in network namespaces we create ourselves, joined by veth pairs.

Traffic between them never leaves this machine: each namespace has its own stack, so the
private addresses used here exist only inside namespaces this module made. Conntrack needs
a rule that uses it before the kernel tracks anything, and accounting is per namespace.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field

NFT_TRACK = """
table inet netmon_test {
  chain track_out { type filter hook output priority 0; ct state new counter; }
  chain track_in { type filter hook input priority 0; ct state new counter; }
  chain track_fwd { type filter hook forward priority 0; ct state new counter; }
}
"""


def counting_table(table: str, rules: dict[str, list[tuple[str, str]]], extra: str = "",
                   priority: int = 0) -> str:
    """An nft `inet` table of named counters, the truth the byte tests compare against:
    rules = {hook: [(match, counter name), ...]}; each hook's chain also has the
    `ct state new` rule that makes the kernel track connections. `extra`: more chains."""
    names = sorted({name for hook_rules in rules.values() for _m, name in hook_rules})
    lines = [f"table inet {table} {{", *(f"  counter {n} {{ }}" for n in names)]
    for hook, hook_rules in rules.items():
        lines.append(f"  chain {hook}_c {{ type filter hook {hook} priority {priority};")
        lines.append("    ct state new counter")
        lines += [f"    {match} counter name {name}" for match, name in hook_rules]
        lines.append("  }")
    if extra:
        lines.append(extra)
    lines.append("}")
    return "\n".join(lines) + "\n"


def nft_counters(ns: "Netns", table: str) -> dict[str, tuple[int, int]]:
    """{name: (packets, bytes)} of the named counters of nft table `inet table` in `ns`."""
    import json

    out = json.loads(ns.run("nft", "-j", "list", "table", "inet", table).stdout)
    return {c["name"]: (c["packets"], c["bytes"]) for item in out["nftables"] if (c := item.get("counter"))}


def sh(*cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), input=input, text=True, capture_output=True, check=check)


@dataclass
class Netns:
    name: str
    addrs: dict[str, str] = field(default_factory=dict)  # family -> address on the veth

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.cmd(*args), input=input, check=check)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args), **kw)

    def enable_conntrack(self) -> None:
        """Turn on byte accounting and install a rule that makes the kernel track connections."""
        self.run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        self.run("nft", "-f", "-", input=NFT_TRACK)

    def nft(self, script: str) -> None:
        self.run("nft", "-f", "-", input=script)

    def delete(self) -> None:
        sh("ip", "netns", "delete", self.name, check=False)


def make_pair(prefix: str = "nm") -> tuple[Netns, Netns]:
    """Two namespaces on one veth link: a=10.77.0.1 / fd77::1, b=10.77.0.2 / fd77::2."""
    tag = uuid.uuid4().hex[:6]
    a, b = Netns(f"{prefix}-{tag}-a"), Netns(f"{prefix}-{tag}-b")
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns.name)
            ns.run("ip", "link", "set", "lo", "up")
        va, vb = f"va{tag}", f"vb{tag}"
        sh("ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name)
        for ns, dev, n in ((a, va, 1), (b, vb, 2)):
            ns.run("ip", "addr", "add", f"10.77.0.{n}/24", "dev", dev)
            ns.run("ip", "-6", "addr", "add", f"fd77::{n}/64", "dev", dev, "nodad")
            ns.run("ip", "link", "set", dev, "up")
            ns.addrs = {"ipv4": f"10.77.0.{n}", "ipv6": f"fd77::{n}"}
        a.dev, b.dev = va, vb  # type: ignore[attr-defined]
    except Exception:
        a.delete()
        b.delete()
        raise
    return a, b


class TestCgroup:
    """A cgroup v2 child made for one test, under the root the BPF programs attach to. Only
    processes started with `preexec_fn=cg.enter` join it, so programs attached here see the
    test's traffic and nothing else running on this machine."""

    __test__ = False  # not a pytest class

    def __init__(self, prefix: str = "netmon-test", root: str | None = None):
        if root is None:
            from node_agent import bpfload
            root = bpfload.find_cgroup2()
        self.path = os.path.join(root, f"{prefix}-{uuid.uuid4().hex[:6]}")
        os.mkdir(self.path)

    def enter(self) -> None:
        """preexec_fn: move the starting process into this cgroup."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write("0")

    def remove(self) -> None:
        os.rmdir(self.path)
