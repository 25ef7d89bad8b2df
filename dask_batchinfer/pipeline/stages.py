"""The stages of one partition, timed and traced: read, preprocess, infer, write.

Each stage takes its input, the partition, one :class:`StageSettings` and the
partition's :class:`PartitionStats`, which it fills in. Tasks receive the
settings :class:`~dask_batchinfer.worker.packed.Packed` (the user's code as bytes that
only workers open: the scheduler never needs the user's modules). ``predict()``,
``run_job()`` and ``plan()`` all run partitions through these functions; the
task functions at the bottom are what ``run_job`` submits (one task for both
stages on a single-pool cluster, one per pool on a mixed cluster).

The statistics travel back to the client with each task's result and carry
all the report needs of the partition: its stage records (the timeline) and
the model load facts of the worker that ran the model, so that a report is
complete whatever became of the workers (an adaptive cluster retires them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from dask_batchinfer import secrets
from dask_batchinfer.errors import ClusterError
from dask_batchinfer.io.commit import Marker, Partition, write_marker
from dask_batchinfer.io.fs import is_local, url_to_fs
from dask_batchinfer.io.inputs import BAD_LINES
from dask_batchinfer.io.parquet import encode, write_errors, write_partition
from dask_batchinfer.io.read import READ_TIMES
from dask_batchinfer.io.retry import RetryStats
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.batching import BatchStats
from dask_batchinfer.pipeline.infer import infer_features
from dask_batchinfer.pipeline.preprocess import Prepared, preprocess_partition
from dask_batchinfer.pipeline.rows import Preprocess, unparsed_lines
from dask_batchinfer.worker import cache
from dask_batchinfer.worker.packed import Packed, unpack
from dask_batchinfer.worker.process import worker_address

__all__ = [
    "ModelLoad",
    "PartitionStats",
    "StageSettings",
    "encode_stage",
    "infer_stage",
    "infer_write_task",
    "measure_task",
    "predict_partition",
    "preprocess_stage",
    "preprocess_task",
    "Reads",
    "process_bundle",
    "process_task",
    "read_stage",
    "write_stage",
]


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """What the stages of one job need; every task carries it (a few hundred bytes).

    ``job`` names the job in its task keys. ``output``, ``storage_options``
    (credentials by reference, see :mod:`dask_batchinfer.secrets`),
    ``partition_on`` and ``schema`` are for the write stage.
    """

    model: ModelSpec
    preprocess: Preprocess | None = None
    keep: tuple[str, ...] = ()
    on_error: str = "raise"
    job: str = ""
    output: str = ""
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    partition_on: tuple[str, ...] = ()
    schema: pa.Schema | None = None


@dataclasses.dataclass(frozen=True)
class ModelLoad:
    """The model loads of one worker process, as its cache counted them when a partition ran."""

    worker: str | None
    loads: int
    load_seconds: float


@dataclasses.dataclass
class PartitionStats:
    """What the stages of one partition did: times (seconds), where, and its commit.

    ``timeline`` holds one record per stage run (``stage``, ``partition``,
    ``worker``, ``start``, ``end`` as ``time.time()``, ``rows``);
    ``model_load`` the loads of the worker that ran the model.
    """

    number: int
    slug: str
    rows_in: int = 0
    worker: str | None = None
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    infer_seconds: float = 0.0
    write_seconds: float = 0.0
    retries: int = 0
    batch: BatchStats = dataclasses.field(default_factory=BatchStats)
    marker: Marker | None = None
    timeline: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    model_load: ModelLoad | None = None
    #: ``time.perf_counter()`` on the client when it learnt of the commit.
    finished: float = 0.0


def _record(
    stats: PartitionStats,
    stage: str,
    start: float,
    end: float | None = None,
    rows: int | None = None,
    worker: str | None = None,
) -> None:
    """Note that ``stage`` ran from ``start`` (``time.time()``) until ``end`` (default: now)."""
    stats.timeline.append(
        {
            "stage": stage,
            "partition": stats.number,
            "worker": worker or worker_address(),
            "start": start,
            "end": time.time() if end is None else end,
            "rows": rows,
        }
    )


def read_stage(
    frame: pd.DataFrame, partition: Partition, settings: StageSettings
) -> PartitionStats:
    """Start a partition's statistics with its read (done by the input's own task)."""
    rows_in = len(frame) + len(frame.attrs.get(BAD_LINES, ()))  # lines set aside count as rows in
    stats = PartitionStats(partition.number, partition.slug, rows_in, worker_address())
    read = frame.attrs.get(READ_TIMES)
    if read:
        stats.read_seconds = read[1] - read[0]
        _record(stats, "read", read[0], read[1], len(frame), read[2] if len(read) > 2 else None)
    return stats


def preprocess_stage(
    frame: pd.DataFrame, partition: Partition, settings: StageSettings, stats: PartitionStats
) -> Prepared:
    """Run ``preprocess`` and the model's ``prepare`` step (CPU): the features, the kept
    columns, the rows they failed on."""
    start = time.time()
    prepared = preprocess_partition(
        frame,
        preprocess=settings.preprocess,
        keep=settings.keep,
        number=partition.number,
        source=partition.source,
        on_error=settings.on_error,
        model=settings.model,
    )
    lines = frame.attrs.get(BAD_LINES)
    if lines:  # the reader's, with quarantine: beside the rows preprocess set aside
        prepared.bad = pd.concat([prepared.bad, unparsed_lines(prepared.kept, lines)])
    _record(stats, "preprocess", start, rows=len(frame))
    stats.preprocess_seconds = time.time() - start
    return prepared


def infer_stage(
    prepared: Prepared, partition: Partition, settings: StageSettings, stats: PartitionStats
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the model: ``(kept columns + outputs, bad rows of both stages)``."""
    start = time.time()
    result, bad = infer_features(
        prepared.features,
        prepared.kept,
        model=settings.model,
        number=partition.number,
        source=partition.source,
        stats=stats.batch,
        on_error=settings.on_error,
        positions=prepared.positions,
        prepared=prepared.ready,
    )
    if len(prepared.bad):
        bad = pd.concat([prepared.bad, bad]) if len(bad) else prepared.bad
    _record(stats, "infer", start, rows=len(result))
    stats.infer_seconds = time.time() - start
    return result, bad


