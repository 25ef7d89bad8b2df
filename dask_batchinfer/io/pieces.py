"""Plan a Parquet input into partitions sized by the tool, not by the file layout.

A partition is a list of *pieces*: whole small files grouped together (as many
as fit in ``batchinfer.partition-size``), or a run of consecutive row groups of
a large file, or, for a file whose one row group is at least ``SPLIT_FACTOR``
times the target, a range of that row group's rows. A row group is Parquet's
unit of decoding: a row range still decodes its whole row group (for the
columns read), so k ranges decode it k times. A row group up to 8x the target
is therefore read whole, one partition (measured, 4M rows in 16 files of one
64 MB row group each: 4 ranges per group 9.9 s, whole groups 8.3 s); only
larger ones are split, trading decode time for bounded memory.

The plan reads each large file's footer (two small reads) on the client, and
every file's footer when ``filters`` are given (statistics prune row groups;
hive folder keys prune whole files without reading them). Small files without
filters are planned from their listing alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import math
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dask_batchinfer.errors import InputError, did_you_mean
from dask_batchinfer.io.fs import is_local
from dask_batchinfer.io.inputs import InputFile, group_files, reading
from dask_batchinfer.io.partitioned import InputPartitions
from dask_batchinfer.io.retry import retry

__all__ = ["Target", "check_filters", "plan_parquet", "read_target"]

#: A row group is split by rows only into ranges of at least this many rows.
MIN_SPLIT_ROWS = 65_536
#: Footers the plan reads at once (threads of the client) from an object store, where each
#: is a round trip or two, and from a local disk, where a read takes no time to wait for:
#: there each thread only adds the memory Arrow's allocator keeps for it (16 threads parsing
#: footers of 1,000 row groups: +80 MiB at the peak, 4: +24, in the same time).
FOOTER_READS = 16
LOCAL_FOOTER_READS = 4
#: Files smaller than this on disk are never split (nor their footers read, without filters).
MIN_SPLIT_BYTES = 1 << 20
#: A row group is split by rows only when it is this many times the partition size.
SPLIT_FACTOR = 8


@dataclasses.dataclass(frozen=True)
class Target:
    """The size of a partition: ``nbytes`` of decoded data, or ``rows`` rows."""

    nbytes: int | None = None
    rows: int | None = None

    def weight(self, rows: int, nbytes: int) -> int:
        return rows if self.rows is not None else nbytes

    @property
    def limit(self) -> int:
        return self.rows if self.rows is not None else (self.nbytes or 1)


def read_target(value: Any) -> Target:
    """``batchinfer.partition-size``: bytes (``"32MiB"``, an int) or rows (``"500000 rows"``)."""
    from dask.utils import parse_bytes

    text = str(value).strip().lower()
    if text.endswith("rows"):
        try:
            return Target(rows=max(1, int(float(text[:-4].strip().replace("_", "")))))
        except ValueError as err:
            raise InputError(
                f"batchinfer.partition-size={value!r}: expected e.g. '32MiB' or '500000 rows'"
            ) from err
    try:
        return Target(nbytes=max(1, int(parse_bytes(value))))
    except (ValueError, TypeError) as err:
        raise InputError(
            f"batchinfer.partition-size={value!r}: expected e.g. '32MiB' or '500000 rows'"
        ) from err


def check_filters(filters: Any, schema: pa.Schema, where: str) -> ds.Expression | None:
    """``filters`` in pyarrow's DNF form as an expression; every column must exist."""
    if not filters:
        return None
    try:
        expression = pq.filters_to_expression(filters)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"filters={filters!r}: expected [(column, op, value), ...] or a list of such lists "
            f"(as in pyarrow and dask.dataframe.read_parquet): {err}"
        ) from err
    clauses = (
        filters
        if isinstance(filters[0], (list, tuple)) and isinstance(filters[0][0], (list, tuple))
        else [filters]
    )
    names = {clause[0] for conjunction in clauses for clause in conjunction}
    missing = sorted(str(n) for n in names - set(schema.names))
    if missing:
        raise InputError(
            f"filters name column(s) {missing} that {where} does not have"
            f"{did_you_mean(missing, schema.names)}; it has {schema.names} (hive folder keys "
            f"such as date=... count as columns)"
        )
    return expression


def _keys(fragment: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(ds.get_partition_keys(fragment.partition_expression).items()))


def _decoded_sizes(
    metadata: pq.FileMetaData, ids: Sequence[int], columns: set[str] | None
) -> list[int]:
    """Uncompressed bytes of each row group in ``ids``, over ``columns`` (None: all)."""
    sizes = []
    for i in ids:
        group = metadata.row_group(i)
        if columns is None:
            sizes.append(group.total_byte_size)
            continue
        sizes.append(
            sum(
                group.column(j).total_uncompressed_size
                for j in range(group.num_columns)
                if group.column(j).path_in_schema.split(".")[0] in columns
            )
        )
    return sizes


