"""Lake storage: turn a lake URL into a filesystem, and write/read/list Parquet on it.

Accepted URLs: a plain path (`./lake`), `file:///abs/path`, `s3://bucket/prefix` (with an
endpoint override for MinIO or moto via `s3_endpoint=` or AWS_ENDPOINT_URL), and any other
fsspec URL (`gs://`, `abfs://`, `memory://`) when fsspec and its backend are installed.
pyarrow's own S3 filesystem is used for S3 so the agent does not pay for s3fs/boto.

Writes are atomic: local files are written beside their target (a hidden
`.NAME.<host>-<pid>-<id>.tmp`, removed on any failure) and renamed; object stores only show an
object once its upload completes. A retried write to the same path replaces. A temporary left by
a killed writer (kill -9 between write and rename) names its writer, so `sweep_temporaries`
removes it once that process is gone.

Retries: a Lake opened with `attempts > 1` (the cost job: `job_lake`) retries each storage
operation that fails transiently (throttling such as 503 SlowDown, connection resets, timeouts,
I/O errors) with exponential backoff, then raises StorageError; errors that retrying cannot fix
(not found, permission denied, no space left, no such bucket) are raised at once. The agent
opens its lake with one attempt: it spools on the first failure instead of blocking its loop.
"""
from __future__ import annotations

import errno
import os
import posixpath
import random
import re
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lake import schema as S


_HOST = socket.gethostname().replace("-", "_").replace(".", "_")
_TEMP = re.compile(r"^\.?.+\.(?P<host>[^.]+)-(?P<pid>\d+)-[0-9a-f]+\.tmp$")
#: a temporary this old is stale whoever wrote it (a writer on another host, a reused pid)
STALE_TEMP_S = 3600.0


def temp_path(full: str) -> str:
    """A hidden temporary beside `full`, naming this host and process."""
    parent, base = posixpath.split(full)
    return posixpath.join(parent, f".{base}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _writer_gone(name: str, mtime: float, now: float) -> bool:
    m = _TEMP.match(name)
    if m is None:
        return False  # not one of ours
    if now - mtime > STALE_TEMP_S:
        return True
    if m["host"] != _HOST:
        return False  # its writer may be alive on its own host
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return False


def _crash_point(rel: str) -> None:
    """Failpoint of the fault tests (jobs/faults.py): NETMON_FAULT_POINT=mid-write:<prefix>
    kills this process after the temporary of a write under <prefix> is written, before it is
    renamed."""
    spec = os.environ.get("NETMON_FAULT_POINT", "")
    if spec.startswith("mid-write:") and rel.startswith(spec[len("mid-write:"):]):
        os.kill(os.getpid(), signal.SIGKILL)


class LakeError(Exception):
    """A problem with the lake URL or with reaching the storage behind it."""


class StorageError(LakeError, OSError):
    """A storage operation that kept failing after its retries (an OSError, so callers that
    handle I/O errors handle it too)."""


#: Storage errors that retrying cannot fix.
_PERMANENT_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                    errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG}
_PERMANENT_TEXT = ("ACCESS_DENIED", "AccessDenied", "NoSuchBucket", "NO_SUCH_BUCKET", "InvalidAccessKeyId",
                   "SignatureDoesNotMatch", "Path does not exist", "NoSuchKey", "No space left", "Read-only file system")