def write_stage(
    result: pd.DataFrame,
    bad: pd.DataFrame,
    partition: Partition,
    settings: StageSettings,
    stats: PartitionStats,
) -> Marker:
    """Write the partition's files and quarantined rows, then commit its marker."""
    start = time.time()
    fs, root = url_to_fs(settings.output, secrets.resolve(settings.storage_options))
    if is_local(fs) and not fs.isdir(root):  # created by the client before any task
        raise ClusterError(
            f"{worker_address() or 'this worker'} does not see the output folder {root}, which "
            f"the client created: it runs on another machine. Write to shared storage (s3://, "
            f"or a network file system mounted at the same path everywhere)"
        )
    retries = RetryStats()
    assert settings.schema is not None, "the write stage needs the output schema"
    files = write_partition(
        result,
        fs=fs,
        root=root,
        stem=partition.stem,
        schema=settings.schema,
        partition_on=settings.partition_on,
        stats=retries,
    )
    errors = write_errors(bad, fs=fs, root=root, stem=partition.stem, stats=retries)
    marker = Marker(
        partition.slug,
        partition.source,
        partition.fingerprint,
        tuple(files),
        stats.rows_in,
        tuple(errors),
        stats.batch.truncated,
    )
    write_marker(fs, root, marker, retries)
    _record(stats, "write", start)
    stats.write_seconds = time.time() - start
    stats.retries = retries.retries
    stats.marker = marker
    return marker


def encode_stage(result: pd.DataFrame, settings: StageSettings, stats: PartitionStats) -> int:
    """Encode the outputs as the write stage would, writing nothing; the file's bytes."""
    start = time.time()
    table = pa.Table.from_pandas(result, schema=settings.schema, preserve_index=False)
    size = len(encode(table))
    stats.write_seconds = time.time() - start
    return size


