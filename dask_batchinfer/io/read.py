"""Read a job's input, and read a job's output through its manifest.

Input Parquet paths are read as one partition per file: a partition's
identity (its file, size and version) stays stable from run to run, which is
what resume and incremental runs key on, and errors can name the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import posixpath
import time
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dask_batchinfer import _config, secrets
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.fs import absolute_url, url_to_fs
from dask_batchinfer.io.layout import MANIFEST, is_visible
from dask_batchinfer.io.retry import retry
from dask_batchinfer.worker import worker_address

__all__ = [
    "FINGERPRINTS",
    "READ_TIMES",
    "InputFile",
    "footer_digest",
    "group_files",
    "list_parquet_files",
    "open_source",
    "read_output",
    "read_parquet_files",
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


def _version(info: Mapping[str, Any]) -> str:
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
        return [InputFile(root, posixpath.basename(root), int(info.get("size", 0)), _version(info))]
    if not retry(lambda: fs.isdir(root), what=f"checking {root}"):
        raise InputError(f"input {root!r} does not exist")
    found = retry(lambda: fs.find(root, detail=True), what=f"listing {root}")
    files = []
    for path, info in sorted(found.items()):
        relpath = posixpath.relpath(path, root)
        if path.endswith(".parquet") and is_visible(relpath):
            files.append(InputFile(path, relpath, int(info.get("size", 0)), _version(info)))
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


def _read_files(
    paths: list[str], *, protocol: str, storage_options: Mapping[str, Any]
) -> pd.DataFrame:
    # Local files through Arrow's own filesystem (native, threaded reads); others through fsspec.
    started = time.time()
    fs = (
        None
        if protocol in ("file", "local")
        else fsspec.filesystem(protocol, **secrets.resolve(storage_options))
    )
    tables = [_read_file(path, fs) for path in paths]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    frame = table.to_pandas(types_mapper=arrow_types)
    frame.attrs[READ_TIMES] = (started, time.time(), worker_address())  # for the job's timeline
    return frame


def _read_file(path: str, fs: fsspec.AbstractFileSystem | None) -> pa.Table:
    with reading(path):
        return retry(functools.partial(pq.read_table, path, filesystem=fs), what=f"reading {path}")


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
            raise _storage_error(err, path) from err
        raise InputError(f"cannot read {what} {path!r}: {type(err).__name__}: {err}") from err
    except OSError as err:
        raise _storage_error(err, path) from err


def _storage_error(err: OSError, path: str) -> OSError:
    if path in str(err):
        return err
    message = f"reading {path!r}: {err}"
    try:
        return type(err)(err.errno, message) if err.errno is not None else type(err)(message)
    except TypeError:  # an OSError subclass with another signature
        return OSError(message)


def arrow_types(kind: pa.DataType) -> pd.ArrowDtype | None:
    """Keep binary and nested columns as Arrow-backed pandas columns.

    As plain ``object`` columns, Dask would try to turn them into strings
    (``dataframe.convert-string``) and fail on bytes that are not UTF-8.
    """
    nested = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_struct(kind)
    binary = (
        pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
    )  # fmt: skip
    return pd.ArrowDtype(kind) if nested or binary or pa.types.is_fixed_size_list(kind) else None


def read_parquet_files(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    task_options: Mapping[str, Any] | None = None,
    fingerprint: str = "metadata",
):
    """A Dask DataFrame with one partition per Parquet file under ``url``.

    Consecutive files smaller than ``batchinfer.partition-size`` (16 MiB) are
    read together as one partition, so a folder of many tiny files does not
    become many tiny tasks.

    ``fingerprint="content"`` identifies files by a digest of their Parquet
    footer (:func:`footer_digest`) instead of their modification time or ETag.

    ``task_options`` replace ``storage_options`` inside the read tasks (e.g.
    with credentials swapped for a reference, see :mod:`dask_batchinfer.secrets`).

    Returns
    -------
    (dask.dataframe.DataFrame, list of list of InputFile)
        The frame and the files behind each partition.
    """
    import dask.dataframe as dd
    from dask.utils import parse_bytes

    options = dict(storage_options or {})
    fs, root = fsspec.core.url_to_fs(url, **options)
    files = list_parquet_files(fs, root)
    if fingerprint == "content":
        files = with_content_versions(fs, files)
    with reading(files[0].path, "the schema of"):
        schema = retry(
            lambda: pq.read_schema(files[0].path, filesystem=fs), what=f"reading {files[0].path}"
        )
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    # Group only as far as keeps enough partitions for the cluster to share the work.
    spread = sum(f.size for f in files) // min(len(files), int(_config.get("min-partitions")))
    groups = group_files(files, min(parse_bytes(_config.get("partition-size")), max(1, spread)))
    ddf = dd.from_map(
        _read_files,
        [[f.path for f in group] for group in groups],
        meta=schema.empty_table().to_pandas(types_mapper=arrow_types),
        label="read-parquet-file",
        protocol=protocol,
        storage_options=dict(task_options) if task_options is not None else options,
        enforce_metadata=False,
    )
    return ddf, groups


def open_source(
    source: Any,
    storage_options: Mapping[str, Any],
    task_options: Mapping[str, Any],
    fingerprint: str = "metadata",
) -> tuple[Any, list[list[InputFile]] | None]:
    """The job's input as a Dask DataFrame, and the files behind each partition (or None).

    ``source`` is a Dask DataFrame (used as it is) or a Parquet path.
    """
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        return source, None
    if isinstance(source, (str, os.PathLike)):
        return read_parquet_files(absolute_url(os.fspath(source)), storage_options,
                                  task_options=task_options, fingerprint=fingerprint)  # fmt: skip
    raise InputError(
        f"source must be a dask DataFrame or a Parquet path (local or s3://), got "
        f"{type(source).__name__}"
    )


def read_output(url: str, storage_options: Mapping[str, Any] | None = None):
    """Read a committed output: exactly the files its ``_SUCCESS`` manifest lists.

    Hive key columns (``partition_on``) come back as columns.

    Raises
    ------
    FileNotFoundError
        When the folder has no ``_SUCCESS`` manifest (the job has not finished).

    Examples
    --------
    >>> scores = dbi.read_output("s3://shop/scores/2026-11-28/")  # doctest: +SKIP
    """
    import dask.dataframe as dd

    options = dict(storage_options or {})
    fs, root = url_to_fs(url, options)
    manifest_path = posixpath.join(root, MANIFEST)
    try:
        with fs.open(manifest_path, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{url} has no {MANIFEST} manifest: the job has not committed (yet)"
        ) from err
    files = [fs.unstrip_protocol(posixpath.join(root, f["path"])) for f in manifest["files"]]
    return dd.read_parquet(
        files,
        storage_options=options,
        dataset={"partitioning": {"flavor": "hive"}, "partition_base_dir": root},
    )
