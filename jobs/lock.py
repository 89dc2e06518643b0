"""The run lease (`_state/lock.json`): one cost run at a time per lake, with a fencing token.

The lease object holds the holder, an expiry, a token that grows by one on every acquisition
(kept across releases) and the hours its holder is publishing (so the next holder can finish
them: jobs/commit.recover). Every change is a conditional write, so two runs can never both
believe they hold it:
- local lakes: read-compare-replace under an flock on `_state/lock.json.guard` (the kernel
  drops the flock when a process dies), the new body written beside and renamed over;
- S3: PutObject with If-None-Match: * (create) or If-Match: <ETag> (update), via botocore;
- other stores: write, then read back and compare (best effort).
A lease expires `ttl_s` after its last renewal; the holder renews it every ttl/3 from a
background thread. A lease whose holder process is gone (same host, dead pid) is free at once.
Before each commit the holder calls `check()`: if another token took over, it stops (fencing).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from jobs.errors import JobError
from lake import schema as S
from lake.storage import Lake, one_line, temp_path

LOCK_PATH = f"{S.STATE_DIR}/lock.json"
UTC = dt.timezone.utc


class _Conflict(Exception):
    """The lease object changed since we read it."""


# ----------------------------------------------------------------------------------- stores

class _LocalStore:
    def __init__(self, lake: Lake):
        self.path = lake.path(LOCK_PATH)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def read(self) -> tuple[dict | None, Any]:
        try:
            with open(self.path, "rb") as f:
                body = _parse(f.read())
        except FileNotFoundError:
            return None, None
        return body, (body or {}).get("nonce", "damaged")

    def write(self, body: dict, version: Any) -> Any:
        import fcntl  # noqa: PLC0415 - POSIX only, like the lakes it guards

        fd = os.open(self.path + ".guard", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _, current = self.read()
            if current != version:
                raise _Conflict()
            tmp = temp_path(self.path)
            try:
                with open(tmp, "wb") as f:
                    f.write(_dump(body))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return body["nonce"]
        finally:
            os.close(fd)  # releases the flock


class _S3Store:
    def __init__(self, lake: Lake):
        import boto3  # noqa: PLC0415 - only S3 lakes need it
        from botocore.config import Config  # noqa: PLC0415

        self.bucket, _, prefix = lake.path(LOCK_PATH).partition("/")
        self.key = prefix
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.s3 = boto3.client("s3", endpoint_url=lake.s3_endpoint, region_name=region,
                               config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                             connect_timeout=5, read_timeout=30))

    def read(self) -> tuple[dict | None, Any]:
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except self.s3.exceptions.NoSuchKey:
            return None, None
        return _parse(r["Body"].read()), r["ETag"]

    def write(self, body: dict, version: Any) -> Any:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            r = self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=_dump(body),
                                   ContentType="application/json", **cond)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") \
                    or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise _Conflict() from None
            raise
        return r["ETag"]


class _ReadBackStore:
    """Stores without conditional writes: write, read back, compare (best effort)."""

    def __init__(self, lake: Lake):
        self.lake = lake

    def read(self) -> tuple[dict | None, Any]:
        data = self.lake.read_bytes(LOCK_PATH)
        if data is None:
            return None, None
        body = _parse(data)
        return body, (body or {}).get("nonce", "damaged")

    def write(self, body: dict, version: Any) -> Any:
        if self.read()[1] != version:
            raise _Conflict()
        self.lake.write_bytes(LOCK_PATH, _dump(body))
        time.sleep(0.2)  # let a racing writer land, then see who won
        if self.read()[1] != body["nonce"]:
            raise _Conflict()
        return body["nonce"]


def _store(lake: Lake):
    if isinstance(lake.fs, pafs.LocalFileSystem):
        return _LocalStore(lake)
    if isinstance(lake.fs, pafs.S3FileSystem):
        return _S3Store(lake)
    return _ReadBackStore(lake)


def _parse(data: bytes) -> dict | None:
    """The lease body, or None when damaged (a damaged lease is free: it guards nothing)."""
    try:
        body = json.loads(data)
        int(body["token"])
        return body
    except (ValueError, KeyError, TypeError):
        return None


def _dump(body: dict) -> bytes:
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _holder_alive(body: dict) -> bool:
    """False when the holder ran on this host and its process is gone."""
    if body.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(body.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return int(body.get("pid", 0)) > 0


def _free(body: dict | None, now: float) -> bool:
    return (body is None or body.get("released") or float(body.get("expires", 0)) <= now
            or not _holder_alive(body))


# ------------------------------------------------------------------------------------ lease

class Lease:
    """A held lease. `token` fences this holder's commits: a later holder has a larger one."""

    def __init__(self, lake: Lake, store, body: dict, version, previous: dict | None, ttl_s: float):
        self.lake, self._store, self._body, self._version = lake, store, body, version
        self.previous = previous          # the body this acquisition replaced (for recovery)
        self.ttl_s = ttl_s
        self._mu = threading.Lock()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> int:
        return int(self._body["token"])

    @property
    def owner(self) -> str:
        return str(self._body["owner"])

    @property
    def expires(self) -> float:
        return float(self._body["expires"])

    def _update(self, **changes) -> None:
        with self._mu:
            if self._lost:
                raise JobError(self._lost)
            body = {**self._body, **changes}
            try:
                self._version = self._store.write(body, self._version)
            except _Conflict:
                self._lost = (f"lost the lease of lake {self.lake.url!r} (token {self.token}): "
                              f"another run took it over; this run's work was not committed")
                raise JobError(self._lost) from None
            self._body = body

    def renew(self) -> None:
        t = time.time() + self.ttl_s
        self._update(expires=t, expires_at=_iso(t), nonce=uuid.uuid4().hex)

    def publishing(self, hours) -> None:
        """Declare the hours this run may commit (before the first of them is): whoever takes
        the lease after a crash finishes or cleans exactly these."""
        from jobs import state as st  # noqa: PLC0415
        self._update(publishing=sorted(st.hour_id(h) for h in hours), nonce=uuid.uuid4().hex)

    def check(self) -> None:
        """Fencing: raise JobError unless the stored lease is still ours and unexpired."""
        if self._lost:
            raise JobError(self._lost)
        body, _ = self._store.read()
        now = time.time()
        if body is None or int(body.get("token", -1)) != self.token or body.get("nonce") != self._body["nonce"]:
            who = f"{body.get('owner')} (token {body.get('token')})" if body else "nobody"
            self._lost = (f"lost the lease of lake {self.lake.url!r} (token {self.token}): it is now held by "
                          f"{who}; this run's work was not committed")
            raise JobError(self._lost)
        if float(body["expires"]) <= now:
            raise JobError(f"the lease of lake {self.lake.url!r} (token {self.token}) expired at "
                           f"{_iso(float(body['expires']))}; this run's work was not committed")

    def start_keepalive(self) -> None:
        def loop():
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Exception:  # noqa: BLE001 - check() reports it at the next commit
                    if self._lost:
                        return
        self._thread = threading.Thread(target=loop, name="netmon-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lease up (the token stays in the object; `publishing` stays unless the
        run cleared it, so a failed run's hours are finished by the next holder)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._lost:
            return
        try:
            self._update(released=True, expires=time.time(), nonce=uuid.uuid4().hex)
        except JobError:
            pass


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(lake: Lake, owner: str | None = None, ttl_s: float = 600.0, wait_s: float = 0.0,
            keepalive: bool = True) -> Lease:
    """Take the lake's lease, waiting up to `wait_s` seconds while another run holds it.
    Raises JobError (one line) if it stays held."""
    store = _store(lake)
    owner = owner or default_owner()
    deadline = time.monotonic() + max(wait_s, 0.0)
    while True:
        try:
            body, version = store.read()
        except Exception as exc:  # noqa: BLE001 - storage errors are one line
            raise JobError(f"cannot read the lease of lake {lake.url!r}: {one_line(exc)}") from exc
        now = time.time()
        if _free(body, now):
            # a damaged lease lost its token: restart above any token it can have handed out
            token = int(body["token"]) + 1 if body else (int(now) if version is not None else 1)
            new = {"token": token, "owner": owner,
                   "host": socket.gethostname(), "pid": os.getpid(), "acquired_at": _iso(now),
                   "expires": now + ttl_s, "expires_at": _iso(now + ttl_s), "released": False,
                   "publishing": [], "nonce": uuid.uuid4().hex}
            try:
                new_version = store.write(new, version)
            except _Conflict:
                continue  # someone else changed it: look again
            except Exception as exc:  # noqa: BLE001
                raise JobError(f"cannot write the lease of lake {lake.url!r}: {one_line(exc)}") from exc
            lease = Lease(lake, store, new, new_version, body, ttl_s)
            if keepalive:
                lease.start_keepalive()
            return lease
        if time.monotonic() >= deadline:
            until = _iso(float(body.get("expires", now)))
            raise JobError(f"lake {lake.url!r} is locked by {body.get('owner')} (token {body.get('token')}) "
                           f"until {until}: another cost run is in progress (use --wait SECONDS to wait for it)")
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