# --- tasks ---------------------------------------------------------------------


Shipped = StageSettings | Packed[StageSettings]  # what tasks receive: packed by the client


def preprocess_task(
    frame: pd.DataFrame, partition: Partition, shipped: Shipped
) -> tuple[Prepared, PartitionStats]:
    """The CPU pool's task on a mixed cluster: read and preprocess."""
    settings = unpack(shipped)
    stats = read_stage(frame, partition, settings)
    return preprocess_stage(frame, partition, settings, stats), stats


def infer_write_task(
    staged: tuple[Prepared, PartitionStats], partition: Partition, shipped: Shipped
) -> PartitionStats:
    """The model pool's task on a mixed cluster: infer, write, commit."""
    settings = unpack(shipped)
    prepared, stats = staged
    stats.worker = worker_address()
    result, bad = infer_stage(prepared, partition, settings, stats)
    loads = cache.local_stats().get(settings.model.cache_key)
    if loads:
        stats.model_load = ModelLoad(stats.worker, loads["loads"], loads["load_seconds"])
    write_stage(result, bad, partition, settings, stats)
    return stats


def process_task(frame: pd.DataFrame, partition: Partition, shipped: Shipped) -> PartitionStats:
    """Every stage in one task, on a single-pool cluster (no transfer between stages)."""
    settings = unpack(shipped)
    return infer_write_task(preprocess_task(frame, partition, settings), partition, settings)


class Reads:
    """Read tasks carried unopened into a bundle task: Dask runs the tasks given as a task's
    arguments before it starts, which would hold every partition of the bundle in memory at
    once; these run one at a time inside it."""

    __slots__ = ("tasks",)

    def __init__(self, tasks: Sequence[Callable[[], pd.DataFrame]]) -> None:
        self.tasks = tuple(tasks)


def process_bundle(
    reads: Reads, partitions: Sequence[Partition], shipped: Shipped
) -> list[PartitionStats]:
    """Several partitions in one task, each read, processed and committed in turn (partitions
    too quick to be worth a task each: see ``job/tasks.py``)."""
    settings = unpack(shipped)
    return [
        process_task(read(), partition, settings)
        for read, partition in zip(reads.tasks, partitions, strict=True)
    ]


def measure_task(
    frame: pd.DataFrame, partition: Partition, shipped: Shipped, batch_sizes: Sequence[int]
) -> dict[str, Any]:
    """``plan()``'s task: preprocess, the model at each batch size, encoding; nothing written."""
    settings = unpack(shipped)
    started = time.time()
    stats = read_stage(frame, partition, settings)
    prepared = preprocess_stage(frame, partition, settings, stats)
    warm = min(8, len(prepared.features))
    infer_stage(
        dataclasses.replace(
            prepared, features=prepared.features.iloc[:warm], kept=prepared.kept.iloc[:warm]
        ),
        partition,
        settings,
        stats,
    )  # first-call costs
    infer: dict[int, float] = {}
    result = None
    for size in batch_sizes:
        sized = dataclasses.replace(settings, model=settings.model.with_options(batch_size=size))
        result, _ = infer_stage(prepared, partition, sized, stats)
        infer[size] = stats.infer_seconds
    assert result is not None
    return {
        "worker": stats.worker,
        "started": started,
        "rows": len(frame),
        "read_seconds": stats.read_seconds,
        "preprocess_seconds": stats.preprocess_seconds,
        "infer_seconds": infer,
        "bytes": encode_stage(result, settings, stats),
        "write_seconds": stats.write_seconds,
    }


def predict_partition(
    frame: pd.DataFrame, shipped: Shipped, partition_info: dict | None = None
) -> pd.DataFrame:
    """``predict()``'s task: preprocess and infer one partition; ``keep`` + output columns."""
    settings = unpack(shipped)
    partition = Partition(partition_info["number"] if partition_info else -1, "", None, "")
    stats = read_stage(frame, partition, settings)
    prepared = preprocess_stage(frame, partition, settings, stats)
    result, _ = infer_stage(prepared, partition, settings, stats)
    return result
