"""Read a job's input, and read a job's output through its manifest.

Input Parquet paths are read in partitions planned by
:mod:`~dask_batchinfer.io.pieces` (small files grouped, large files split at
row groups): a partition's identity (its files, their size and version, the
row groups) stays stable from run to run, which is what resume and
incremental runs key on, and errors can name the file.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dask_batchinfer import _config, secrets
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.files import read_files_source
from dask_batchinfer.io.fs import absolute_url, url_to_fs
from dask_batchinfer.io.inputs import (
    FINGERPRINTS,
    READ_TIMES,
    TEXT_FORMATS,
    InputFile,
    arrow_types,
    footer_digest,
    group_files,
    grouping_bytes,
    list_parquet_files,
    reading,
    source_meta,
    text_format,
    with_content_versions,
)
from dask_batchinfer.io.layout import MANIFEST
from dask_batchinfer.io.partitioned import PieceArgs
from dask_batchinfer.io.retry import retry
from dask_batchinfer.io.text import read_text_source
from dask_batchinfer.worker.cache import LRU
from dask_batchinfer.worker.process import worker_address

__all__ = [
    "FINGERPRINTS",
    "FORMATS",
    "READ_TIMES",
    "InputFile",
    "input_format",
    "footer_digest",
    "group_files",
    "list_parquet_files",
    "open_source",
    "read_output",
    "read_parquet_files",
]


logger = logging.getLogger(__name__)

#: A piece of input as its read task gets it: (path, row groups, row range, hive keys,
#: version: the ETag or modification time that identifies the file's content).
Piece = tuple[str, tuple[int, ...] | None, tuple[int, int] | None, tuple[tuple[str, Any], ...], str]

#: Parsed Parquet footers kept per process, by (path, version): a partition that is some
#: row groups of a big file reads and parses the file's footer once per worker, not once
#: per partition (1,000 row groups: ~50 ms a parse). Only pieces of files are kept.
FOOTERS = 16
_footers: LRU[tuple[str, str], pq.FileMetaData] = LRU(lambda: FOOTERS)
_footers_lock = threading.Lock()
_footer_counts = {"parsed": 0, "reused": 0}


def footer_counts() -> dict[str, int]:
    """How many footers this process parsed, and how many reads reused one."""
    with _footers_lock:
        return dict(_footer_counts)


def _footer(path: str, version: str) -> pq.FileMetaData | None:
    with _footers_lock:
        found = _footers.get((path, version))
        _footer_counts["reused" if found is not None else "parsed"] += 1
        return found


def _read_files(
    pieces: list[Piece],
    *,
    protocol: str,
    storage_options: Mapping[str, Any],
    columns: list[str] | None = None,
    filters: Any = None,
    key_types: Mapping[str, pa.DataType] | None = None,
) -> pd.DataFrame:
    # Local files through Arrow's own filesystem (native, threaded reads); others through fsspec.
    started = time.time()
    fs = (
        None
        if protocol in ("file", "local")
        else fsspec.filesystem(protocol, **secrets.resolve(storage_options))
    )
    expression = pq.filters_to_expression(filters) if filters else None
    wanted = None if columns is None else list(dict.fromkeys([*columns, *filter_columns(filters)]))
    tables = []
    for piece in pieces:
        table = _read_piece(piece, fs, wanted, key_types or {})
        if expression is not None:
            with reading(piece[0]):
                table = table.filter(expression)
        complete = columns is not None and set(columns) <= set(table.column_names)
        tables.append(table.select(columns) if complete else table)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    frame = table.to_pandas(types_mapper=arrow_types)
    frame.attrs[READ_TIMES] = (started, time.time(), worker_address())  # for the job's timeline
    return frame


def _read_piece(
    piece: Piece,
    fs: fsspec.AbstractFileSystem | None,
    columns: list[str] | None,
    key_types: Mapping[str, pa.DataType],
) -> pa.Table:
    """One file, or some of its row groups (or rows), with its hive keys as columns."""
    path, row_groups, rows, keys, version = piece
    names = {k for k, _ in keys}
    stored = None if columns is None else [c for c in columns if c not in names]

    def read() -> pa.Table:
        footer = _footer(path, version) if row_groups is not None and version else None
        with pq.ParquetFile(path, filesystem=fs, metadata=footer) as parquet:
            if footer is None and row_groups is not None and version:
                with _footers_lock:
                    _footers.put((path, version), parquet.metadata)
            names = parquet.schema_arrow.names
            # A file without a column the job reads: read all of its columns, so that the
            # stage's error lists what the file has (schema drift), as without projection.
            wanted = stored if stored is None or set(stored) <= set(names) else None
            if row_groups is None:
                return parquet.read(columns=wanted)
            return parquet.read_row_groups(list(row_groups), columns=wanted)

    with reading(path):
        table = retry(read, what=f"reading {path}")
    if rows is not None:
        table = table.slice(rows[0], rows[1] - rows[0])
    for name, value in keys:
        if columns is None or name in columns:
            kind = key_types.get(name)
            table = table.append_column(name, pa.array([value] * len(table), type=kind))
    return table


def filter_columns(filters: Any) -> list[str]:
    """The columns DNF ``filters`` name, in order."""
    if not filters:
        return []
    nested = isinstance(filters[0], (list, tuple)) and isinstance(filters[0][0], (list, tuple))
    clauses = filters if nested else [filters]
    return list(dict.fromkeys(str(clause[0]) for conjunction in clauses for clause in conjunction))


def read_parquet_files(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    task_options: Mapping[str, Any] | None = None,
    fingerprint: str = "metadata",
    columns: Sequence[str] | None = None,
    filters: Any = None,
):
    """A Dask DataFrame of the Parquet files under ``url``, in partitions of
    ``batchinfer.partition-size`` (see :mod:`~dask_batchinfer.io.pieces`).

    Large files are split at row-group boundaries; consecutive small files are
    read together, so a folder of many tiny files does not become many tiny
    tasks. Hive folder keys (``date=2026-11-29/``) are columns.

    ``columns`` are the only columns read (None: all); ``filters`` (pyarrow's
    DNF) prune hive folders and row groups and then drop the rows that do not
    match. ``fingerprint="content"`` identifies files by a digest of their
    Parquet footer (:func:`footer_digest`) instead of their modification time
    or ETag. ``task_options`` replace ``storage_options`` inside the read tasks
    (e.g. with credentials swapped for a reference, see :mod:`dask_batchinfer.secrets`).

    Returns
    -------
    (dask.dataframe.DataFrame, list of list of InputFile)
        The frame and the pieces of files behind each partition.
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    import dask.dataframe as dd

    from dask_batchinfer.io.pieces import plan_parquet, read_target

    options = dict(storage_options or {})
    fs, root = fsspec.core.url_to_fs(url, **options)
    files = list_parquet_files(fs, root)
    if fingerprint == "content":
        files = with_content_versions(fs, files)
    target = read_target(_config.get("partition-size"))
    # Group small files only as far as keeps enough partitions for the cluster to share the work.
    with reading(files[0].path, "the schema of"):
        schema, groups = plan_parquet(
            fs,
            root.rstrip("/"),
            files,
            target,
            filters,
            columns,
            group_bytes=grouping_bytes(
                files, target.nbytes or 1, int(_config.get("min-partitions"))
            ),
        )
    if not groups:
        raise InputError(f"filters={filters!r} match no file or row group under {url!r}")
    names = schema.names if columns is None else [c for c in columns if c in schema.names]
    meta = source_meta(schema, names, files[0].path)
    schema = pa.schema([schema.field(n) for n in names])
    keys = {k: schema.field(k).type for f in groups.files for k, _ in f.keys if k in names}
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    ddf = dd.from_map(
        _read_files,
        PieceArgs(groups),
        meta=meta,
        label="read-parquet-file",
        protocol=protocol,
        storage_options=dict(task_options) if task_options is not None else options,
        columns=None if columns is None else names,
        filters=filters or None,
        key_types=keys,
        enforce_metadata=False,
    )
    return ddf, groups


