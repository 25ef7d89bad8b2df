"""The input's files: what identifies each one, listing, grouping, naming them in errors.

An :class:`InputFile` is a file, or a piece of one (a run of row groups, or a
row range of one row group, see :mod:`~dask_batchinfer.io.pieces`), with what
identifies its content (size and version) and its hive folder keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.layout import is_visible
from dask_batchinfer.io.retry import retry

__all__ = [
    "COMPRESSIONS",
    "FINGERPRINTS",
    "BAD_LINES",
    "READ_TIMES",
    "input_bytes",
    "TEXT_EXTENSIONS",
    "TEXT_FORMATS",
    "InputFile",
    "arrow_types",
    "file_version",
    "footer_digest",
    "group_by_config",
    "group_files",
    "grouping_bytes",
    "list_parquet_files",
    "reading",
    "source_meta",
    "split_compression",
    "text_format",
    "with_content_versions",
]


#: ``DataFrame.attrs`` key of a read partition: (start, end, worker) of its read
#: (epoch seconds, the worker's address or None).
READ_TIMES = "dask_batchinfer_read"

#: ``DataFrame.attrs`` key of an input's ``meta``: ``(first file, every column the
#: input has)`` before columns were chosen, for errors that list what is there.
SOURCE = "dask_batchinfer_source"

#: ``DataFrame.attrs`` key of a read partition: the input lines the reader set
#: aside (``on_error="quarantine"``), each ``(file, line, message)``.
BAD_LINES = "dask_batchinfer_bad_lines"


def source_meta(schema: pa.Schema, names: list[str], first: str) -> pd.DataFrame:
    """The empty frame of ``names`` read from ``schema``, remembering all the input has."""
    meta = (
        pa.schema([schema.field(n) for n in names])
        .empty_table()
        .to_pandas(types_mapper=arrow_types)
    )
    meta.attrs[SOURCE] = (first, list(schema.names))
    return meta


@dataclasses.dataclass(frozen=True, slots=True)
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


def arrow_types(kind: pa.DataType) -> pd.ArrowDtype | None:
    """Keep binary and nested columns as Arrow-backed pandas columns.

    As plain ``object`` columns, Dask would try to turn them into strings
    (``dataframe.convert-string``) and fail on bytes that are not UTF-8.
    """
    nested = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_struct(kind)
    binary = (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
    )
    return pd.ArrowDtype(kind) if nested or binary or pa.types.is_fixed_size_list(kind) else None


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
        raise InputError(f"input {root!r} holds no .parquet files{_format_hint(found)}")
    return files


def _format_hint(paths: Any) -> str:
    """What to pass for a folder of CSV or JSON Lines files: ``" (... pass format='csv')"``."""
    found = sorted({kind for p in paths if (kind := text_format(posixpath.basename(p)))})
    return f" (it holds {', '.join(found)} files: pass format={found[0]!r})" if found else ""


#: ``run_job(format=...)`` values read as text (:mod:`~dask_batchinfer.io.text`).
TEXT_FORMATS = ("csv", "tsv", "jsonl")

#: File name endings read as each text format (before any compression ending).
TEXT_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

#: Compression by file name ending, as Arrow names the codec.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def split_compression(name: str) -> tuple[str, str | None]:
    """``name`` without its compression ending, and Arrow's name of the codec (or None)."""
    for ending, codec in COMPRESSIONS.items():
        if name.endswith(ending):
            return name[: -len(ending)], codec
    return name, None


def text_format(name: str) -> str | None:
    """``"csv"``, ``"tsv"`` or ``"jsonl"`` for a file name (or glob) ending so, optionally
    compressed (``events.jsonl.gz``); else None."""
    stem, _ = split_compression(name.lower())
    return next((kind for ext, kind in TEXT_EXTENSIONS.items() if stem.endswith(ext)), None)


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
    """Consecutive files grouped to about ``target_bytes`` each: many tiny files, few partitions.

    Where a group ends depends only on each file's own name and size (a file
    ends its group with probability ``size / target``, decided by a hash of its
    path), not on the files before it: adding, removing or rewriting a file
    changes its own group and at most a neighbour, so an incremental run over a
    folder that grew recomputes only the new files' partitions. A file at
    least as large as the target is a partition of its own; no group exceeds
    twice the target.
    """
    groups: list[list[InputFile]] = []
    run: list[InputFile] = []
    size = 0
    for f in files:
        new_folder = run and posixpath.dirname(f.relpath) != posixpath.dirname(run[-1].relpath)
        if run and (new_folder or f.size >= target_bytes or size + f.size > 2 * target_bytes):
            groups.append(run)
            run, size = [], 0
        run.append(f)
        size += f.size
        if f.size >= target_bytes or _ends_group(f, target_bytes):
            groups.append(run)
            run, size = [], 0
    if run:
        groups.append(run)
    return groups


def _ends_group(f: InputFile, target_bytes: int) -> bool:
    digest = hashlib.sha1(f.relpath.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < f.size / max(1, target_bytes)


def group_by_config(files: list[InputFile]) -> list[list[InputFile]]:
    """``files`` grouped to ``batchinfer.partition-size`` (file bytes), keeping about
    ``batchinfer.min-partitions`` partitions: what every whole-file reader does."""
    from dask.utils import parse_bytes

    target = grouping_bytes(
        files, parse_bytes(_config.get("partition-size")), int(_config.get("min-partitions"))
    )
    return group_files(files, target)


def grouping_bytes(files: list[InputFile], target_bytes: int, min_partitions: int) -> int:
    """The size small files are grouped to: ``target_bytes``, lowered (to a power of two,
    so that a few more files do not move every group) until the input makes at least
    ``min_partitions`` partitions, or one per file when there are fewer files."""
    spread = sum(f.size for f in files) // max(1, min(len(files), min_partitions))
    if spread >= target_bytes:
        return target_bytes
    return 1 << max(0, int(spread).bit_length() - 1)


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


def input_bytes(groups: Sequence[Sequence[InputFile]] | None) -> int | None:
    """Bytes of the files behind ``groups`` (each file once: pieces of a file share it);
    None when not known (a dask DataFrame source)."""
    if groups is None:
        return None
    used = getattr(groups, "used_files", None)  # an InputPartitions: no pieces made
    files = used() if used is not None else (f for group in groups for f in group)
    return sum({f.path: f.size for f in files}.values())
