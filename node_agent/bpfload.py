"""Loading, attaching and detaching netmon's BPF programs (BCC), shared by the flow collector
and the DNS tracer.

cgroup_skb attachments outlive the process that made them, so every attach is paired with a
detach in `close()`, and `remove_stale()` detaches programs of ours (name prefix `netmon_`)
that a crashed agent left on the cgroup. The cgroup queries use the bpf(2) syscall directly:
bpftool is not installed on nodes by default and BCC has no query call.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from pathlib import Path

PROG_PREFIX = b"netmon_"
BPF_SRC_DIR = Path(__file__).resolve().parent.parent / "bpf"

CGROUP_INET_INGRESS = 0
CGROUP_INET_EGRESS = 1
BPF_F_ALLOW_MULTI = 2
CGROUP2_SUPER_MAGIC = 0x63677270

# bpf(2) commands and the syscall number (x86_64, aarch64)
_BPF_PROG_DETACH = 9
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_PROG_QUERY = 16
_BPF_MAP_LOOKUP_BATCH = 24
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)

_DEBIAN_BCC = "/usr/lib/python3/dist-packages"


class BpfError(Exception):
    """BPF cannot run here (not root, no kernel headers, no BCC, no cgroup v2): one clear line."""


# ------------------------------------------------------------------------- cgroup v2 root

def _is_cgroup2(path: str) -> bool:
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]

    buf = Statfs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == CGROUP2_SUPER_MAGIC


def find_cgroup2(configured: str | None = None) -> str:
    """The cgroup v2 directory to attach to: the configured one (must be cgroup2), else
    /sys/fs/cgroup (unified layout), /sys/fs/cgroup/unified (hybrid), else the first cgroup2
    mount in /proc/mounts."""
    if configured:
        if not _is_cgroup2(configured):
            raise BpfError(f"{configured} is not a cgroup v2 directory")
        return configured
    for cand in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if _is_cgroup2(cand):
            return cand
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    except OSError:
        pass
    raise BpfError("no cgroup v2 mount found (mount one or pass --cgroup-path)")


# ------------------------------------------------------------------------------- loading

def _import_bcc():
    try:
        import bcc  # noqa: F401
    except ImportError:
        if _DEBIAN_BCC not in sys.path and os.path.isdir(os.path.join(_DEBIAN_BCC, "bcc")):
            sys.path.append(_DEBIAN_BCC)
        try:
            import bcc  # noqa: F401,F811
        except ImportError as e:
            raise BpfError(f"BCC python module not available ({e}); install python3-bpfcc") from None
    return bcc


def check_environment() -> None:
    """Raise BpfError with the reason when BPF programs cannot be loaded here."""
    if os.geteuid() != 0:
        raise BpfError("eBPF needs root (CAP_BPF and CAP_NET_ADMIN); run as root or use --collector conntrack")
    rel = os.uname().release
    build = Path(f"/lib/modules/{rel}/build")
    if not build.exists():
        raise BpfError(f"kernel headers missing: {build} does not exist (install linux-headers for {rel})")


def load(source: str, cflags: list[str] | None = None):
    """Compile a C file from bpf/ with BCC; returns the bcc.BPF object."""
    check_environment()
    bcc = _import_bcc()
    path = BPF_SRC_DIR / source
    try:
        text = path.read_text()
    except OSError as e:
        raise BpfError(f"cannot read BPF source {path}: {e.strerror}") from None
    try:
        return bcc.BPF(text=text.encode(), cflags=cflags or [])
    except Exception as e:  # BCC raises bare Exception on compile/load failures
        raise BpfError(f"loading {source} failed: {e}") from None


# ------------------------------------------------------------------------ bpf(2) helpers

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    r = _libc.syscall(_NR_BPF, cmd, attr, len(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def query_prog_ids(cgroup_fd: int, attach_type: int) -> list[int]:
    """Program ids attached to the cgroup itself (not inherited ones)."""
    n = 64
    while True:
        ids = (ctypes.c_uint32 * n)()
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("=IIIIQI", attr, 0, cgroup_fd, attach_type, 0, 0, ctypes.addressof(ids), n)
        try:
            _bpf(_BPF_PROG_QUERY, attr)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                n *= 4
                continue
            raise
        cnt = struct.unpack_from("=I", attr, 24)[0]
        return list(ids[:cnt])


def prog_fd_by_id(prog_id: int) -> int:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=I", attr, 0, prog_id)
    return _bpf(_BPF_PROG_GET_FD_BY_ID, attr)


def prog_name(prog_fd: int) -> bytes:
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQ", attr, 0, prog_fd, len(info), ctypes.addressof(info))
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
    return info.raw[64:80].split(b"\0", 1)[0]   # bpf_prog_info.name


def lookup_batch(map_fd: int, key_size: int, value_size: int, chunk: int = 4096) -> tuple[bytes, bytes]:
    """All keys and values of a hash map as two flat byte strings (BPF_MAP_LOOKUP_BATCH,
    Linux >= 5.6): a few syscalls and no per-entry objects, unlike BCC's ctypes iteration."""
    kbuf = ctypes.create_string_buffer(key_size * chunk)
    vbuf = ctypes.create_string_buffer(value_size * chunk)
    tok_in = ctypes.create_string_buffer(max(key_size, 8))
    tok_out = ctypes.create_string_buffer(max(key_size, 8))
    keys, vals = [], []
    first = True
    while True:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("=QQQQII", attr, 0, 0 if first else ctypes.addressof(tok_in), ctypes.addressof(tok_out),
                         ctypes.addressof(kbuf), ctypes.addressof(vbuf), chunk, map_fd)
        done = False
        try:
            _bpf(_BPF_MAP_LOOKUP_BATCH, attr)
        except OSError as e:
            if e.errno != errno.ENOENT:   # ENOENT: the last batch (count may still be > 0)
                raise
            done = True
        n = struct.unpack_from("=I", attr, 32)[0]
        keys.append(kbuf.raw[: n * key_size])
        vals.append(vbuf.raw[: n * value_size])
        if done:
            return b"".join(keys), b"".join(vals)
        ctypes.memmove(tok_in, tok_out, len(tok_out))
        first = False


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program; counted only while kernel.bpf_stats_enabled=1."""
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQ", attr, 0, prog_fd, len(info), ctypes.addressof(info))
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
    return struct.unpack_from("=QQ", info, 192)   # bpf_prog_info.run_time_ns, run_cnt


def _detach_fd(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIII", attr, 0, cgroup_fd, prog_fd, attach_type, 0)
    _bpf(_BPF_PROG_DETACH, attr)


def attached_names(cgroup: str, attach_type: int) -> list[bytes]:
    """Names of the programs attached to the cgroup for this attach type."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = []
        for pid in query_prog_ids(fd, attach_type):
            try:
                pfd = prog_fd_by_id(pid)
            except OSError:
                continue  # detached meanwhile
            try:
                out.append(prog_name(pfd))
            finally:
                os.close(pfd)
        return out
    finally:
        os.close(fd)