def open_source(
    source: Any,
    storage_options: Mapping[str, Any],
    task_options: Mapping[str, Any],
    fingerprint: str = "metadata",
    *,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    format: str | None = None,
    on_error: str = "raise",
) -> tuple[Any, list[list[InputFile]] | None]:
    """The job's input as a Dask DataFrame, and the files behind each partition (or None).

    ``source`` is a Dask DataFrame (used as it is) or a Parquet path, of
    which only ``columns`` are read (None: all), and only the rows ``filters``
    keep; or CSV, TSV or JSON Lines files (``format="csv"``, ``"tsv"``,
    ``"jsonl"``, or by their names: see :mod:`~dask_batchinfer.io.text`), of
    which only ``columns`` are read; or files read as rows (``format="files"``,
    or a glob or file of another kind: see :func:`input_format`).
    ``on_error="quarantine"`` sets aside CSV lines that do not parse (see
    :func:`~dask_batchinfer.io.text.read_text_files`).
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        if filters:
            raise InputError(
                "filters= applies to a Parquet path; filter a dask DataFrame before passing it "
                "(or pass filters to dask.dataframe.read_parquet)"
            )
        _check_names(source)
        return source, None
    if isinstance(source, (str, os.PathLike)):
        url = absolute_url(os.fspath(source))
        kind = format or input_format(url)
        if filters and kind != "parquet":
            raise InputError(
                f"filters= applies to Parquet inputs, not to {kind} input {url!r}; "
                f"filter in preprocess instead"
            )
        if kind == "files":
            return read_files_source(
                url, storage_options, task_options=task_options, fingerprint=fingerprint
            )
        if kind in TEXT_FORMATS:
            return read_text_source(
                url,
                storage_options,
                task_options=task_options,
                fingerprint=fingerprint,
                format=kind,
                columns=columns,
                on_error=on_error,
            )
        return read_parquet_files(
            url,
            storage_options,
            task_options=task_options,
            fingerprint=fingerprint,
            columns=columns,
            filters=filters,
        )
    raise InputError(
        f"source must be a dask DataFrame or a Parquet path (local or s3://), got "
        f"{type(source).__name__}"
    )


def _check_names(ddf: Any) -> None:
    """Say once that a ``dd.read_parquet`` frame cannot resume: resume keys a dask
    DataFrame's partitions by their names, and read_parquet draws new ones in every
    process (dask 2026.8; ``dd.read_csv``'s are stable and change with the files)."""
    if any("ReadParquet" in type(e).__name__ for e in ddf.expr.walk()):
        logger.warning(
            "a dask DataFrame source from dask.dataframe.read_parquet: resume needs stable "
            "partition names and read_parquet makes new ones in every process, so a new run "
            "recomputes every partition; pass the path instead (run_job('s3://.../', ...))"
        )


#: ``run_job(format=...)``.
FORMATS = ("parquet", "files", *TEXT_FORMATS)


def input_format(url: str) -> str:
    """``"parquet"`` for a folder, a ``.parquet`` file or a glob of them; ``"csv"``,
    ``"tsv"`` or ``"jsonl"`` for a file or glob named so (``.csv``, ``.tsv``,
    ``.jsonl``, ``.ndjson``, each optionally ``.gz``, ``.bz2``, ``.zst``); else
    ``"files"`` (a glob such as ``scans/**/*.png``, or one file of another kind)."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    text = text_format(name)
    if text is not None:
        return text
    if any(c in url for c in "*?["):
        return "parquet" if name.endswith(".parquet") else "files"
    has_extension = "." in name and not name.startswith(".")
    return "files" if has_extension and not name.endswith(".parquet") else "parquet"


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
