"""Where the job's tasks run: local Ray (on loopback), a Ray cluster by address, or inline.

Each executor offers submit / get / put / arg / ready / shutdown, so the driver is the same for
all; `inline` calls the task functions in this process (unit tests of the bookkeeping, profiling).
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable

from jobs.errors import JobError



class _Done:
    """A finished 'future' for the inline executor."""
    def __init__(self, value):
        self.value = value


class InlineExecutor:
    def submit(self, fn: Callable, *args, num_returns: int = 1):
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

    def placement(self) -> dict[str, int]:
        return {}

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
        import ray  # noqa: PLC0415
        out = fn(*args)
        where = f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()}"
        return (out, where) if num_returns == 1 else (*out, where)
    return task


class RayExecutor:
    def __init__(self, address: str | None, num_cpus: int):
        if not address:
            # Only for the local Ray this job starts itself, and before Ray is imported (it reads
            # them then): single-node mode keeps every listener on 127.0.0.1, and a private
            # loopback cluster needs no token. A cluster joined by address keeps its own settings
            # (single-node mode would refuse a second node; auth is the cluster's to decide).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray  # noqa: PLC0415
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": True}
            if address:
                _check_reachable(address)
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=num_cpus, **kwargs)
            except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
                raise JobError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                               f"{' '.join(str(exc).split())[:300]}") from exc
            self.started = True
        self._remote: dict[tuple, Any] = {}
        self._where: list = []  # one small ref per task: the node it ran on

    def submit(self, fn: Callable, *args, num_returns: int = 1):
        key = (fn, num_returns)
        if key not in self._remote:
            self._remote[key] = self.ray.remote(_placed(fn, num_returns))
        *out, where = self._remote[key].options(num_returns=num_returns + 1).remote(*args)
        self._where.append(where)
        return out[0] if num_returns == 1 else tuple(out)

    def placement(self) -> dict[str, int]:
        """Tasks run so far per Ray node ("ip node-id"): where the cluster did the work."""
        counts: dict[str, int] = {}
        for w in self.ray.get(self._where):
            counts[w] = counts.get(w, 0) + 1
        return counts

    def get(self, fut):
        try:
            return self.ray.get(fut)
        except self.ray.exceptions.RayTaskError as exc:
            # A JobError raised in a task is the user's message: give it without Ray's wrapping.
            if isinstance(getattr(exc, "cause", None), JobError):
                raise JobError(str(exc.cause)) from None
            raise

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
            self.ray.shutdown()


