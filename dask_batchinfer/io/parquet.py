"""Write one output partition to Parquet: stage under ``_staging/``, then commit.

Layout of an output folder::

    output/
      part-00000.parquet          committed partitions (or hive folders with partition_on)
      country=FR/part-00003.parquet
      _staging/                    attempts in flight; invisible to readers (leading "_")
      _SUCCESS                     JSON manifest, written last

Each attempt writes a uniquely named staging file and then moves it onto the
partition's deterministic name: a rename on local disk, a server-side copy on
S3. Either way a reader sees a partition whole or not at all.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["STAGING", "output_schema", "part_name", "write_partition"]

STAGING = "_staging"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def part_name(number: int) -> str:
    """The committed file name of input partition ``number``."""
    return f"part-{number:05d}.parquet"


def output_schema(meta: pd.DataFrame) -> pa.Schema:
    """The Arrow schema every output file shares, from the job's output ``meta``."""
    return pa.Schema.from_pandas(meta, preserve_index=False).remove_metadata()


def _hive_dir(partition_on: Sequence[str], values: tuple[Any, ...]) -> str:
    parts = []
    for column, value in zip(partition_on, values, strict=True):
        text = HIVE_NULL if pd.isna(value) else quote(str(value), safe="")
        parts.append(f"{column}={text}")
    return "/".join(parts)


def _commit(fs: fsspec.AbstractFileSystem, table: pa.Table, root: str, relpath: str) -> None:
    staged = posixpath.join(root, STAGING, f"{uuid.uuid4().hex}-{posixpath.basename(relpath)}")
    final = posixpath.join(root, relpath)
    # No pandas metadata: readers rebuild dtypes from the Arrow schema, which
    # pandas cannot do from the metadata's text for fixed-size lists.
    table = table.replace_schema_metadata(None)
    with fs.open(staged, "wb") as f:
        pq.write_table(table, f)
    fs.makedirs(posixpath.dirname(final), exist_ok=True)
    fs.mv(staged, final)


def write_partition(
    frame: pd.DataFrame,
    *,
    fs: fsspec.AbstractFileSystem,
    root: str,
    number: int,
    schema: pa.Schema,
    partition_on: Sequence[str] = (),
) -> list[tuple[str, int]]:
    """Write and commit one partition; return ``(relative path, rows)`` per file written.

    Without ``partition_on`` one file is written, even for an empty partition,
    so every input partition has its output file. With ``partition_on`` one
    file per key is written into hive folders (``country=FR/``), the key
    columns dropped from the file as hive readers expect.
    """
    fs.makedirs(posixpath.join(root, STAGING), exist_ok=True)
    name = part_name(number)
    if not partition_on:
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        _commit(fs, table, root, name)
        return [(name, table.num_rows)]
    file_schema = pa.schema([f for f in schema if f.name not in partition_on])
    written = []
    for values, group in frame.groupby(list(partition_on), dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        relpath = f"{_hive_dir(partition_on, values)}/{name}"
        table = pa.Table.from_pandas(
            group.drop(columns=list(partition_on)), schema=file_schema, preserve_index=False
        )
        _commit(fs, table, root, relpath)
        written.append((relpath, table.num_rows))
    return written
