"""Lake storage: turn a lake URL into a filesystem, and write/read/list Parquet on it.

Accepted URLs: a plain path (`./lake`), `file:///abs/path`, `s3://bucket/prefix` (with an
endpoint override for MinIO or moto via `s3_endpoint=` or AWS_ENDPOINT_URL), and any other
fsspec URL (`gs://`, `abfs://`, `memory://`) when fsspec and its backend are installed.
pyarrow's own S3 filesystem is used for S3 so the agent does not pay for s3fs/boto.

Writes are atomic: local files are written beside their target and renamed; object stores
only show an object once its upload completes. A retried write to the same path replaces.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lake import schema as S


class LakeError(Exception):
    """A problem with the lake URL or with reaching the storage behind it."""


@dataclass
class Lake:
    fs: pafs.FileSystem
    root: str         # path of the lake root inside `fs` (no trailing slash)
    url: str          # as the user gave it
    s3_endpoint: str | None = None  # endpoint override of an s3:// lake (conditional writes use it)

    # ----------------------------------------------------------------------- paths
    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if self.root else rel

    def rel(self, full: str) -> str:
        return full[len(self.root) + 1:] if self.root and full.startswith(self.root + "/") else full

    # ----------------------------------------------------------------------- writes
    def write_table(self, rel: str, table: pa.Table, compression: str = "zstd") -> str:
        """Write `table` to `rel` atomically; returns the full path written."""
        full = self.path(rel)
        parent = posixpath.dirname(full)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = posixpath.join(parent, f".{posixpath.basename(full)}.{uuid.uuid4().hex}.tmp")
            try:
                pq.write_table(table, tmp, filesystem=self.fs, compression=compression)
                os.replace(tmp, full)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            pq.write_table(table, full, filesystem=self.fs, compression=compression)
        return full

    def write_bytes(self, rel: str, data: bytes) -> str:
        full = self.path(rel)
        parent = posixpath.dirname(full)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{full}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, full)
        else:
            with self.fs.open_output_stream(full) as f:
                f.write(data)
        return full

    # ----------------------------------------------------------------------- reads
    def read_bytes(self, rel: str) -> bytes | None:
        full = self.path(rel)
        try:
            with self.fs.open_input_stream(full) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _is_not_found(exc):
                return None
            raise

    def read_table(self, rel_or_full: str, columns: list[str] | None = None) -> pa.Table:
        full = rel_or_full if rel_or_full.startswith(self.root) and self.root else self.path(rel_or_full)
        return pq.read_table(full, filesystem=self.fs, columns=columns)

    def list_files(self, rel_dir: str, suffix: str = ".parquet") -> list[pafs.FileInfo]:
        """Every file under `rel_dir` ending in `suffix` (hidden temp files excluded), sorted by path."""
        sel = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(sel)
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
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def delete(self, rel_or_full: str) -> None:
        full = rel_or_full if self.root and rel_or_full.startswith(self.root + "/") else self.path(rel_or_full)
        try:
            self.fs.delete_file(full)
        except FileNotFoundError:
            pass

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


def open_lake(url: str, s3_endpoint: str | None = None, create_bucket: bool = True) -> Lake:
    """Resolve a lake URL to a filesystem. Raises LakeError for unknown schemes or bad URLs."""
    if not url:
        raise LakeError("no lake URL given")
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = parsed.path if scheme == "file" else url
        root = os.path.abspath(os.path.expanduser(path)).rstrip("/")
        os.makedirs(root, exist_ok=True)
        return Lake(pafs.LocalFileSystem(), root, url)
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
        kwargs["request_timeout"] = 30
        fs = pafs.S3FileSystem(**kwargs)
        root = f"{bucket}/{parsed.path.strip('/')}".rstrip("/")
        lake = Lake(fs, root, url, endpoint)
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
    return Lake(PyFileSystem(FSSpecHandler(ffs)), root.rstrip("/"), url)


def _ensure_bucket(fs: pafs.S3FileSystem, bucket: str) -> None:
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            fs.create_dir(bucket)
    except OSError:
        # Unreachable storage is not fatal here: writers spool and retry.
        pass
