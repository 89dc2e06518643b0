"""Where the job's tasks run: local Ray (on loopback), a Ray cluster by address, or inline.

Each executor offers submit / get / put / arg / ready / shutdown, so the driver is the same for
all; `inline` calls the task functions in this process (unit tests of the bookkeeping, profiling).
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from typing import Any, Callable

from jobs.errors import JobError
from lake.storage import one_line



class _Done:
    """A finished 'future' for the inline executor."""
    def __init__(self, value):
        self.value = value


class InlineExecutor:
    def submit(self, fn: Callable, *args, num_returns: int = 1, memory: int | None = None):
        out = fn(*args)
        return tuple(_Done(v) for v in out) if num_returns > 1 else _Done(out)

    def get(self, fut):
        return fut.value

    def put(self, value):
        return value

    def arg(self, fut):
        return fut.value

    def ready(self, futs: list, timeout: float | None = 0) -> list:
        return list(futs)

    def capacity(self) -> int:
        return 1

    def placement(self) -> dict[str, int]:
        return {}

    def wait_any(self, futs: list, timeout: float) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` (or `ray://host:port`) nobody listens on: Ray itself retries
    connecting to a missing GCS for minutes. `auto` and other forms are left to Ray."""
    import socket  # noqa: PLC0415
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot start or reach Ray at {address}: {exc}") from None


def _placed(fn: Callable, num_returns: int) -> Callable:
    """`fn` as a task that also returns the node it ran on (one more, tiny, return value)."""
    @functools.wraps(fn)
    def task(*args):
        import pyarrow as pa  # noqa: PLC0415
        import ray  # noqa: PLC0415
        # A task uses the CPUs Ray gave it, as Ray does for OpenMP (OMP_NUM_THREADS): pyarrow's
        # pool would otherwise take every core of the node from the tasks beside it.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
        if cpus >= 1:
            pa.set_cpu_count(int(cpus))
        out = fn(*args)
        where = f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()}"
        return (out, where) if num_returns == 1 else (*out, where)
    return task


def _sigterm_handler():
    """SIGTERM's Python handler, if one is set and this is the main thread (else None)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    h = signal.getsignal(signal.SIGTERM)
    return h if callable(h) else None


def task_error(exc) -> Exception:
    """The exception a Ray task raised, as the task raised it (a StorageError, an OSError for a
    full disk or a refused permission, a JobError), so the CLI prints it as one line instead of
    Ray's remote traceback; if Ray could not carry it over, a JobError with its last line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and not isinstance(cause, type(exc)):
        return cause
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return JobError(f"a task failed: {lines[-1].strip() if lines else type(exc).__name__}")


