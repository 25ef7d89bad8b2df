"""Open a job's input as a Dask DataFrame with one partition per Parquet file.

One partition per file keeps a partition's identity (its file) stable from run
to run and lets errors name the file they came from.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from dask_batchinfer.errors import InputError

__all__ = ["list_parquet_files", "read_parquet_files"]


def _visible(path: str, root: str) -> bool:
    relative = posixpath.relpath(path, root)
    return not any(part.startswith(("_", ".")) for part in relative.split("/"))


def list_parquet_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Parquet files under ``root`` (or ``root`` itself), sorted, hidden ones skipped."""
    if fs.isfile(root):
        return [root]
    if not fs.isdir(root):
        raise InputError(f"input {root!r} does not exist")
    files = sorted(
        path for path in fs.find(root) if path.endswith(".parquet") and _visible(path, root)
    )
    if not files:
        raise InputError(f"input {root!r} holds no .parquet files")
    return files


def _read_file(path: str, *, protocol: str, storage_options: Mapping[str, Any]) -> pd.DataFrame:
    fs = fsspec.filesystem(protocol, **storage_options)
    try:
        return pq.read_table(path, filesystem=fs).to_pandas()
    except Exception as err:
        raise InputError(f"cannot read input file {path!r}: {type(err).__name__}: {err}") from err


def read_parquet_files(url: str, storage_options: Mapping[str, Any] | None = None):
    """A Dask DataFrame with one partition per Parquet file under ``url``.

    Returns
    -------
    (dask.dataframe.DataFrame, list of str)
        The frame and the file behind each partition.
    """
    import dask.dataframe as dd

    options = dict(storage_options or {})
    fs, root = fsspec.core.url_to_fs(url, **options)
    files = list_parquet_files(fs, root.rstrip("/"))
    try:
        meta = pq.read_schema(files[0], filesystem=fs).empty_table().to_pandas()
    except Exception as err:
        raise InputError(f"cannot read the schema of {files[0]!r}: {err}") from err
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    ddf = dd.from_map(
        _read_file,
        files,
        meta=meta,
        label="read-parquet-file",
        protocol=protocol,
        storage_options=options,
        enforce_metadata=False,
    )
    return ddf, files
