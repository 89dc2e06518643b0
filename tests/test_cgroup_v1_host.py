"""A cgroup-v1-only host: no cgroup2 mount anywhere. The agent mounts a cgroup2 hierarchy of
its own (or stops with one line). Run in a private mount namespace whose cgroup2 mounts are
removed, so the host's mounts are untouched."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.privileged

PROBE = """
import os, sys
from node_agent import bpfload
try:
    path = bpfload.find_cgroup2(sys.argv[1] if len(sys.argv) > 1 else None)
except bpfload.BpfError as e:
    print("error:", e)
    raise SystemExit(2)
print(path, bpfload._is_cgroup2(path), sep="\\n")
"""


def v1_only(script_args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    # unmount every cgroup2 mount in this private namespace (deepest first)
    hide = ("for m in $(awk '$3==\"cgroup2\"{print $2}' /proc/mounts | sort -r); do umount -l \"$m\"; done; "
            "! grep -q ' cgroup2 ' /proc/mounts")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f'{hide} && exec "$@"', "sh", sys.executable, "-c", PROBE, *script_args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, **env})


def test_v1_only_host_gets_its_own_cgroup2_mount(tmp_path):
    own = str(tmp_path / "cgroup2")
    for args in ([], ["/sys/fs/cgroup"]):        # auto-detected and the DaemonSet's configured path
        r = v1_only(args, {"NETMON_CGROUP2_MOUNT": own})
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.split() == [own, "True"]
    assert not os.path.ismount(own)              # it lived in the private namespace only


def test_v1_only_host_without_a_place_to_mount_is_one_line(tmp_path):
    r = v1_only([], {"NETMON_CGROUP2_MOUNT": "/proc/netmon-cannot-exist/cgroup2"})
    assert r.returncode == 2
    lines = [ln for ln in r.stdout.splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: this host has no cgroup v2 mount (cgroup v1 only)")
