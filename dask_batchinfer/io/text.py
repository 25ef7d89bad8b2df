"""CSV and JSON Lines inputs: one partition per file, small files read together.

A folder, a glob (``s3://bucket/events/*.csv.gz``) or one file of CSV, TSV or
JSON Lines becomes a Dask DataFrame with the contract of
:func:`~dask_batchinfer.io.read.read_parquet_files`: every file keeps an
identity (size and ETag or modification time) that resume and incremental
runs key on, consecutive small files share a partition up to
``batchinfer.partition-size``, and read errors name the file (and the line of
a CSV row that does not parse).

Compressed files (``.gz``, ``.bz2``, ``.zst``) are decompressed by Arrow while
they stream from storage. A large file is one partition: splitting a CSV at
byte offsets is only safe without quoted newlines and impossible inside a
compressed stream, and a file split at a row its header does not precede
loses its column names, so byte ranges are left to a later change.

Column types are inferred from the first block of the first file (as pyarrow
infers them for one file); every file is read with those types, so a value
that does not fit fails naming the file and the column.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from dask_batchinfer import secrets
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.files import content_versions, list_files
from dask_batchinfer.io.inputs import (
    BAD_LINES,
    READ_TIMES,
    TEXT_FORMATS,
    arrow_types,
    group_by_config,
    reading,
    source_meta,
    split_compression,
)
from dask_batchinfer.io.retry import retry
from dask_batchinfer.worker.process import worker_address

__all__ = ["read_text_files", "read_text_source"]

_COLUMN_NUMBER = re.compile(r"In CSV column #(\d+)")


def _open(fs: fsspec.AbstractFileSystem, path: str) -> pa.NativeFile:
    _, codec = split_compression(path.lower())
    return pa.input_stream(fs.open(path, "rb"), compression=codec)


def _read_table(
    stream: pa.NativeFile,
    format: str,
    schema: pa.Schema | None,
    columns: list[str] | None,
    bad_rows: list[Any],
    skip_bad: bool = False,
) -> pa.Table:
    """One file's table, its columns typed (and chosen) by ``schema`` when given.

    A CSV row with the wrong number of fields is appended to ``bad_rows``, and
    skipped when ``skip_bad`` (else it fails the read)."""
    if format == "jsonl":
        parse = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        table = pjson.read_json(stream, parse_options=parse)
        return table if columns is None else table.select(columns)

    def invalid(row: Any) -> str:
        bad_rows.append(row)
        return "skip" if skip_bad else "error"

    convert = pcsv.ConvertOptions(
        column_types=None if schema is None else {f.name: f.type for f in schema},
        include_columns=columns if columns is not None or schema is None else schema.names,
    )
    return pcsv.read_csv(
        stream,
        read_options=pcsv.ReadOptions(use_threads=False),  # serial: errors know their row
        parse_options=pcsv.ParseOptions(
            delimiter="\t" if format == "tsv" else ",", invalid_row_handler=invalid
        ),
        convert_options=convert,
    )


BadLines = list[tuple[str, int | None, str]]  # (file, line, message) of lines set aside


def _read_file(
    fs: fsspec.AbstractFileSystem,
    path: str,
    format: str,
    schema: pa.Schema | None,
    columns: list[str] | None,
    bad_lines: BadLines | None = None,
) -> pa.Table:
    """One file's table; with ``bad_lines``, CSV rows that do not parse are skipped
    and appended to it as ``(path, line, message)``."""
    bad_rows: list[Any] = []

    def read() -> pa.Table:
        bad_rows.clear()
        with _open(fs, path) as stream:
            return _read_table(stream, format, schema, columns, bad_rows, bad_lines is not None)

    try:
        table = retry(read, what=f"reading {path}")
        if bad_lines is not None:
            bad_lines.extend((path, row.number, _bad_row_text(row)) for row in bad_rows)
        return table
    except pa.ArrowInvalid as err:
        names = _header(fs, path, format) if _COLUMN_NUMBER.search(str(err)) else None
        raise _parse_error(err, path, bad_rows, names) from err


def _header(fs: fsspec.AbstractFileSystem, path: str, format: str) -> list[str] | None:
    """The file's own column names (a CSV error numbers the file's columns), or None."""
    try:
        return _infer_schema(fs, path, format).names
    except Exception:  # the error being reported is the one that matters
        return None


def _parse_error(
    err: Exception, path: str, bad_rows: list[Any], names: Sequence[str] | None
) -> InputError:
    """``err`` as an :class:`InputError` naming the file, the line, the column (of ``names``,
    the file's columns); Arrow's own message names the row of a value that does not fit."""
    message = str(err)
    if bad_rows:
        row = bad_rows[-1]
        line = f" line {row.number}" if row.number is not None else ""
        return InputError(
            f"cannot read CSV input {path!r}{line}: {_bad_row_text(row)} "
            f"(on_error='quarantine' sets such lines aside)"
        )
    number = _COLUMN_NUMBER.search(message)
    if number and names is not None and int(number.group(1)) < len(names):
        message = f"column {names[int(number.group(1))]!r}: {message}"
    return InputError(f"cannot read input file {path!r}: {message}")


def _bad_row_text(row: Any) -> str:
    """What is wrong with a CSV row Arrow could not split into the header's fields."""
    return f"expected {row.expected_columns} fields, got {row.actual_columns}: {row.text[:200]!r}"


def read_text_files(
    paths: list[str],
    *,
    protocol: str,
    storage_options: Mapping[str, Any],
    format: str,
    schema: pa.Schema,
    columns: list[str] | None = None,
    on_error: str = "raise",
) -> pd.DataFrame:
    """Read CSV, TSV or JSON Lines files (compressed or not) into one frame, in order.

    Every file is read with ``schema``'s column types; ``columns`` are the
    only columns read (None: ``schema``'s). ``attrs[READ_TIMES]`` holds the
    read's start, end and worker. With ``on_error="quarantine"`` a CSV line
    with the wrong number of fields is left out and listed in
    ``attrs[BAD_LINES]`` as ``(file, line, message)``, for the job to
    quarantine; otherwise it fails the read.

    Raises
    ------
    InputError
        Naming the file and, for a CSV row that does not parse, its line
        (for a value that does not fit its column's type, the column).
    OSError
        Naming the file that could not be read (missing, permissions, retries spent).
    """
    started = time.time()
    fs = fsspec.filesystem(protocol, **secrets.resolve(storage_options))
    tables = []
    bad_lines: BadLines | None = [] if on_error == "quarantine" else None
    for path in paths:
        with reading(path):
            tables.append(_read_file(fs, path, format, schema, columns, bad_lines))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    frame = table.to_pandas(types_mapper=arrow_types)
    frame.attrs[READ_TIMES] = (started, time.time(), worker_address())  # for the job's timeline
    if bad_lines:
        frame.attrs[BAD_LINES] = bad_lines
    return frame


def _infer_schema(fs: fsspec.AbstractFileSystem, path: str, format: str) -> pa.Schema:
    """The column types of the first block of ``path``, as pyarrow infers them."""

    def infer() -> pa.Schema:
        with _open(fs, path) as stream:
            if format == "jsonl":
                return pjson.open_json(stream).schema
            parse = pcsv.ParseOptions(delimiter="\t" if format == "tsv" else ",")
            return pcsv.open_csv(stream, parse_options=parse).schema

    with reading(path, "the schema of"):
        try:
            return retry(infer, what=f"reading {path}")
        except pa.ArrowInvalid as err:
            raise _parse_error(err, path, [], None) from err


def read_text_source(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    task_options: Mapping[str, Any] | None = None,
    fingerprint: str = "metadata",
    format: str,
    columns: Sequence[str] | None = None,
    on_error: str = "raise",
):
    """A Dask DataFrame of the CSV, TSV or JSON Lines files under ``url`` (a folder, a
    glob or one file), one partition per file or group of small files.

    The contract of :func:`~dask_batchinfer.io.read.read_parquet_files`:
    consecutive small files are grouped up to ``batchinfer.partition-size``
    bytes (keeping ``batchinfer.min-partitions`` partitions where there are
    enough files), a large file is one partition (no byte ranges: see the
    module's docstring); ``columns`` are the only columns read (None: all);
    ``task_options`` replace ``storage_options`` inside the tasks;
    ``fingerprint="content"`` identifies files by the SHA-256 of their bytes
    (read once, on the client) instead of their ETag or modification time;
    ``on_error="quarantine"`` leaves out CSV lines that do not parse and lists
    them in each partition's ``attrs[BAD_LINES]`` (see :func:`read_text_files`).

    Returns
    -------
    (dask.dataframe.DataFrame, list of list of InputFile)
        The frame and the files behind each partition.

    Raises
    ------
    InputError
        When ``format`` is not one of :data:`TEXT_FORMATS`, nothing matches
        ``url``, or the first file cannot be parsed.
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    import dask.dataframe as dd

    if format not in TEXT_FORMATS:
        raise InputError(f"format={format!r}: expected one of {TEXT_FORMATS}")
    options = dict(storage_options or {})
    fs, target = fsspec.core.url_to_fs(url, **options)
    files = list_files(fs, target)
    if fingerprint == "content":
        files = content_versions(fs, files)
    schema = _infer_schema(fs, files[0].path, format)
    names = schema.names if columns is None else [c for c in columns if c in schema.names]
    meta = source_meta(schema, names, files[0].path)
    schema = pa.schema([schema.field(n) for n in names])
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    groups = group_by_config(files)
    ddf = dd.from_map(
        read_text_files,
        [[f.path for f in group] for group in groups],
        meta=meta,
        label=f"read-{format}-files",
        protocol=protocol,
        storage_options=dict(task_options) if task_options is not None else options,
        format=format,
        schema=schema,
        columns=None if columns is None else names,
        on_error=on_error,
        enforce_metadata=False,
    )
    return ddf, groups
