"""``plan()``: measure a sample before you run, and project the whole job.

A plan runs a few partitions through the real path on the real cluster (read,
preprocess, the model at a few batch sizes, Parquet encoding of the outputs)
without writing anything, then projects:

- the job's time on the current cluster and on N workers like these,
- the batch size that ran fastest,
- the output size.

It says how many partitions and rows it measured and how much the per-row
cost varied between them (the stated uncertainty). Not included: storage
latency of the commit (small on local disk, larger on S3) and partitions much
unlike the sampled ones.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from dask_batchinfer import _config, secrets
from dask_batchinfer.cache import model_stats
from dask_batchinfer.cluster import Pools, connect, detect_pools, model_workers
from dask_batchinfer.errors import InputError
from dask_batchinfer.html import plan_html
from dask_batchinfer.io.read import InputFile, open_source
from dask_batchinfer.job.executor import submit_read
from dask_batchinfer.job.planner import partitions_of
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.packed import Packed
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.pipeline.stages import StageSettings, measure_task
from dask_batchinfer.plugins import warm_up
from dask_batchinfer.schema import check_spec, job_columns

__all__ = ["Plan", "plan"]


@dataclasses.dataclass
class Plan:
    """What :func:`plan` measured and what it projects.

    Attributes
    ----------
    partitions, rows : int
        The whole input (``rows`` estimated from file sizes unless ``rows_exact``).
    sample_partitions, sample_rows : int
        What was timed. One more partition per thread is run first and only
        counted (rows, bytes): each worker's first partition pays first-call
        costs (imports, caches) that the rest of the job does not.
    threads : int
        Threads that run partitions on the current cluster (model threads on
        a mixed cluster, whose CPU pool has ``cpu_threads``), ``workers`` the
        workers that hold them.
    cluster_seconds, model_load_seconds : float
        Start-up measured now: connecting to (or starting) the cluster, and
        loading the model on a worker.
    stage_seconds_per_row : dict of str to float
        Busy time per row by stage (read, preprocess, infer at the recommended
        batch size, write = Parquet encoding).
    batch_sizes : dict of int to float
        Inference rows per second (one thread) at each batch size tried.
    recommended_batch_size : int
    projected_seconds : float
        Reading, inference and writing of the whole input on the current
        cluster (start-up excluded), ``projected_total_seconds`` with start-up.
    uncertainty : float or None
        Relative half-width of an approximate 95% interval on the per-row
        cost (2 standard errors over the sampled partitions); None with one.
    output_bytes : int
        Projected size of the output (Parquet, as written).
    """

    partitions: int
    rows: int
    rows_exact: bool
    sample_partitions: int
    sample_rows: int
    threads: int
    workers: int
    cluster_seconds: float
    model_load_seconds: float
    stage_seconds_per_row: dict[str, float]
    batch_sizes: dict[int, float]
    recommended_batch_size: int
    uncertainty: float | None
    output_bytes: int
    cpu_threads: int = 0
    partition_seconds: list[float] = dataclasses.field(default_factory=list, repr=False)

    @property
    def threads_per_worker(self) -> float:
        return self.threads / max(self.workers, 1)

    @property
    def projected_seconds(self) -> float:
        return self._makespan(self.threads)

    @property
    def projected_total_seconds(self) -> float:
        return self.cluster_seconds + self.model_load_seconds + self.projected_seconds

    @property
    def seconds_per_row(self) -> float:
        return sum(self.stage_seconds_per_row.values())

    def project(self, workers: int) -> float:
        """Projected seconds (start-up excluded) on ``workers`` workers like the current ones."""
        if workers < 1:
            raise InputError(f"workers={workers!r}: expected a positive integer")
        threads = max(1, round(workers * self.threads_per_worker))
        return self._makespan(threads)

    def _makespan(self, threads: int) -> float:
        """Partitions of the mean measured size in waves of ``threads`` (list scheduling).

        On a mixed cluster the CPU pool (read, preprocess) and the model pool
        (infer, write) work side by side: the slower of the two sets the pace.
        """
        if not self.partitions:
            return 0.0
        stage = self.stage_seconds_per_row
        cpu_part = stage["read"] + stage["preprocess"] if self.cpu_threads else 0.0
        per_partition = (self.seconds_per_row - cpu_part) * self.rows / self.partitions
        model_time = math.ceil(self.partitions / threads) * per_partition
        cpu_time = 0.0
        if self.cpu_threads:
            cpu_time = (
                math.ceil(self.partitions / self.cpu_threads)
                * cpu_part
                * self.rows
                / self.partitions
            )
        longest = 0.0 if self.cpu_threads else max(self.partition_seconds, default=0.0)
        return max(model_time, cpu_time, longest)

    def summary(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "rows": self.rows,
            "rows_exact": self.rows_exact,
            "sample_partitions": self.sample_partitions,
            "sample_rows": self.sample_rows,
            "workers": self.workers,
            "threads": self.threads,
            "cluster_seconds": round(self.cluster_seconds, 3),
            "model_load_seconds": round(self.model_load_seconds, 3),
            "seconds_per_row": self.seconds_per_row,
            "stage_seconds_per_row": self.stage_seconds_per_row,
            "batch_sizes": self.batch_sizes,
            "recommended_batch_size": self.recommended_batch_size,
            "projected_seconds": round(self.projected_seconds, 3),
            "projected_total_seconds": round(self.projected_total_seconds, 3),
            "uncertainty": self.uncertainty,
            "output_bytes": self.output_bytes,
            "projections": {n: round(self.project(n), 3) for n in self._worker_counts()},
        }

    def _worker_counts(self) -> list[int]:
        counts = {1, 2, 4, 8, 16, 32, self.workers}
        return sorted(c for c in counts if c >= 1)

    def _interval(self, seconds: float) -> str:
        if self.uncertainty is None:
            return f"{_duration(seconds)} (one partition sampled: spread unknown)"
        return f"{_duration(seconds)} ± {self.uncertainty:.0%}"

    def __str__(self) -> str:
        rows = f"{self.rows:,} rows" + ("" if self.rows_exact else " (estimated)")
        lines = [
            f"dask-batchinfer plan: {self.partitions:,} partitions, {rows}",
            f"  measured    {self.sample_partitions} partitions, {self.sample_rows:,} rows, "
            f"on {self.workers} workers / {self.threads} threads",
            f"  start-up    cluster {self.cluster_seconds:.1f} s, model load "
            f"{self.model_load_seconds:.1f} s",
            "  per row     "
            + ", ".join(f"{k} {v * 1e6:,.1f} us" for k, v in self.stage_seconds_per_row.items()),
            "  batch size  "
            + ", ".join(f"{b}: {r:,.0f} rows/s" for b, r in self.batch_sizes.items())
            + f"  -> recommended {self.recommended_batch_size}",
            f"  projected   {self._interval(self.projected_seconds)} on this cluster "
            f"({_duration(self.projected_total_seconds)} with start-up)",
            "  on N workers "
            + ", ".join(f"{n}: {_duration(self.project(n))}" for n in self._worker_counts()),
            f"  output      ~{_bytes(self.output_bytes)}",
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return plan_html(self.summary())


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _timed(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measurements to time: all but each worker's first (when it has more than one)."""
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for m in measured:
        by_worker.setdefault(m["worker"], []).append(m)
    kept = []
    for runs in by_worker.values():
        runs.sort(key=lambda m: m["started"])
        kept.extend(runs[1:] if len(runs) > 1 else runs)
    return kept


