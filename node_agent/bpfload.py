"""Loading, attaching and detaching netmon's BPF programs (BCC), shared by the flow collector
and the DNS tracer.

cgroup_skb attachments outlive the process that made them, so every attach is paired with a
detach in `close()`, and `remove_stale()` detaches programs of ours (name prefix `netmon_`)
that a crashed agent left on the cgroup. The cgroup queries use the bpf(2) syscall directly:
bpftool is not installed on nodes by default and BCC has no query call.

Memory. BCC compiles C with an in-process LLVM: importing it costs ~65 MiB and a compile
~135 MiB of RSS, more than the agent's 128 MiB limit. So `load()` compiles and loads in a
short-lived child process (`python -m node_agent.bpfload`), which hands the program and map
file descriptors back over a unix socket (SCM_RIGHTS) and exits; the agent then attaches,
reads maps and consumes the ring buffer through plain bpf(2) calls and libbcc_bpf (2 MiB).
In Kubernetes the child would still count against the container's memory limit, so an init
container can compile once and pin everything to a bpffs directory
(`python -m node_agent.bpfload pin /sys/fs/bpf/netmon`); with NETMON_BPF_PIN_DIR set, `load()`
opens the pinned objects instead of compiling.
"""
from __future__ import annotations

import array
import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

PROG_PREFIX = b"netmon_"
BPF_SRC_DIR = Path(__file__).resolve().parent.parent / "bpf"

CGROUP_INET_INGRESS = 0
CGROUP_INET_EGRESS = 1
BPF_F_ALLOW_MULTI = 2
CGROUP2_SUPER_MAGIC = 0x63677270

# bpf(2) commands and the syscall number (x86_64, aarch64)
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_DELETE_ELEM = 3
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_PROG_ATTACH = 8
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


OWN_CGROUP2 = "/run/netmon/cgroup2"   # where a cgroup-v1-only host gets the agent's own mount


def _cgroup2_mounts() -> list[str]:
    try:
        return [parts[1] for parts in (line.split() for line in Path("/proc/mounts").read_text().splitlines())
                if len(parts) > 2 and parts[2] == "cgroup2"]
    except OSError:
        return []


def mount_own_cgroup2(path: str | None = None) -> str:
    """Mount the cgroup v2 hierarchy at `path` (default $NETMON_CGROUP2_MOUNT or
    /run/netmon/cgroup2) for a host that mounts only cgroup v1. Its root holds every process
    that no v2 cgroup was assigned to (all of them on such a host), so programs attached there
    see every socket. BpfError with one line if it cannot be mounted."""
    path = path or os.environ.get("NETMON_CGROUP2_MOUNT") or OWN_CGROUP2
    if _is_cgroup2(path):
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BpfError(f"this host has no cgroup v2 mount (cgroup v1 only) and {path} cannot be created for one: "
                       f"{exc.strerror or exc}") from None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", os.fsencode(path), b"cgroup2", 0, None) != 0:
        err = ctypes.get_errno()
        hint = " (needs CAP_SYS_ADMIN: a privileged container)" if err in (errno.EPERM, errno.EACCES) else ""
        raise BpfError(f"this host has no cgroup v2 mount (cgroup v1 only) and mounting one at {path} failed: "
                       f"{os.strerror(err)}{hint}; use --collector conntrack and --no-dns") from None
    return path


def find_cgroup2(configured: str | None = None) -> str:
    """The cgroup v2 directory to attach to: the configured one (must be cgroup2; on a hybrid
    host the `unified` directory under it is taken, so one DaemonSet path fits both layouts),
    else /sys/fs/cgroup (unified layout), /sys/fs/cgroup/unified (hybrid), else the first
    cgroup2 mount in /proc/mounts. A host with cgroup v1 only (no cgroup2 mount anywhere, also
    not at the configured path) gets one of the agent's own (mount_own_cgroup2)."""
    if configured:
        if _is_cgroup2(configured):
            return configured
        if _is_cgroup2(os.path.join(configured, "unified")):
            return os.path.join(configured, "unified")
        if _cgroup2_mounts() or not _is_cgroup_v1(configured):
            raise BpfError(f"{configured} is not a cgroup v2 directory (nor has a cgroup2 'unified' under it)")
        return mount_own_cgroup2()
    for cand in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if _is_cgroup2(cand):
            return cand
    mounts = _cgroup2_mounts()
    if mounts:
        return mounts[0]
    return mount_own_cgroup2()


def _is_cgroup_v1(path: str) -> bool:
    """A cgroup v1 root (the tmpfs holding controller directories, or one controller)."""
    return os.path.isdir(os.path.join(path, "cpu")) or os.path.isdir(os.path.join(path, "memory")) or \
        os.path.exists(os.path.join(path, "cgroup.procs")) and not _is_cgroup2(path)


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


