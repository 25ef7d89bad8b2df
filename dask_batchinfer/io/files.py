"""Files as rows: images, audio and other binary files, one row per file.

A folder (or a glob such as ``s3://bucket/scans/**/*.png``) becomes a Dask
DataFrame with the columns ``path``, ``size`` and ``bytes``. As with Parquet
inputs (:mod:`dask_batchinfer.io.read`), every file keeps an identity (its
path, size and ETag or modification time) that resume and incremental runs
key on, consecutive small files are read together up to
``batchinfer.partition-size``, and read errors name the file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import posixpath
import time
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer import secrets
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.fs import absolute_url, is_local
from dask_batchinfer.io.inputs import (
    READ_TIMES,
    InputFile,
    file_version,
    group_by_config,
    reading,
)
from dask_batchinfer.io.layout import is_visible
from dask_batchinfer.io.retry import retry
from dask_batchinfer.worker.process import worker_address

__all__ = [
    "BYTES",
    "content_versions",
    "files_meta",
    "list_files",
    "read_binary_files",
    "read_files",
    "read_files_source",
]

#: The pandas dtype of the ``bytes`` column: Arrow-backed, so that Dask does
#: not turn the bytes into strings (``dataframe.convert-string``).
BYTES = pd.ArrowDtype(pa.binary())

_GLOB_CHARACTERS = ("*", "?", "[")


def _glob_root(pattern: str) -> str:
    """The folder above the first path part holding a wildcard: ``a/b/**/*.png`` -> ``a/b``."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARACTERS):
            return "/".join(parts[:i])
    return posixpath.dirname(pattern)


def _relpath(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root else path.lstrip("/")


def list_files(fs: fsspec.AbstractFileSystem, pattern_or_folder: str) -> list[InputFile]:
    """The files matching a glob, or under a folder (or the one file named), sorted.

    Files and folders whose names start with ``_`` or ``.`` below the folder
    (or below the glob's fixed prefix) are skipped, as Parquet readers skip them.
    ``relpath`` is relative to that folder (or prefix).

    Raises
    ------
    InputError
        When nothing matches, or the folder does not exist or holds no files.
    """
    target = pattern_or_folder.rstrip("/")
    if any(c in target for c in _GLOB_CHARACTERS):
        root = _glob_root(target)
        # Globs list folder by folder through the filesystem's listings cache:
        # forget it all, or files written elsewhere since the last listing are missed.
        fs.invalidate_cache()
        found = retry(lambda: fs.glob(target, detail=True), what=f"listing {target}")
        what = f"no files match {pattern_or_folder!r}"
    else:
        fs.invalidate_cache(target)
        if retry(lambda: fs.isfile(target), what=f"checking {target}"):
            info = retry(lambda: fs.info(target), what=f"reading {target}")
            return [
                InputFile(
                    target, posixpath.basename(target), int(info.get("size", 0)), file_version(info)
                )
            ]
        if not retry(lambda: fs.isdir(target), what=f"checking {target}"):
            raise InputError(f"input {pattern_or_folder!r} does not exist")
        root = target
        found = retry(lambda: fs.find(target, detail=True), what=f"listing {target}")
        what = f"input {pattern_or_folder!r} holds no files"
    files = []
    for path, info in sorted(found.items()):
        relpath = _relpath(path, root)
        if info.get("type", "file") == "file" and is_visible(relpath):
            files.append(InputFile(path, relpath, int(info.get("size", 0)), file_version(info)))
    if not files:
        raise InputError(what + " (names starting with '_' or '.' are skipped)")
    return files


def content_versions(fs: fsspec.AbstractFileSystem, files: list[InputFile]) -> list[InputFile]:
    """``files`` identified by the SHA-256 of their bytes instead of ETags/modification times.

    Reads every file once, here.
    """

    def digest(path: str) -> str:
        sha = hashlib.sha256()
        with fs.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        return "sha256:" + sha.hexdigest()

    versioned = []
    for f in files:
        with reading(f.path):
            version = retry(functools.partial(digest, f.path), what=f"reading {f.path}")
        versioned.append(dataclasses.replace(f, version=version))
    return versioned


def files_meta() -> pd.DataFrame:
    """The empty frame of :func:`read_binary_files`: ``path`` (str), ``size`` (int64), ``bytes``."""
    return _frame([], [])


def _frame(paths: list[str], contents: list[bytes]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": pd.Series(paths, dtype="str"),
            "size": pd.Series(np.array([len(c) for c in contents], dtype=np.int64)),
            "bytes": pd.Series(pd.arrays.ArrowExtensionArray(pa.array(contents, pa.binary()))),
        }
    )