def _sample_indices(n: int, k: int) -> list[int]:
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n // 2]


def _batch_sizes(model: ModelSpec, batch_sizes: Sequence[int] | None) -> list[int]:
    if batch_sizes is None:
        base = int(model.batch_size or _config.get("batch-size"))
        batch_sizes = sorted({max(1, base // 4), base, base * 4})
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise InputError(f"batch_sizes={batch_sizes!r}: expected positive integers")
    return sizes


def plan(
    source: Any,
    model: ModelSpec,
    *,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] | str | None = None,
    client: Any = None,
    sample_partitions: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Plan:
    """Measure a sample of the input on the cluster and project the full job.

    Parameters
    ----------
    source, model, preprocess, keep, client, storage_options
        As for :func:`~dask_batchinfer.run_job`.
    sample_partitions : int, optional
        Partitions to measure, spread over the input (default: two per
        thread that runs partitions, at least 3, at most all of them). More
        partitions narrow the uncertainty.
    batch_sizes : list of int, optional
        Batch sizes to try (default: the spec's batch size / 4, x1 and x4).

    Returns
    -------
    Plan
        Prints as a summary; renders as HTML in Jupyter. Nothing is written.

    Examples
    --------
    >>> p = dbi.plan("data/", spec)            # doctest: +SKIP
    >>> p.projected_seconds, p.recommended_batch_size  # doctest: +SKIP
    """
    model = check_spec(model)
    options = dict(storage_options or {})
    public, secret = secrets.split(options)
    if secret:
        raise InputError(
            "plan() takes no credentials in storage_options; let the workers find them "
            "(environment, AWS profiles) or use run_job"
        )
    ddf, groups = open_source(source, options, public)
    columns = job_columns(ddf._meta, model, keep=keep, preprocess=preprocess)
    settings = StageSettings(model=model, preprocess=preprocess, keep=columns.keep,
                             schema=columns.schema)  # fmt: skip
    sizes = _batch_sizes(model, batch_sizes)
    if sample_partitions is not None and sample_partitions < 1:
        raise InputError(f"sample_partitions={sample_partitions!r}: expected a positive integer")
    start = time.perf_counter()
    with connect(client) as c:
        cluster_seconds = time.perf_counter() - start
        pools = detect_pools(c, None)
        sample = _Sample(c, pools, ddf, groups, settings, sizes)
        with warm_up(c, settings.model, pools):  # the model leaves the workers after
            sample.run(sample_partitions)
    return sample.project(cluster_seconds)


class _Sample:
    """The partitions ``plan()`` runs on the cluster, and what they measured."""

    def __init__(self, client: Any, pools: Pools, ddf: Any, groups: list[list[InputFile]] | None,
                 settings: StageSettings, batch_sizes: list[int]) -> None:  # fmt: skip
        self.client, self.pools, self.ddf, self.groups = client, pools, ddf, groups
        self.settings, self.batch_sizes = settings, batch_sizes
        self.threads = pools.model_threads if pools.mixed else pools.total_threads
        self.workers = len(model_workers(client, pools))
        self.sampled: list[int] = []
        self.every: list[dict[str, Any]] = []
        self.load_seconds = 0.0

    def run(self, sample_partitions: int | None) -> None:
        """Measure the sampled partitions (the model is loaded)."""
        c, n = self.client, self.ddf.npartitions
        k = sample_partitions or min(n, max(3, 2 * self.threads))
        loads = model_stats(c, self.settings.model)
        self.load_seconds = max((s["load_seconds"] for s in loads.values() if s), default=0.0)
        graph, keys = dict(self.ddf.__dask_graph__()), self.ddf.__dask_keys__()
        partitions = partitions_of(keys, self.groups, "")
        # one extra partition per thread: each worker's first one pays first-call
        # costs (imports, caches) and is not timed, only counted
        self.sampled = _sample_indices(n, min(n, k + self.threads))
        resources = {self.pools.model: 1} if self.pools.mixed else None
        futures = [
            c.submit(measure_task, submit_read(c, graph, keys[i]), partitions[i],
                     Packed(self.settings), self.batch_sizes, pure=False, resources=resources)
            for i in self.sampled
        ]  # fmt: skip
        self.every = c.gather(futures)

    def project(self, cluster_seconds: float) -> Plan:
        """The plan from the measurements."""
        every, n = self.every, self.ddf.npartitions
        all_rows = sum(m["rows"] for m in every)
        measured = _timed(every)
        sample_rows = sum(m["rows"] for m in measured)
        if sample_rows == 0:
            raise InputError("the sampled partitions are empty; nothing to measure")
        speeds = {b: sample_rows / max(sum(m["infer_seconds"][b] for m in measured), 1e-9)
                  for b in self.batch_sizes}  # fmt: skip
        best = max(speeds, key=lambda b: speeds[b])
        per_row = {
            stage: sum(m[f"{stage}_seconds"] for m in measured) / sample_rows
            for stage in ("read", "preprocess", "write")
        }
        per_row["infer"] = sum(m["infer_seconds"][best] for m in measured) / sample_rows
        per_row = {k: per_row[k] for k in ("read", "preprocess", "infer", "write")}
        partition_seconds = [
            m["read_seconds"] + m["preprocess_seconds"] + m["infer_seconds"][best]
            + m["write_seconds"] for m in measured
        ]  # fmt: skip
        rows_exact = len(self.sampled) == n
        rows = all_rows if rows_exact else self._estimated_rows(all_rows)
        return Plan(
            partitions=n, rows=int(rows), rows_exact=rows_exact,
            sample_partitions=len(measured), sample_rows=sample_rows, threads=self.threads,
            workers=self.workers, cluster_seconds=cluster_seconds,
            model_load_seconds=self.load_seconds, stage_seconds_per_row=per_row,
            batch_sizes={b: round(s, 1) for b, s in speeds.items()},
            recommended_batch_size=best, uncertainty=_uncertainty(partition_seconds, measured),
            output_bytes=int(sum(m["bytes"] for m in every) / max(all_rows, 1) * rows),
            cpu_threads=self.pools.total_threads - self.pools.model_threads
            if self.pools.mixed else 0,
            partition_seconds=partition_seconds,
        )  # fmt: skip

    def _estimated_rows(self, all_rows: int) -> float:
        """Rows of the whole input: from file sizes (bytes per row of the sample), or the mean."""
        if self.groups is None:
            return round(self.ddf.npartitions * all_rows / len(self.every))
        sizes = [sum(f.size for f in group) for group in self.groups]
        sample_bytes = sum(sizes[i] for i in self.sampled)
        return round(sum(sizes) * all_rows / sample_bytes) if sample_bytes else all_rows


def _uncertainty(partition_seconds: list[float], measured: list[dict[str, Any]]) -> float | None:
    costs = [t / m["rows"] for t, m in zip(partition_seconds, measured, strict=True) if m["rows"]]
    if len(costs) > 1 and statistics.mean(costs) > 0:
        return 2 * statistics.stdev(costs) / statistics.mean(costs) / math.sqrt(len(costs))
    return None
