"""Run a job's partitions on the cluster through a bounded window.

Each partition to run becomes its read (from the input's own graph) and its
stage task(s): one task for every stage on a single-pool cluster; on a mixed
cluster a preprocess task on the CPU pool and an infer-and-write task on the
model pool, routed with ``resources=`` at submit time (graph-time
``dask.annotate`` is dropped by current Dask DataFrames, dask/dask#10937).
Only a bounded window of partitions is in flight, so memory stays flat
however large the input; only small :class:`PartitionStats` come back.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator
from typing import Any

from dask.optimization import cull

from dask_batchinfer.cluster import Pools
from dask_batchinfer.errors import BadRowsError, PartitionError
from dask_batchinfer.io.commit import Partition
from dask_batchinfer.options import JobOptions
from dask_batchinfer.pipeline.rows import where
from dask_batchinfer.pipeline.stages import (
    PartitionStats,
    StageSettings,
    infer_write_task,
    preprocess_task,
    process_task,
)
from dask_batchinfer.progress import Progress
from dask_batchinfer.worker import workers_killed

__all__ = ["Executor", "submit_read", "window_size"]


def submit_read(client: Any, graph: dict, key: Hashable, resources: dict | None = None) -> Any:
    """A future of one input partition: its key computed from the input's own graph."""
    return client.get(cull(graph, [key])[0], [key], sync=False, resources=resources)[0]


def window_size(pools: Pools, options: JobOptions) -> int:
    """Partitions in flight at once: the model threads plus the CPU pool's lead, or
    ``inflight-per-thread`` per thread on a single-pool cluster."""
    if pools.mixed:
        return pools.model_threads + options.prefetch_per_model_thread * pools.model_threads
    return max(2, options.inflight_per_thread * pools.total_threads)


class Executor:
    """Submits partitions, gathers their statistics, enforces the bad-row budget.

    Parameters
    ----------
    client : distributed.Client
    ddf : dask.dataframe.DataFrame
        The (optimised) input.
    pools : Pools
        Where each stage runs.
    settings : StageSettings
        What every stage task carries.
    window : int
        Partitions in flight at once.
    bad_rows_allowed : int, optional
        Stop with :class:`BadRowsError` once more rows than this were quarantined.
    progress : Progress, optional
        Told of every committed partition.
    stats : list, optional
        Receives the statistics of every partition as it commits (so that
        they are there after a failure too); default a new list, ``self.stats``.
    """

    def __init__(self, client: Any, ddf: Any, pools: Pools, settings: StageSettings, *,
                 window: int, bad_rows_allowed: int | None = None,
                 progress: Progress | None = None,
                 stats: list[PartitionStats] | None = None) -> None:  # fmt: skip
        self.client = client
        self.graph = dict(ddf.__dask_graph__())
        self.keys = ddf.__dask_keys__()
        self.pools = pools
        self.settings = settings
        self.window = window
        self.bad_rows_allowed = bad_rows_allowed
        self.progress = progress
        self.stats: list[PartitionStats] = [] if stats is None else stats
        self.submitted: dict[str, Partition] = {}  # future key -> its partition

    def _submit(self, partition: Partition) -> Any:
        c, pools, settings = self.client, self.pools, self.settings
        cpu = {pools.preprocess: 1} if pools.mixed else None
        read = submit_read(c, self.graph, self.keys[partition.number], cpu)
        name = f"batchinfer-{settings.job}-{partition.number}"
        if not pools.mixed:
            done = c.submit(process_task, read, partition, settings, key=f"process-{name}")
        else:
            staged = c.submit(preprocess_task, read, partition, settings, resources=cpu,
                              key=f"preprocess-{name}")  # fmt: skip
            done = c.submit(infer_write_task, staged, partition, settings,
                            resources={pools.model: 1}, key=f"infer-{name}")  # fmt: skip
        self.submitted[done.key] = partition
        return done

    def run(self, todo: list[Partition]) -> list[PartitionStats]:
        """Run ``todo``; return each partition's statistics in the order they committed."""
        from distributed import as_completed

        pending = as_completed(loop=self.client.loop)
        queue: Iterator[Partition] = iter(todo)
        for partition in queue:
            pending.add(self._submit(partition))
            if pending.count() >= self.window:
                break
        quarantined = 0
        for future in pending:
            try:
                stats: PartitionStats = self._result(future)
                stats.finished = time.perf_counter()
                self.stats.append(stats)
                quarantined += stats.marker.rows_quarantined if stats.marker else 0
                if self.progress is not None:
                    self.progress.update(stats)
                self._check_budget(quarantined)
            except BaseException:
                for other in list(pending.futures):
                    other.cancel()
                raise
            finally:
                future.release()
            upcoming = next(queue, None)
            if upcoming is not None:
                pending.add(self._submit(upcoming))
        return self.stats

    def _result(self, future: Any) -> PartitionStats:
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as err:
            partition = self.submitted[future.key]
            raise PartitionError(
                f"{where(partition.number, partition.source)} killed {workers_killed()} workers "
                f"in a row (each died while running it): most likely it needs more memory than "
                f"a worker may use. Lower the model's batch_size, make partitions smaller "
                f"(batchinfer.partition-size), or give workers more memory (dask worker "
                f"--memory-limit); a crash in native code (segfault) looks the same. "
                f"Cause: {err}",
                partition=partition.number,
                source=partition.source,
            ) from err

    def _check_budget(self, quarantined: int) -> None:
        if self.bad_rows_allowed is not None and quarantined > self.bad_rows_allowed:
            raise BadRowsError(
                f"{quarantined} bad rows quarantined so far, more than max_bad_rows allows; "
                f"see the _errors/ folder of the output for the rows and their errors"
            )