def _fetch(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes]:
    # Object stores: one concurrent request per file (s3fs's cat), then each
    # failure once more on its own, with retries, so that its error names it.
    fetched: dict[str, Any] = {}
    if not is_local(fs) and len(paths) > 1:
        try:
            fetched = fs.cat(paths, on_error="return")
        except Exception:
            fetched = {}
    contents = []
    for path in paths:
        data = fetched.get(path)
        if not isinstance(data, bytes):
            with reading(path):
                data = retry(functools.partial(fs.cat_file, path), what=f"reading {path}")
        contents.append(data)
    return contents


def read_binary_files(
    paths: list[str], *, protocol: str, storage_options: Mapping[str, Any]
) -> pd.DataFrame:
    """Read whole files into one frame, one row per file, in order.

    Returns
    -------
    pandas.DataFrame
        ``path`` (str: the path on local disk, else the URL such as
        ``s3://bucket/key``), ``size`` (int64, bytes) and ``bytes``
        (:data:`BYTES`). ``attrs[READ_TIMES]`` holds the read's start, end and worker.

    Raises
    ------
    OSError
        Naming the file that could not be read (missing, permissions, retries spent).
    """
    started = time.time()
    fs = fsspec.filesystem(protocol, **secrets.resolve(storage_options))
    contents = _fetch(fs, paths)
    shown = paths if is_local(fs) else [fs.unstrip_protocol(p) for p in paths]
    frame = _frame(shown, contents)
    frame.attrs[READ_TIMES] = (started, time.time(), worker_address())  # for the job's timeline
    return frame


def read_files_source(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    task_options: Mapping[str, Any] | None = None,
    fingerprint: str = "metadata",
):
    """A Dask DataFrame with one row per file under ``url`` (a folder or a glob).

    The contract of :func:`~dask_batchinfer.io.read.read_parquet_files`:
    consecutive files are grouped up to ``batchinfer.partition-size`` bytes
    (keeping ``batchinfer.min-partitions`` partitions where there are enough
    files), one read task per group; ``task_options`` replace
    ``storage_options`` inside the tasks; ``fingerprint="content"``
    identifies files by the SHA-256 of their bytes (read once, on the client).

    Returns
    -------
    (dask.dataframe.DataFrame, list of list of InputFile)
        The frame (columns of :func:`read_binary_files`) and the files behind
        each partition.
    """
    import dask.dataframe as dd

    options = dict(storage_options or {})
    fs, target = fsspec.core.url_to_fs(url, **options)
    files = list_files(fs, target)
    if fingerprint == "content":
        files = content_versions(fs, files)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    groups = group_by_config(files)
    ddf = dd.from_map(
        read_binary_files,
        [[f.path for f in group] for group in groups],
        meta=files_meta(),
        label="read-binary-files",
        protocol=protocol,
        storage_options=dict(task_options) if task_options is not None else options,
        enforce_metadata=False,
    )
    return ddf, groups


def read_files(url: str, storage_options: Mapping[str, Any] | None = None):
    """Files as rows: a lazy Dask DataFrame with one row per file.

    Parameters
    ----------
    url : str
        A folder (every file below it), a glob (``s3://bucket/scans/**/*.png``)
        or one file; local or any fsspec URL. Names starting with ``_`` or
        ``.`` are skipped.
    storage_options : dict, optional
        For the filesystem, e.g. ``{"endpoint_url": ...}``.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns ``path`` (str), ``size`` (int64) and ``bytes`` (Arrow binary),
        files sorted by path; consecutive small files share a partition (up
        to ``batchinfer.partition-size`` bytes).

    Raises
    ------
    InputError
        When nothing matches ``url``.

    Examples
    --------
    >>> images = dbi.read_files("s3://bucket/scans/**/*.png")  # doctest: +SKIP
    >>> scores = dbi.predict(images, spec, preprocess=dbi.decode_images(),  # doctest: +SKIP
    ...                      keep=["path"])
    """
    ddf, _ = read_files_source(absolute_url(url), storage_options)
    return ddf