#: tries to start the job's own local Ray before giving up
LOCAL_START_ATTEMPTS = 3
#: seconds the job's local Ray processes get to exit after ray.shutdown() before they are killed
REAP_GRACE = 3.0


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc (None if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of `root`: pid -> start time (the pair names a process even if
    its pid is later reused)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st:
                children.setdefault(st[0], []).append((int(name), st[1]))
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def reap(procs: dict[int, int], grace: float = REAP_GRACE) -> list[int]:
    """Wait up to `grace` s for `procs` to exit, then SIGKILL the ones still there (the same
    process: same pid and start time). Returns the pids killed."""
    import time  # noqa: PLC0415
    deadline = time.monotonic() + grace
    alive = dict(procs)
    while alive and time.monotonic() < deadline:
        alive = {p: s for p, s in alive.items() if (_proc_stat(p) or (0, -1))[1] == s}
        if alive:
            time.sleep(0.1)
    killed = []
    for pid, start in alive.items():
        if (_proc_stat(pid) or (0, -1))[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


#: marks every process of the local Ray a job starts (environment variables are inherited)
OWNER_ENV = "NETMON_RAY_OWNER"

_WATCHDOG = r"""
import os, signal, sys, time
tag, fd = ("%s=" % sys.argv[1]).encode() + sys.argv[2].encode(), int(sys.argv[3])
while os.read(fd, 1):
    pass
for _ in range(4):  # the job is gone: so is every process its local Ray started
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/environ" % pid, "rb") as f:
                    mine = tag in f.read().split(b"\0")
            except OSError:
                continue
            if mine:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
    time.sleep(0.5)
"""


def _start_watchdog() -> None:
    """A kill -9 of the job runs none of its code, and Ray's agents notice their dead raylet
    only when they get to it (seen: more than 30 s): so a small process (its own session, a
    bare environment) waits for this one to die, read end of a pipe only this process writes,
    then SIGKILLs every process that carries this job's mark (its local Ray, all of it)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import uuid  # noqa: PLC0415
    mark = uuid.uuid4().hex
    os.environ[OWNER_ENV] = mark  # before Ray starts: every Ray process inherits it
    r, w = os.pipe()              # not inheritable: only this process holds the write end
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, OWNER_ENV, mark, str(r)], pass_fds=(r,),
                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(r)
    _watchdog_pipe.append(w)      # open until this process ends, however it ends


_watchdog_pipe: list[int] = []


class RayExecutor:
    def __init__(self, address: str | None, num_cpus: int):
        if not address:
            # Only for the local Ray this job starts itself, and before Ray is imported (it reads
            # them then): single-node mode keeps every listener on 127.0.0.1, and a private
            # loopback cluster needs no token. A cluster joined by address keeps its own settings
            # (single-node mode would refuse a second node; auth is the cluster's to decide).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # The driver reports the first failed task as one line; the other tasks' errors would
        # otherwise be printed as tracebacks when their results are dropped.
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
        # The driver's core worker would otherwise install a native handler that prints a stack
        # dump on SIGTERM: the job answers SIGTERM itself, in one line (jobs/cli.py).
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray  # noqa: PLC0415
        self.ray = ray
        self.started = False
        self.local = not address
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": True}
            if address:
                _check_reachable(address)
            before = _sigterm_handler()
            if not address and not _watchdog_pipe:
                _start_watchdog()
            try:
                self._init(ray, address, num_cpus, kwargs)
            except BaseException:
                # failed or interrupted (SIGTERM, Ctrl-C) while starting: what did start stops
                # here, or it would outlive the job (and Ray crashes at interpreter exit)
                self._stop(local=not address)
                raise
            finally:
                # ray.init replaces SIGTERM's handler with one that exits at once (status 1);
                # the CLI's own (an exception, so the driver unwinds, reports one line and
                # shutdown() stops the local Ray) is put back.
                if callable(before):
                    signal.signal(signal.SIGTERM, before)
            self.started = True
        self._remote: dict[tuple, Any] = {}
        self._max_memory: int | None = None
        self._where: list = []  # one small ref per task: the node it ran on

    @staticmethod
    def _init(ray, address, num_cpus, kwargs) -> None:
                for attempt in range(1 if address else LOCAL_START_ATTEMPTS):
                    try:
                        if address:
                            ray.init(address=address, **kwargs)
                        else:
                            ray.init(num_cpus=num_cpus, **kwargs)
                        break
                    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
                        # a local Ray on a busy machine can miss its own start-up deadline (its
                        # agents start late); starting it again usually works
                        if address or attempt + 1 == LOCAL_START_ATTEMPTS or "timed out" not in str(exc):
                            raise JobError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                                           f"{' '.join(str(exc).split())[:300]}") from exc
                        ray.shutdown()

    def submit(self, fn: Callable, *args, num_returns: int = 1, memory: int | None = None):
        """`memory`: bytes the task needs; Ray places it only where that much is free."""
        key = (fn, num_returns)
        if key not in self._remote:
            self._remote[key] = self.ray.remote(_placed(fn, num_returns))
        opts: dict[str, Any] = {"num_returns": num_returns + 1}
        if memory:
            opts["memory"] = min(int(memory), self._largest_node_memory())
        *out, where = self._remote[key].options(**opts).remote(*args)
        self._where.append(where)
        return out[0] if num_returns == 1 else tuple(out)

    def placement(self) -> dict[str, int]:
        """Tasks run so far per Ray node ("ip node-id"): where the cluster did the work."""
        counts: dict[str, int] = {}
        for w in self.ray.get(self._where):
            counts[w] = counts.get(w, 0) + 1
        return counts

    def wait_any(self, futs: list, timeout: float) -> None:
        """Return when at least one of `futs` is done (or after `timeout` seconds)."""
        if futs:
            self.ray.wait(futs, num_returns=1, timeout=timeout)

    def _largest_node_memory(self) -> int:
        """A task asking more than any node offers would never run: ask at most that."""
        if self._max_memory is None:
            mem = [n.get("Resources", {}).get("memory", 0) for n in self.ray.nodes() if n.get("Alive")]
            self._max_memory = int(max(mem, default=0)) or (1 << 62)
        return self._max_memory

    def capacity(self) -> int:
        """Tasks the whole cluster runs at once (its CPUs), not the driver's machine's."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def get(self, fut):
        try:
            return self.ray.get(fut)
        except self.ray.exceptions.RayTaskError as exc:
            raise task_error(exc) from None
        except self.ray.exceptions.RayError as exc:  # a worker or node died, the object store is full
            raise JobError(f"Ray failed: {type(exc).__name__}: {one_line(exc)}") from None

    def put(self, value):
        return self.ray.put(value)  # shipped once, resolved in each task that takes it

    def arg(self, fut):
        return fut  # an ObjectRef passed to a task resolves there, without a trip to the driver

    def ready(self, futs: list, timeout: float | None = 0) -> list:
        if not futs:
            return []
        done, _ = self.ray.wait(futs, num_returns=len(futs), timeout=timeout)
        return done

    def shutdown(self) -> None:
        if self.started:
            self.started = False
            self._stop(self.local)

    def _stop(self, local: bool) -> None:
        # ray.shutdown() stops the processes it started, but the agents the raylet started
        # (DashboardAgent, RuntimeEnvAgent) only notice their raylet is gone on their own
        # schedule, which can take longer than the job: so the job's local Ray processes are
        # listed first, while they still descend from this one, and killed if they linger.
        procs = descendants(os.getpid()) if local else {}
        try:
            self.ray.shutdown()
        finally:
            reap(procs)