class Loaded:
    """Programs and maps of one compiled C file, as file descriptors owned by this process."""

    def __init__(self, progs: dict[str, int], maps: dict[str, int]):
        self.progs, self.maps = progs, maps

    def close(self) -> None:
        for fd in [*self.progs.values(), *self.maps.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.progs, self.maps = {}, {}


# What each C file provides (the init container pins all of it).
SOURCES = {
    "flows.c": (["netmon_flow_in", "netmon_flow_out"], ["netmon_flows", "netmon_fstats"]),
    "dns.c": (["netmon_dns_in"], ["netmon_dns_events", "netmon_dstats"]),
}


def load(source: str, programs: list[str], maps: list[str], cflags: list[str] | None = None,
         timeout: float = 120.0, pin_dir: str | None = None) -> Loaded:
    """Programs (cgroup_skb) and maps of bpf/<source> as fds: opened from `pin_dir`
    (default $NETMON_BPF_PIN_DIR) when everything is pinned there, else compiled with BCC in
    a child process. BpfError with the reason if anything fails."""
    if os.geteuid() != 0:
        check_environment()
    pin_dir = pin_dir if pin_dir is not None else os.environ.get("NETMON_BPF_PIN_DIR")
    if pin_dir:
        pinned = _open_pinned(pin_dir, programs, maps)
        if pinned is not None:
            return pinned
    return _compile(source, programs, maps, cflags, timeout)


def _open_pinned(pin_dir: str, programs: list[str], maps: list[str]) -> Loaded | None:
    names = programs + maps
    if not all(os.path.exists(os.path.join(pin_dir, n)) for n in names):
        return None
    fds: dict[str, int] = {}
    try:
        for n in names:
            fds[n] = obj_get(os.path.join(pin_dir, n))
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        raise BpfError(f"cannot open pinned {os.path.join(pin_dir, n)}: {e.strerror}") from None
    return Loaded({n: fds[n] for n in programs}, {n: fds[n] for n in maps})


def pin_all(pin_dir: str, cflags: list[str] | None = None) -> list[str]:
    """Compile every C file and pin its programs and maps in `pin_dir` (a bpffs directory),
    replacing earlier pins. Returns the pinned paths."""
    try:
        os.makedirs(pin_dir, exist_ok=True)
    except OSError as exc:   # e.g. no bpffs mounted at the parent: one line, not a traceback
        raise BpfError(f"cannot create the pin directory {pin_dir}: {exc.strerror or exc}") from exc
    done = []
    for source, (programs, maps) in SOURCES.items():
        loaded = _compile(source, programs, maps, cflags, 120.0)
        try:
            for name, fd in [*loaded.progs.items(), *loaded.maps.items()]:
                path = os.path.join(pin_dir, name)
                if os.path.exists(path):
                    os.unlink(path)
                obj_pin(fd, path)
                done.append(path)
        finally:
            loaded.close()
    return done


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=QI", attr, 0, ctypes.addressof(p), fd)
    try:
        _bpf(_BPF_OBJ_PIN, attr)
    except OSError as e:
        raise BpfError(f"cannot pin {path}: {e.strerror} (is it on a bpf filesystem?)") from None


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=QII", attr, 0, ctypes.addressof(p), 0, 0)
    return _bpf(_BPF_OBJ_GET, attr)


def _compile(source: str, programs: list[str], maps: list[str], cflags: list[str] | None,
             timeout: float) -> Loaded:
    check_environment()
    path = BPF_SRC_DIR / source
    if not path.is_file():
        raise BpfError(f"BPF source {path} not found")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    req = json.dumps({"source": str(path), "cflags": cflags or [], "programs": programs, "maps": maps,
                      "fd": child.fileno()})
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "node_agent.bpfload", req], pass_fds=(child.fileno(),),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    except OSError as e:
        parent.close()
        child.close()
        raise BpfError(f"cannot start the BPF loader: {e.strerror or e}") from None
    child.close()
    try:
        parent.settimeout(timeout)
        fds = array.array("i")
        try:
            msg, anc, _flags, _addr = parent.recvmsg(1 << 16, socket.CMSG_SPACE(64 * fds.itemsize))
        except socket.timeout:
            proc.kill()
            raise BpfError(f"compiling {source} took longer than {timeout:.0f} s") from None
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    finally:
        parent.close()
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    reply = json.loads(msg) if msg else {}
    if "error" in reply or not msg:
        for fd in fds:
            os.close(fd)
        detail = reply.get("error") or _last_line(err) or f"loader exited with {proc.returncode}"
        first_error = next((ln.strip() for ln in (err or b"").decode(errors="replace").splitlines()
                            if "error:" in ln), "")
        if first_error and first_error not in detail:
            detail += f" ({first_error})"
        raise BpfError(f"loading {source} failed: {detail}")
    names = reply["programs"] + reply["maps"]
    got = dict(zip(names, fds))
    return Loaded({n: got[n] for n in reply["programs"]}, {n: got[n] for n in reply["maps"]})