def _split_file(file: InputFile, footer: _Footer, target: Target) -> list[InputFile]:
    """Consecutive row groups up to ``target`` each; a huge single row group by rows."""
    pieces: list[InputFile] = []
    run: list[int] = []
    weight = 0
    for i, n, size in zip(footer.ids, footer.rows, footer.sizes, strict=True):
        w = target.weight(n, size)
        if w >= SPLIT_FACTOR * target.limit and n >= 2 * MIN_SPLIT_ROWS:  # one huge row group
            if run:
                pieces.append(dataclasses.replace(file, row_groups=tuple(run)))
                run, weight = [], 0
            parts = min(math.ceil(w / target.limit), n // MIN_SPLIT_ROWS)
            bounds = [round(k * n / parts) for k in range(parts + 1)]
            pieces += [
                dataclasses.replace(file, row_groups=(i,), rows=(a, b))
                for a, b in zip(bounds, bounds[1:], strict=False)
            ]
            continue
        if run and weight + w > target.limit:
            pieces.append(dataclasses.replace(file, row_groups=tuple(run)))
            run, weight = [], 0
        run.append(i)
        weight += w
    if run:
        pieces.append(dataclasses.replace(file, row_groups=tuple(run)))
    if len(pieces) == 1 and pieces[0].rows is None and len(footer.ids) == footer.row_groups:
        return [dataclasses.replace(file, row_groups=None)]  # the whole file after all
    return pieces


@dataclasses.dataclass(frozen=True)
class _Footer:
    """What the plan needs of a file's footer: the row groups left after the filters, their
    rows and decoded sizes, and how many the file has (a parsed footer is ~1.6 KB a row
    group, so the plan keeps this instead)."""

    ids: array
    rows: array
    sizes: array
    row_groups: int

    @classmethod
    def of(cls, fragment: Any, columns: set[str] | None) -> _Footer:
        metadata = fragment.metadata
        ids = array("i", (g.id for g in fragment.row_groups))
        rows = array("q", (metadata.row_group(i).num_rows for i in ids))
        return cls(ids, rows, array("q", _decoded_sizes(metadata, ids, columns)),
                   metadata.num_row_groups)  # fmt: skip


def plan_parquet(
    fs: Any,
    root: str,
    files: list[InputFile],
    target: Target,
    filters: Any = None,
    columns: Sequence[str] | None = None,
    group_bytes: int | None = None,
) -> tuple[pa.Schema, InputPartitions]:
    """The input's schema (hive keys included) and its partitions, each a list of pieces.

    Parameters
    ----------
    files : list of InputFile
        The listed files (sorted).
    target : Target
        The partition size.
    filters : list, optional
        DNF filters: prune files by hive keys and row groups by statistics.
    columns : list of str, optional
        The columns the job reads (sizes count only these); None: all.
    group_bytes : int, optional
        Small whole files are grouped up to this many bytes on disk (default
        the target's bytes).
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    dataset = ds.dataset(
        [f.path for f in files],
        filesystem=fs,
        format="parquet",
        partitioning="hive",
        partition_base_dir=root,
    )
    schema = dataset.schema
    expression = check_filters(filters, schema, f"the input {root!r}")
    by_path = {f.path: f for f in files}
    listed = []
    for fragment in dataset.get_fragments(filter=expression):  # hive keys prune, no reads
        file = dataclasses.replace(by_path[fragment.path], keys=_keys(fragment))
        small = target.rows is None and (file.size <= target.limit or file.size < MIN_SPLIT_BYTES)
        listed.append(
            (file, None if small and expression is None else fragment.partition_expression)
        )
    pafs = dataset.filesystem
    del dataset  # its fragments would keep every footer read through them

    partitions = InputPartitions([file for file, _ in listed])
    whole = group_bytes if group_bytes is not None else target.limit
    run: list[InputFile] = []  # whole small files, grouped when a split file or the end comes
    read = None if columns is None else set(columns)
    threads = LOCAL_FOOTER_READS if is_local(fs) else FOOTER_READS
    footers = _footers(pafs, listed, expression, schema, read, threads)
    for (file, _), footer in zip(listed, footers, strict=True):
        pieces = (
            [file] if footer is None else _split_file(file, footer, target) if footer.ids else []
        )
        for piece in pieces:
            if piece.row_groups is None:
                run.append(piece)
                continue
            partitions.extend(group_files(run, whole))
            run = []
            partitions.extend([[piece]])
    partitions.extend(group_files(run, whole))
    _release_memory()
    return schema, partitions


def _release_memory() -> None:
    """Give back to the system what parsing the footers left free: Arrow's allocator keeps
    it per thread, glibc's ``malloc`` per arena, so the job would otherwise run on top of the
    plan's peak (100,000 row groups: 25 MiB). Dask's docs trim workers' memory the same way."""
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


def _footers(
    fs: Any,
    listed: list[tuple[InputFile, Any]],
    expression: Any,
    schema: pa.Schema,
    columns: set[str] | None,
    threads: int,
) -> Iterator[_Footer | None]:
    """Each listed file's footer as the plan needs it (None: a small file left whole), with
    its row groups chosen by ``expression``, in order, ``threads`` at a time: on S3 each is
    a round trip or two, and a plan of 40,000 large files read them one by one for minutes.
    A parsed footer is dropped as soon as it is summed up (each can be megabytes: one entry
    per row group and column), so at most ``threads`` are held at once."""
    parquet = ds.ParquetFileFormat()

    def footer(file: InputFile, partition_expression: Any) -> _Footer:
        with reading(file.path):
            fragment = parquet.make_fragment(
                file.path, filesystem=fs, partition_expression=partition_expression
            )
            if expression is not None:
                fragment = fragment.subset(filter=expression, schema=schema)
            retry(fragment.ensure_complete_metadata, what=f"reading the footer of {file.path}")
            return _Footer.of(fragment, columns)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        ahead: collections.deque = collections.deque()
        for file, partition_expression in listed:
            ahead.append(
                None
                if partition_expression is None
                else pool.submit(footer, file, partition_expression)
            )
            if len(ahead) > 2 * threads:
                done = ahead.popleft()
                yield None if done is None else done.result()
        while ahead:
            done = ahead.popleft()
            yield None if done is None else done.result()