def remove_stale(cgroup: str, names: tuple[bytes, ...] | None = None) -> int:
    """Detach programs of ours left on the cgroup by an earlier process; returns how many.

    Ours = name starts with `netmon_` (or is in `names`). Only one agent runs per node, so a
    netmon_ program found at start-up belongs to a process that did not clean up."""
    removed = 0
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for at in (CGROUP_INET_INGRESS, CGROUP_INET_EGRESS):
            for pid in query_prog_ids(fd, at):
                try:
                    pfd = prog_fd_by_id(pid)
                except OSError:
                    continue
                try:
                    name = prog_name(pfd)
                    ours = name in names if names is not None else name.startswith(PROG_PREFIX)
                    if ours:
                        _detach_fd(fd, pfd, at)
                        removed += 1
                finally:
                    os.close(pfd)
    finally:
        os.close(fd)
    return removed


# ------------------------------------------------------------------------- attachments

class Attachments:
    """The cgroup attachments one component made; `close()` undoes all of them (idempotent)."""

    def __init__(self, cgroup: str):
        self.cgroup = cgroup
        self._fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        self._made: list[tuple[object, int]] = []

    def attach(self, bpf, func_name: str, attach_type: int):
        bcc = _import_bcc()
        try:
            fn = bpf.load_func(func_name.encode(), bcc.BPF.CGROUP_SKB)
        except Exception as e:
            raise BpfError(f"loading program {func_name} failed: {e}") from None
        try:
            bcc.BPF.attach_func(fn, self._fd, attach_type, BPF_F_ALLOW_MULTI)
        except Exception as e:
            raise BpfError(f"attaching {func_name} to {self.cgroup} failed: {e}") from None
        self._made.append((fn, attach_type))
        return fn

    def prog_fds(self) -> list[int]:
        return [fn.fd for fn, _at in self._made]

    def close(self) -> None:
        bcc = _import_bcc() if self._made else None
        errors = []
        while self._made:
            fn, at = self._made.pop()
            try:
                bcc.BPF.detach_func(fn, self._fd, at)
            except Exception as e:  # keep detaching the rest
                errors.append(str(e))
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if errors:
            raise BpfError("; ".join(errors))