def _last_line(err: bytes | None) -> str:
    lines = [ln for ln in (err or b"").decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _child_main(req: dict) -> None:
    """The loader child: compile, load, send the fds, exit (its LLVM memory goes with it)."""
    sock = socket.socket(fileno=req["fd"])
    try:
        bcc = _import_bcc()
        try:
            b = bcc.BPF(src_file=req["source"].encode(), cflags=req["cflags"])
            progs = [b.load_func(n.encode(), bcc.BPF.CGROUP_SKB).fd for n in req["programs"]]
            maps = [b.get_table(n.encode()).map_fd for n in req["maps"]]
        except Exception as e:  # BCC raises bare Exception on compile/verifier failures
            raise BpfError(" ".join(str(e).split())[:500]) from None
        fds = array.array("i", progs + maps)
        sock.sendmsg([json.dumps({"programs": req["programs"], "maps": req["maps"]}).encode()],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    except BpfError as e:
        sock.send(json.dumps({"error": str(e)}).encode())
    finally:
        sock.close()


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


def prog_id(prog_fd: int) -> int:
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQ", attr, 0, prog_fd, len(info), ctypes.addressof(info))
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
    return struct.unpack_from("=I", info, 4)[0]   # bpf_prog_info.id


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


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete one element; False if it was not there."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=I4xQ", attr, 0, map_fd, ctypes.addressof(kbuf))
    try:
        _bpf(_BPF_MAP_DELETE_ELEM, attr)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=I4xQQQ", attr, 0, map_fd, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 0)
    try:
        _bpf(_BPF_MAP_LOOKUP_ELEM, attr)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw


def possible_cpus() -> int:
    """Number of possible CPUs (per-CPU map values have one slot each)."""
    n = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def percpu_u64_sum(map_fd: int, index: int) -> int:
    """Sum over CPUs of a BPF_PERCPU_ARRAY(u64) slot."""
    n = possible_cpus()
    raw = map_lookup(map_fd, struct.pack("=I", index), 8 * n)
    return sum(struct.unpack(f"={n}Q", raw)) if raw else 0


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
        self._made: list[tuple[int, int, str]] = []

    def attach(self, prog_fd: int, attach_type: int, name: str = "program") -> None:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("=IIII", attr, 0, self._fd, prog_fd, attach_type, BPF_F_ALLOW_MULTI)
        try:
            _bpf(_BPF_PROG_ATTACH, attr)
        except OSError as e:
            raise BpfError(f"attaching {name} to {self.cgroup} failed: {e.strerror}") from None
        self._made.append((prog_fd, attach_type, name))

    def prog_fds(self) -> list[int]:
        return [fd for fd, _at, _n in self._made]

    def close(self) -> None:
        errors = []
        while self._made:
            fd, at, name = self._made.pop()
            try:
                _detach_fd(self._fd, fd, at)
            except OSError as e:  # keep detaching the rest
                errors.append(f"detaching {name}: {e.strerror}")
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if errors:
            raise BpfError("; ".join(errors))


# ---------------------------------------------------------------------------- ring buffer

_RINGBUF_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class RingBuffer:
    """Consumer of a BPF_RINGBUF_OUTPUT map through libbcc_bpf (no LLVM in this process).
    `callback(data: bytes)` runs for every record during poll()/consume()."""

    def __init__(self, map_fd: int, callback):
        try:
            self._lib = lib = ctypes.CDLL("libbcc_bpf.so.0")
        except OSError as e:
            raise BpfError(f"libbcc_bpf.so.0 not available ({e}); install libbpfcc") from None
        lib.bpf_new_ringbuf.restype = ctypes.c_void_p
        lib.bpf_new_ringbuf.argtypes = [ctypes.c_int, _RINGBUF_CB, ctypes.c_void_p]
        lib.bpf_poll_ringbuf.restype = ctypes.c_int
        lib.bpf_poll_ringbuf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.bpf_consume_ringbuf.restype = ctypes.c_int
        lib.bpf_consume_ringbuf.argtypes = [ctypes.c_void_p]
        lib.bpf_free_ringbuf.restype = None
        lib.bpf_free_ringbuf.argtypes = [ctypes.c_void_p]

        def cb(_ctx, data, size):
            try:
                callback(ctypes.string_at(data, size))
            except Exception:   # a bug in the consumer must not unwind through C
                pass
            return 0

        self._cb = _RINGBUF_CB(cb)   # keep a reference: C holds the pointer
        self._rb = lib.bpf_new_ringbuf(map_fd, self._cb, None)
        if not self._rb:
            raise BpfError("cannot open the ring buffer")

    def poll(self, timeout_ms: int) -> int:
        return self._lib.bpf_poll_ringbuf(self._rb, timeout_ms) if self._rb else 0

    def consume(self) -> int:
        return self._lib.bpf_consume_ringbuf(self._rb) if self._rb else 0

    def close(self) -> None:
        if self._rb:
            self._lib.bpf_free_ringbuf(self._rb)
            self._rb = None


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "pin":   # init container: compile once, pin for the agent
        try:
            for path in pin_all(argv[1]):
                print(f"pinned {path}")
        except BpfError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if len(argv) == 1 and argv[0].startswith("{"):
        _child_main(json.loads(argv[0]))
        return 0
    print("usage: python -m node_agent.bpfload pin DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
