"""``Plan``: what :func:`~dask_batchinfer.job.plan` measured, and what it projects from that.

Pure: the projections (list scheduling of partitions of the mean measured
size over the cluster's threads, at any batch size tried) and the text and
HTML renderings need no cluster; ``plan.py`` does the measuring.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dask_batchinfer.errors import InputError
from dask_batchinfer.report.html import plan_html

__all__ = ["Plan"]


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
        Busy time per row by stage (read, preprocess, infer at ``batch_size``,
        write = Parquet encoding).
    batch_sizes : dict of int to float
        Inference rows per second (one thread) at each batch size tried.
    batch_size : int
        The spec's batch size: the one the job will run with, and the one
        ``stage_seconds_per_row``, ``projected_seconds`` and ``project()`` assume.
    recommended_batch_size : int
        The batch size that ran fastest; ``recommended_projected_seconds``
        projects the job at it (the same figure when it is ``batch_size``).
    projected_seconds : float
        Reading, inference and writing of the whole input on the current
        cluster at ``batch_size`` (start-up excluded), ``projected_total_seconds``
        with start-up.
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
    batch_size: int
    recommended_batch_size: int
    uncertainty: float | None
    output_bytes: int
    cpu_threads: int = 0
    # per batch size tried: inference seconds per row, each timed partition's seconds
    infer_seconds_per_row: dict[int, float] = dataclasses.field(default_factory=dict, repr=False)
    partition_seconds: dict[int, list[float]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def threads_per_worker(self) -> float:
        return self.threads / max(self.workers, 1)

    @property
    def projected_seconds(self) -> float:
        return self._makespan(self.threads, self.batch_size)

    @property
    def recommended_projected_seconds(self) -> float:
        return self._makespan(self.threads, self.recommended_batch_size)

    @property
    def projected_total_seconds(self) -> float:
        return self.cluster_seconds + self.model_load_seconds + self.projected_seconds

    @property
    def seconds_per_row(self) -> float:
        return sum(self.stage_seconds_per_row.values())

    def project(self, workers: int, batch_size: int | None = None) -> float:
        """Projected seconds (start-up excluded) on ``workers`` workers like the current ones.

        At ``batch_size`` (default: the spec's), one of the sizes tried.
        """
        if workers < 1:
            raise InputError(f"workers={workers!r}: expected a positive integer")
        if batch_size is not None and batch_size not in self.infer_seconds_per_row:
            raise InputError(
                f"batch_size={batch_size!r}: not measured; "
                f"plan() tried {sorted(self.infer_seconds_per_row)}"
            )
        threads = max(1, round(workers * self.threads_per_worker))
        return self._makespan(threads, batch_size or self.batch_size)

    def _makespan(self, threads: int, batch_size: int) -> float:
        """Partitions of the mean measured size in waves of ``threads`` (list scheduling).

        On a mixed cluster the CPU pool (read, preprocess) and the model pool
        (infer, write) work side by side: the slower of the two sets the pace.
        """
        if not self.partitions:
            return 0.0
        stage = dict(self.stage_seconds_per_row)
        stage["infer"] = self.infer_seconds_per_row.get(batch_size, stage["infer"])
        cpu_part = stage["read"] + stage["preprocess"] if self.cpu_threads else 0.0
        per_partition = (sum(stage.values()) - cpu_part) * self.rows / self.partitions
        model_time = math.ceil(self.partitions / threads) * per_partition
        cpu_time = 0.0
        if self.cpu_threads:
            cpu_time = (
                math.ceil(self.partitions / self.cpu_threads)
                * cpu_part
                * self.rows
                / self.partitions
            )
        longest = max(self.partition_seconds.get(batch_size, []), default=0.0)
        longest = 0.0 if self.cpu_threads else longest
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
            "batch_size": self.batch_size,
            "recommended_batch_size": self.recommended_batch_size,
            "projected_seconds": round(self.projected_seconds, 3),
            "recommended_projected_seconds": round(self.recommended_projected_seconds, 3),
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
        size, best = self.batch_size, self.recommended_batch_size
        lines = [
            f"dask-batchinfer plan: {self.partitions:,} partitions, {rows}",
            f"  measured    {self.sample_partitions} partitions, {self.sample_rows:,} rows, "
            f"on {self.workers} workers / {self.threads} threads",
            f"  start-up    cluster {self.cluster_seconds:.1f} s, model load "
            f"{self.model_load_seconds:.1f} s",
            "  per row     "
            + ", ".join(f"{k} {v * 1e6:,.1f} us" for k, v in self.stage_seconds_per_row.items())
            + f"  (batch size {size})",
            "  batch size  "
            + ", ".join(
                f"{b}: {r:,.0f} rows/s" + (" (the spec's)" if b == size else "")
                for b, r in self.batch_sizes.items()
            )
            + f"  -> recommended {best}",
            f"  projected   {self._interval(self.projected_seconds)} on this cluster at batch "
            f"size {size}, the spec's ({_duration(self.projected_total_seconds)} with start-up)",
            *(
                [
                    f"  recommended {_duration(self.recommended_projected_seconds)} at batch size "
                    f"{best}: spec.with_options(batch_size={best})"
                ]
                if best != size
                else []
            ),
            "  on N workers "
            + ", ".join(f"{n}: {_duration(self.project(n))}" for n in self._worker_counts())
            + f"  (batch size {size})",
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