def is_transient(exc: BaseException) -> bool:
    """Whether a failed storage call may succeed if tried again (throttling, resets, timeouts, EIO)."""
    if not isinstance(exc, OSError) or isinstance(exc, (FileNotFoundError, PermissionError, StorageError)):
        return False
    if exc.errno in _PERMANENT_ERRNO:
        return False
    text = str(exc)
    return not any(t in text for t in _PERMANENT_TEXT)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a storage call is retried (`attempts` 1: never)."""
    attempts: int = 1
    backoff_s: float = 0.5      # first wait; doubled after each failure, with jitter
    max_backoff_s: float = 10.0

    @classmethod
    def for_job(cls) -> "RetryPolicy":
        """The cost job's policy: NETMON_STORAGE_ATTEMPTS (default 6) and NETMON_STORAGE_BACKOFF
        seconds (default 0.5): about 15 s of retrying, on top of the S3 client's own 3 attempts."""
        try:
            attempts = int(os.environ.get("NETMON_STORAGE_ATTEMPTS") or 6)
            backoff = float(os.environ.get("NETMON_STORAGE_BACKOFF") or 0.5)
        except ValueError as exc:
            raise LakeError(f"NETMON_STORAGE_ATTEMPTS/NETMON_STORAGE_BACKOFF: {exc}") from None
        if attempts < 1 or backoff < 0:
            raise LakeError("NETMON_STORAGE_ATTEMPTS must be >= 1 and NETMON_STORAGE_BACKOFF >= 0")
        return cls(attempts, backoff)

    def call(self, fn, what: str):
        """fn(), retried on transient errors; after the last attempt raises StorageError naming
        `what` (a path or an operation) and the cause, as one line."""
        t0 = time.monotonic()
        for i in range(self.attempts):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_transient(exc) or self.attempts == 1:
                    raise
                if i == self.attempts - 1:
                    raise StorageError(f"{what}: {one_line(exc)} (failed {self.attempts} times in "
                                       f"{time.monotonic() - t0:.0f}s)") from exc
                wait = min(self.max_backoff_s, self.backoff_s * 2 ** i)
                time.sleep(wait * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class Lake:
    fs: pafs.FileSystem
    root: str         # path of the lake root inside `fs` (no trailing slash)
    url: str          # as the user gave it
    retry: RetryPolicy = RetryPolicy()
    s3_endpoint: str | None = None  # endpoint override of an s3:// lake (conditional writes use it)

    def call(self, fn, what: str):
        """fn() under this lake's retry policy (see RetryPolicy.call)."""
        return self.retry.call(fn, what)

    # ----------------------------------------------------------------------- paths
    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if self.root else rel

    def rel(self, full: str) -> str:
        return full[len(self.root) + 1:] if self.root and full.startswith(self.root + "/") else full

    # ----------------------------------------------------------------------- writes
    def write_table(self, rel: str, table: pa.Table, compression: str = "zstd") -> str:
        """Write `table` to `rel` atomically; returns the full path written."""
        def write(target):
            pq.write_table(table, target, filesystem=self.fs, compression=compression)
        return self.call(lambda: self._write(rel, write), f"writing {rel}")

    def write_bytes(self, rel: str, data: bytes) -> str:
        def write(target):
            with self.fs.open_output_stream(target) as f:
                f.write(data)
        return self.call(lambda: self._write(rel, write), f"writing {rel}")

    def _write(self, rel: str, write) -> str:
        """write(target) to a hidden temporary beside `rel` and rename it (local disk), or
        straight to `rel` (object stores publish an object only when its upload completes).
        The temporary never outlives a failure (a full disk, a permission error)."""
        full = self.path(rel)
        parent = posixpath.dirname(full)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        if not isinstance(self.fs, pafs.LocalFileSystem):
            write(full)
            return full
        tmp = temp_path(full)
        try:
            write(tmp)
            _crash_point(rel)
            os.replace(tmp, full)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return full

    # ----------------------------------------------------------------------- reads
    def read_bytes(self, rel: str) -> bytes | None:
        """The whole object, or None if it does not exist."""
        full = self.path(rel)

        def read():
            with self.fs.open_input_stream(full) as f:
                return f.read()
        try:
            return self.call(read, f"reading {rel}")
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not isinstance(exc, StorageError) and _is_not_found(exc):
                return None
            raise

    def read_table(self, rel_or_full: str, columns: list[str] | None = None) -> pa.Table:
        full = rel_or_full if rel_or_full.startswith(self.root) and self.root else self.path(rel_or_full)
        return self.call(lambda: pq.read_table(full, filesystem=self.fs, columns=columns), f"reading {self.rel(full)}")

    def list_files(self, rel_dir: str, suffix: str = ".parquet") -> list[pafs.FileInfo]:
        """Every file under `rel_dir` ending in `suffix` (hidden temp files excluded), sorted by path."""
        sel = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        try:
            infos = self.call(lambda: self.fs.get_file_info(sel), f"listing {rel_dir}/")
        except FileNotFoundError:
            return []
        out = [
            i for i in infos
            if i.type == pafs.FileType.File
            and i.path.endswith(suffix)
            and not posixpath.basename(i.path).startswith(".")
        ]
        return sorted(out, key=lambda i: i.path)

    def exists(self, rel: str) -> bool:
        info = self.call(lambda: self.fs.get_file_info(self.path(rel)), f"looking up {rel}")
        return info.type != pafs.FileType.NotFound

    def delete(self, rel_or_full: str) -> None:
        full = rel_or_full if self.root and rel_or_full.startswith(self.root + "/") else self.path(rel_or_full)
        try:
            self.call(lambda: self.fs.delete_file(full), f"deleting {self.rel(full)}")
        except FileNotFoundError:
            pass

    def copy(self, src_rel: str, dest_rel: str) -> None:
        """Copy one object (server-side on object stores); FileNotFoundError if `src_rel` is gone."""
        dest = self.path(dest_rel)

        def copy():
            self.fs.create_dir(posixpath.dirname(dest), recursive=True)
            self.fs.copy_file(self.path(src_rel), dest)
        self.call(copy, f"copying {src_rel} to {dest_rel}")

    def sweep_temporaries(self, rel_dirs) -> list[str]:
        """Remove the temporaries killed writers left under `rel_dirs` (recursively; a local
        lake only: object stores have none). Returns the lake paths removed."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return []
        now, removed = time.time(), []
        for rel_dir in rel_dirs:
            for parent, _, names in os.walk(self.path(rel_dir)):
                for name in names:
                    if not name.endswith(".tmp"):
                        continue
                    full = os.path.join(parent, name)
                    try:
                        if _writer_gone(name, os.stat(full).st_mtime, now):
                            os.unlink(full)
                            removed.append(self.rel(full))
                    except FileNotFoundError:
                        pass
        return sorted(removed)

    def check_writable(self) -> None:
        """Create the root and round-trip a marker object, raising LakeError with the cause."""
        probe = f"{S.STATE_DIR}/.probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except Exception as exc:  # noqa: BLE001 - surfaced as one clear line
            raise LakeError(f"lake {self.url!r} is not writable: {one_line(exc)}") from exc


def _is_not_found(exc: OSError) -> bool:
    msg = str(exc)
    return "NoSuchKey" in msg or "not found" in msg.lower() or "Path does not exist" in msg


def one_line(exc: BaseException, limit: int | None = 300) -> str:
    """An exception as one line (errors print as one `error: ...` line, never a traceback)."""
    text = " ".join(str(exc).split())
    return (text[:limit] if limit else text) or type(exc).__name__


def job_lake(url: str, s3_endpoint: str | None = None, create_bucket: bool = False) -> Lake:
    """The lake as the cost job opens it: storage calls retried (RetryPolicy.for_job)."""
    return open_lake(url, s3_endpoint, create_bucket, retry=RetryPolicy.for_job())


def open_lake(url: str, s3_endpoint: str | None = None, create_bucket: bool = True,
              retry: RetryPolicy | None = None) -> Lake:
    """Resolve a lake URL to a filesystem. Raises LakeError for unknown schemes or bad URLs.
    `retry`: the policy for its storage calls (default: one attempt)."""
    retry = retry or RetryPolicy()
    if not url:
        raise LakeError("no lake URL given")
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = parsed.path if scheme == "file" else url
        root = os.path.abspath(os.path.expanduser(path)).rstrip("/")
        os.makedirs(root, exist_ok=True)
        return Lake(pafs.LocalFileSystem(), root, url, retry)
    if scheme in ("s3", "s3a"):
        bucket = parsed.netloc
        if not 3 <= len(bucket) <= 63:
            raise LakeError(f"invalid S3 bucket name {bucket!r} in {url!r}: buckets have 3-63 characters")
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {"allow_bucket_creation": create_bucket}
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
            kwargs["endpoint_override"] = ep.netloc
            kwargs["scheme"] = ep.scheme or "http"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        # Bounded retries so an outage surfaces as an error the caller can spool on.
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
        kwargs["connect_timeout"] = 5
        kwargs["request_timeout"] = _env_seconds("NETMON_S3_TIMEOUT", 30.0)
        fs = pafs.S3FileSystem(**kwargs)
        root = f"{bucket}/{parsed.path.strip('/')}".rstrip("/")
        lake = Lake(fs, root, url, retry, endpoint)
        if create_bucket:
            _ensure_bucket(fs, bucket)
        return lake
    # Any other scheme goes through fsspec, if the user installed a backend for it.
    try:
        import fsspec  # noqa: PLC0415 - optional, heavy
        from pyarrow.fs import FSSpecHandler, PyFileSystem  # noqa: PLC0415
    except ImportError as exc:
        raise LakeError(f"unsupported lake URL scheme {scheme!r} in {url!r} (install fsspec and its backend)") from exc
    try:
        ffs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise LakeError(f"unsupported lake URL scheme {scheme!r} in {url!r}: {one_line(exc)}") from exc
    return Lake(PyFileSystem(FSSpecHandler(ffs)), root.rstrip("/"), url, retry)


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment (NETMON_S3_TIMEOUT: how long an S3
    request may go without an answer before it is abandoned and retried)."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise LakeError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def _ensure_bucket(fs: pafs.S3FileSystem, bucket: str) -> None:
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            fs.create_dir(bucket)
    except OSError:
        # Unreachable storage is not fatal here: writers spool and retry.
        pass
