"""Kernel settings the conntrack collector depends on: set, then read back, never assumed.

- `net.netfilter.nf_conntrack_acct` must be 1, or entries carry no byte/packet counters.
  Entries created while it was 0 never get counters (the extension is added at creation),
  so the collector counts them apart (`entries_without_counters`) instead of reading 0.
- `net.netfilter.nf_conntrack_events`: 0 = no events (no DESTROY: bytes between the last
  poll and a connection's end would be lost), 1 = events for every entry, 2 (the default
  since Linux 5.19) = events only for entries created while a listener is subscribed.
  0 is raised to 1; 2 is kept once the agent listens (new entries then get events; entries
  created before the agent subscribed send no DESTROY, and the accounter treats their
  disappearance from the dump as their end, see docs/agent-accounting.md).

Both sysctls are per network namespace: `netns` runs the check in another one (tests).
"""
from __future__ import annotations

import os

ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"
EVENTS = "/proc/sys/net/netfilter/nf_conntrack_events"


class KernelSettingError(OSError):
    """A setting cannot be made or does not stick: one clear line."""


def run_in_netns(netns: str | None, fn):
    """fn() in network namespace `netns` (a forked child does setns: sysctls under /proc/sys/net
    belong to the namespace of the process that opens them). Returns fn's str result."""
    if netns is None:
        return fn()
    from pyroute2.netns import setns

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's code
        msg = b""
        try:
            setns(netns, flags=0, fork=False)
            msg = b"ok:" + str(fn()).encode()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            msg = f"{type(exc).__name__}: {exc}".encode()
        finally:
            os.write(w, msg)
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    os.waitpid(pid, 0)
    if not msg.startswith("ok:"):
        if msg.startswith("PermissionError"):
            raise PermissionError(msg)
        raise KernelSettingError(f"in netns {netns}: {msg}")
    return msg[3:]


def _read(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip() or 0)


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def _ensure() -> str:
    """In the current netns: acct=1 and events>=1, verified by reading back. 'acct,events'."""
    try:
        acct = _read(ACCT)
    except FileNotFoundError:
        raise KernelSettingError(f"nf_conntrack is not loaded (no {ACCT}); load it with `modprobe nf_conntrack`") from None
    if acct != 1:
        _write(ACCT, 1)
        acct = _read(ACCT)
        if acct != 1:
            raise KernelSettingError(f"{ACCT} reads {acct} after writing 1")
    try:
        events = _read(EVENTS)
    except FileNotFoundError:   # kernels built without CONFIG_NF_CONNTRACK_EVENTS
        raise KernelSettingError(f"conntrack events are not available (no {EVENTS}): ended connections "
                                 "cannot be seen; use --collector ebpf") from None
    if events == 0:
        _write(EVENTS, 1)
        events = _read(EVENTS)
        if events == 0:
            raise KernelSettingError(f"{EVENTS} reads 0 after writing 1")
    return f"{acct},{events}"


def ensure_conntrack_settings(netns: str | None = None) -> dict[str, int]:
    """Set and verify the conntrack sysctls; {'kernel_ct_acct': 1, 'kernel_ct_events': 1|2}.

    Raises KernelSettingError (PermissionError when not root) with one line."""
    try:
        out = run_in_netns(netns, _ensure)
    except PermissionError:
        raise PermissionError(f"{ACCT} / {EVENTS} are not writable (run as root)") from None
    acct, events = (int(x) for x in str(out).split(","))
    return {"kernel_ct_acct": acct, "kernel_ct_events": events}
