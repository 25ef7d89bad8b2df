"""Read a job's input, and read a job's output through its manifest.

Input Parquet paths are read as one partition per file: a partition's
identity (its file, size and version) stays stable from run to run, which is
what resume and incremental runs key on, and errors can name the file.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Mapping
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from dask_batchinfer.errors import InputError
from dask_batchinfer.io.commit import MANIFEST, is_visible
from dask_batchinfer.io.retry import retry

__all__ = ["InputFile", "list_parquet_files", "read_output", "read_parquet_files"]


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


def _read_file(path: str, *, protocol: str, storage_options: Mapping[str, Any]) -> pd.DataFrame:
    fs = fsspec.filesystem(protocol, **storage_options)
    try:
        table = retry(lambda: pq.read_table(path, filesystem=fs), what=f"reading {path}")
    except Exception as err:
        raise InputError(f"cannot read input file {path!r}: {type(err).__name__}: {err}") from err
    return table.to_pandas()


def read_parquet_files(url: str, storage_options: Mapping[str, Any] | None = None):
    """A Dask DataFrame with one partition per Parquet file under ``url``.

    Returns
    -------
    (dask.dataframe.DataFrame, list of InputFile)
        The frame and the file behind each partition.
    """
    import dask.dataframe as dd

    options = dict(storage_options or {})
    fs, root = fsspec.core.url_to_fs(url, **options)
    files = list_parquet_files(fs, root)
    try:
        schema = retry(
            lambda: pq.read_schema(files[0].path, filesystem=fs), what=f"reading {files[0].path}"
        )
    except Exception as err:
        raise InputError(f"cannot read the schema of {files[0].path!r}: {err}") from err
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    ddf = dd.from_map(
        _read_file,
        [f.path for f in files],
        meta=schema.empty_table().to_pandas(),
        label="read-parquet-file",
        protocol=protocol,
        storage_options=options,
        enforce_metadata=False,
    )
    return ddf, files


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
    fs, root = fsspec.core.url_to_fs(url, **options)
    root = root.rstrip("/")
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
