"""``plan()``: measure a sample before you run, and project the whole job.

A plan runs a few partitions through the real path on the real cluster (read,
preprocess, the model at a few batch sizes, Parquet encoding of the outputs)
without writing anything, then projects:

- the job's time on the current cluster and on N workers like these, as the
  job is configured (the spec's batch size, always among those tried),
- the batch size that ran fastest, and the time at that size when it differs,
- the output size.

It says how many partitions and rows it measured and how much the per-row
cost varied between them (the stated uncertainty). Not included: storage
latency of the commit (small on local disk, larger on S3) and partitions much
unlike the sampled ones.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from dask_batchinfer import _config
from dask_batchinfer.cluster.engine import choose_engine, connect
from dask_batchinfer.cluster.local import Pools, model_workers
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.read import InputFile
from dask_batchinfer.job.options import JobOptions
from dask_batchinfer.job.prepare import prepare
from dask_batchinfer.job.tasks import submit_read
from dask_batchinfer.job.worklist import partitions_of
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.pipeline.stages import StageSettings, measure_task
from dask_batchinfer.report.projection import Plan
from dask_batchinfer.worker.cache import model_stats
from dask_batchinfer.worker.packed import Packed

__all__ = ["Plan", "plan"]


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


def _spec_batch_size(model: ModelSpec) -> int:
    """The batch size the job will run with."""
    return int(model.batch_size or _config.get("batch-size"))


def _batch_sizes(model: ModelSpec, batch_sizes: Sequence[int] | None) -> list[int]:
    """The sizes to try: always the spec's, which the job will run with."""
    base = _spec_batch_size(model)
    if batch_sizes is None:
        batch_sizes = [max(1, base // 4), base, base * 4]
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise InputError(f"batch_sizes={batch_sizes!r}: expected positive integers")
    return sorted({*sizes, base})


def plan(
    source: Any,
    model: ModelSpec,
    *,
    preprocess: Preprocess | None = None,
    sample_partitions: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    **options: Any,
) -> Plan:
    """Measure a sample of the input on the cluster and project the full job.

    Parameters
    ----------
    source, model, preprocess
        As for :func:`~dask_batchinfer.run_job`.
    sample_partitions : int, optional
        Partitions to measure, spread over the input (default: two per
        thread that runs partitions, at least 3, at most all of them). More
        partitions narrow the uncertainty.
    batch_sizes : list of int, optional
        Batch sizes to try (default: the spec's batch size / 4, x1 and x4).
        The spec's is always tried: the projections are of the job as it
        will run, at the spec's batch size.
    **options
        Any option of :func:`~dask_batchinfer.run_job` (``keep``, ``columns``,
        ``filters``, ``format``, ``partition_on``, ``client``, ``pools``,
        ``storage_options``, ``upload``, ...), checked as the job checks them:
        the sample reads the columns and rows the job would, on the pools it
        would use, with its uploads and credentials. ``output`` is optional
        and nothing is written to it.

    Returns
    -------
    Plan
        Prints as a summary; renders as HTML in Jupyter. Nothing is written.

    Examples
    --------
    >>> p = dbi.plan("data/", spec)            # doctest: +SKIP
    >>> p.batch_size, p.projected_seconds  # the job as configured  # doctest: +SKIP
    >>> p.recommended_batch_size, p.recommended_projected_seconds  # doctest: +SKIP
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    job = prepare(source, model, preprocess, JobOptions.build(**options))
    sizes = _batch_sizes(job.model, batch_sizes)
    if sample_partitions is not None and sample_partitions < 1:
        raise InputError(f"sample_partitions={sample_partitions!r}: expected a positive integer")
    start = time.perf_counter()
    name = "plan-" + uuid.uuid4().hex[:8]
    settings = job.settings(name)
    with connect(job.options.client, choose_engine(job.input_bytes)) as c:
        cluster_seconds = time.perf_counter() - start
        with job.on_cluster(
            c, name, settings, writes=False
        ) as pools:  # its plugins go after; the model stays
            sample = _Sample(c, pools, job.ddf, job.groups, settings, sizes)
            sample.run(sample_partitions)
    return sample.project(cluster_seconds)


class _Sample:
    """The partitions ``plan()`` runs on the cluster, and what they measured."""

    def __init__(
        self,
        client: Any,
        pools: Pools,
        ddf: Any,
        groups: list[list[InputFile]] | None,
        settings: StageSettings,
        batch_sizes: list[int],
    ) -> None:
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
            c.submit(
                measure_task,
                submit_read(c, graph, keys[i]),
                partitions[i],
                Packed(self.settings),
                self.batch_sizes,
                pure=False,
                resources=resources,
            )
            for i in self.sampled
        ]
        self.every = c.gather(futures)

    def project(self, cluster_seconds: float) -> Plan:
        """The plan from the measurements."""
        every, n = self.every, self.ddf.npartitions
        all_rows = sum(m["rows"] for m in every)
        measured = _timed(every)
        sample_rows = sum(m["rows"] for m in measured)
        if sample_rows == 0:
            raise InputError("the sampled partitions are empty; nothing to measure")
        infer = {
            b: max(sum(m["infer_seconds"][b] for m in measured), 1e-9) / sample_rows
            for b in self.batch_sizes
        }
        size = _spec_batch_size(self.settings.model)  # always among those tried
        per_row = {
            stage: sum(m[f"{stage}_seconds"] for m in measured) / sample_rows
            for stage in ("read", "preprocess", "write")
        }
        per_row["infer"] = infer[size]
        per_row = {k: per_row[k] for k in ("read", "preprocess", "infer", "write")}
        partition_seconds = {
            b: [
                m["read_seconds"]
                + m["preprocess_seconds"]
                + m["infer_seconds"][b]
                + m["write_seconds"]
                for m in measured
            ]
            for b in self.batch_sizes
        }
        rows_exact = len(self.sampled) == n
        rows = all_rows if rows_exact else self._estimated_rows(all_rows)
        return Plan(
            partitions=n,
            rows=int(rows),
            rows_exact=rows_exact,
            sample_partitions=len(measured),
            sample_rows=sample_rows,
            threads=self.threads,
            workers=self.workers,
            cluster_seconds=cluster_seconds,
            model_load_seconds=self.load_seconds,
            stage_seconds_per_row=per_row,
            batch_sizes={b: round(1 / t, 1) for b, t in infer.items()},
            batch_size=size,
            recommended_batch_size=min(infer, key=lambda b: infer[b]),
            uncertainty=_uncertainty(partition_seconds[size], measured),
            output_bytes=int(sum(m["bytes"] for m in every) / max(all_rows, 1) * rows),
            cpu_threads=self.pools.total_threads - self.pools.model_threads
            if self.pools.mixed
            else 0,
            infer_seconds_per_row=infer,
            partition_seconds=partition_seconds,
        )

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
