"""The input's files: what identifies each one, listing, grouping, naming them in errors.

An :class:`InputFile` is a file, or a piece of one (a run of row groups, or a
row range of one row group, see :mod:`~dask_batchinfer.io.pieces`), with what
identifies its content (size and version) and its hive folder keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import pyarrow as pa

from dask_batchinfer.errors import InputError
from dask_batchinfer.io.layout import is_visible
from dask_batchinfer.io.retry import retry

__all__ = [
    "FINGERPRINTS",
    "READ_TIMES",
    "InputFile",
    "file_version",
    "footer_digest",
    "group_files",
    "list_parquet_files",
    "reading",
    "with_content_versions",
]


#: ``DataFrame.attrs`` key of a read partition: (start, end, worker) of its read
#: (epoch seconds, the worker's address or None).
READ_TIMES = "dask_batchinfer_read"


@dataclasses.dataclass(frozen=True)
class InputFile:
    """An input file and what identifies its content."""

    path: str
    relpath: str
    size: int
    version: str  # ETag on S3, modification time on local disk
    #: The row groups of this piece of the file (None: the whole file).
    row_groups: tuple[int, ...] | None = None
    #: A row range ``[start, stop)`` of its one row group (a huge row group split).
    rows: tuple[int, int] | None = None
    #: Hive folder keys of the file (``date=2026-11-29/``) as ``(name, value)`` pairs.
    keys: tuple[tuple[str, Any], ...] = ()

    @property
    def piece(self) -> str:
        """``""`` for a whole file, else which part of it: ``rg3-5`` or ``rg3-rows0-99999``."""
        if self.row_groups is None:
            return ""
        first, last = self.row_groups[0], self.row_groups[-1]
        groups = f"rg{first}" if first == last else f"rg{first}-{last}"
        return groups if self.rows is None else f"{groups}-rows{self.rows[0]}-{self.rows[1] - 1}"


def file_version(info: Mapping[str, Any]) -> str:
    """What identifies a file's content in a listing: its ETag (S3) or modification time."""
    for key in ("ETag", "etag", "version_id", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def list_parquet_files(fs: fsspec.AbstractFileSystem, root: str) -> list[InputFile]:
    """Parquet files under ``root`` (or ``root`` itself), sorted; hidden ones skipped."""
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    if retry(lambda: fs.isfile(root), what=f"checking {root}"):
        info = retry(lambda: fs.info(root), what=f"reading {root}")
        size = int(info.get("size", 0))
        return [InputFile(root, posixpath.basename(root), size, file_version(info))]
    if not retry(lambda: fs.isdir(root), what=f"checking {root}"):
        raise InputError(f"input {root!r} does not exist")
    found = retry(lambda: fs.find(root, detail=True), what=f"listing {root}")
    files = []
    for path, info in sorted(found.items()):
        relpath = posixpath.relpath(path, root)
        if path.endswith(".parquet") and is_visible(relpath):
            files.append(InputFile(path, relpath, int(info.get("size", 0)), file_version(info)))
    if not files:
        raise InputError(f"input {root!r} holds no .parquet files")
    return files


#: ``run_job(fingerprint=...)``: what identifies an input file's content.
FINGERPRINTS = ("metadata", "content")


def footer_digest(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """SHA-256 of a Parquet file's footer: schema, row groups, offsets and statistics.

    Two small reads whatever the file's size; a rewrite with other values changes
    the statistics and the offsets, so the digest, even when size and mtime stay.
    """
    import hashlib

    def read() -> bytes:
        with fs.open(path, "rb") as f:
            f.seek(-8, 2)
            tail = f.read(8)
            if tail[4:] != b"PAR1":
                return tail  # not Parquet: reading it fails later, naming it
            length = int.from_bytes(tail[:4], "little")
            f.seek(-(8 + length), 2)
            return f.read(length)

    with reading(path):
        footer = retry(read, what=f"reading the footer of {path}")
    return "sha256:" + hashlib.sha256(footer).hexdigest()


def with_content_versions(fs: fsspec.AbstractFileSystem, files: list[InputFile]) -> list[InputFile]:
    """``files`` identified by their footers' digests instead of modification times/ETags."""
    return [dataclasses.replace(f, version=footer_digest(fs, f.path)) for f in files]


def group_files(files: list[InputFile], target_bytes: int) -> list[list[InputFile]]:
    """Consecutive files grouped up to ``target_bytes`` each: many tiny files, few partitions.

    A file at least as large as the target is a partition of its own.
    """
    groups: list[list[InputFile]] = []
    size = 0
    for f in files:
        if groups and size + f.size <= target_bytes:
            groups[-1].append(f)
            size += f.size
        else:
            groups.append([f])
            size = f.size
    return groups


@contextlib.contextmanager
def reading(path: str, what: str = "input file") -> Iterator[None]:
    """Name ``path`` in the errors of reading it, and tell a bad file from an outage.

    A file that is not valid Parquet raises :class:`InputError`; storage failures
    (permissions, a missing file, retries spent) keep their own ``OSError`` type,
    so that the CLI exits with "job failed", not "usage error".
    """
    try:
        yield
    except pa.ArrowException as err:
        if isinstance(err, OSError):
            _raise_storage_error(err, path)
        raise InputError(f"cannot read {what} {path!r}: {type(err).__name__}: {err}") from err
    except OSError as err:
        _raise_storage_error(err, path)


def _raise_storage_error(err: OSError, path: str) -> None:
    named = _storage_error(err, path)
    if named is err:  # already names the file: `raise err from err` would make it its own
        raise err  # cause, and distributed loops forever walking the chain (a hung job)
    raise named from err


def _storage_error(err: OSError, path: str) -> OSError:
    if path in str(err):
        return err
    message = f"reading {path!r}: {err}"
    try:
        return type(err)(err.errno, message) if err.errno is not None else type(err)(message)
    except TypeError:  # an OSError subclass with another signature
        return OSError(message)
