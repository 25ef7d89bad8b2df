"""Run a job's partitions on the cluster through a bounded window.

Each partition to run becomes its read (from the input's own graph) and its
stage task(s): one task for every stage on a single-pool cluster; on a mixed
cluster a preprocess task on the CPU pool and an infer-and-write task on the
model pool, routed with ``resources=`` at submit time (graph-time
``dask.annotate`` is dropped by current Dask DataFrames, dask/dask#10937).
Only a bounded window of partitions is in flight, so memory stays flat
however large the input; only small :class:`PartitionStats` come back. The
window follows the threads of the workers present, counted every tick, so
that it grows and shrinks with an adaptive cluster; a
:class:`~dask_batchinfer.job.demand.Demand` shows the scheduler the partitions
waiting behind it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from dask.optimization import cull

from dask_batchinfer.cluster.local import Pools
from dask_batchinfer.errors import (
    BadRowsError,
    ClusterError,
    PartitionError,
    PartitionTimeoutError,
)
from dask_batchinfer.io.commit import Partition
from dask_batchinfer.job.demand import Demand
from dask_batchinfer.job.options import JobOptions
from dask_batchinfer.pipeline.rows import where
from dask_batchinfer.pipeline.stages import (
    PartitionStats,
    StageSettings,
    infer_write_task,
    preprocess_task,
    process_task,
)
from dask_batchinfer.report.progress import Progress
from dask_batchinfer.worker.packed import Packed
from dask_batchinfer.worker.process import workers_killed

__all__ = ["Executor", "submit_read", "window_size"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Flight:
    """A partition in flight: since when (``time.monotonic()``), which attempt, deaths so far."""

    partition: Partition
    started: float
    attempt: int
    killed: int = 0  # workers that died running it in earlier submissions


def submit_read(client: Any, graph: dict, key: Hashable, resources: dict | None = None) -> Any:
    """A future of one input partition: its key computed from the input's own graph."""
    return client.get(cull(graph, [key])[0], [key], sync=False, resources=resources)[0]


def window_size(pools: Pools, options: JobOptions) -> int:
    """Partitions in flight at once: the model threads plus the CPU pool's lead, or
    ``inflight-per-thread`` per thread on a single-pool cluster."""
    if pools.mixed:
        return max(1, pools.model_threads * (1 + options.prefetch_per_model_thread))
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
    window : callable
        ``window(pools)``: the partitions in flight at once on ``pools``,
        asked again whenever the workers present change.
    bad_rows_allowed : int, optional
        Stop with :class:`BadRowsError` once more rows than this were quarantined.
    progress : Progress, optional
        Told of every committed partition.
    stats : list, optional
        Receives the statistics of every partition as it commits (so that
        they are there after a failure too); default a new list, ``self.stats``.
    timeout : float, optional
        Seconds a partition may take from its submission; past it the
        partition is cancelled and submitted once more, then fails the job
        with :class:`PartitionTimeoutError`.
    heartbeat : float, default 30
        While no partition commits for this long, tell ``progress`` which
        partition in flight is the oldest and its age.
    no_workers : float, optional
        Fail with :class:`ClusterError` once the cluster has had no worker
        for this long.
    demand : Demand, optional
        Placeholders of the partitions not yet submitted, released as they are.
    """

    def __init__(
        self,
        client: Any,
        ddf: Any,
        pools: Pools,
        settings: StageSettings,
        *,
        window: Callable[[Pools], int],
        bad_rows_allowed: int | None = None,
        progress: Progress | None = None,
        stats: list[PartitionStats] | None = None,
        timeout: float | None = None,
        heartbeat: float = 30.0,
        no_workers: float | None = None,
        demand: Demand | None = None,
    ) -> None:
        self.client = client
        self.graph = dict(ddf.__dask_graph__())
        self.keys = ddf.__dask_keys__()
        self.pools = pools
        self.settings = settings
        self.shipped = Packed(settings)  # pickled once; the scheduler passes bytes along
        self.window_of = window
        self.window = window(pools)
        self.bad_rows_allowed = bad_rows_allowed
        self.progress = progress
        self.stats: list[PartitionStats] = [] if stats is None else stats
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.tick = min(2.0, timeout / 4) if timeout else 2.0
        self.quarantined = 0
        self.last_commit = self.last_heartbeat = self.last_worker_seen = time.monotonic()
        self.last_worker_check = 0.0
        self.no_workers = no_workers
        self.demand = demand
        self.task = "infer" if pools.mixed else "process"  # a partition's last task
        if demand is not None:
            demand.retarget(self.task)

    def _submit(self, partition: Partition, attempt: int = 1) -> Any:
        c, pools, settings = self.client, self.pools, self.settings
        cpu = {pools.preprocess: 1} if pools.mixed else None
        read = submit_read(c, self.graph, self.keys[partition.number], cpu)
        name = f"batchinfer-{settings.job}-{partition.number}"
        if attempt > 1:
            name += f"-attempt{attempt}"
        if not pools.mixed:
            done = c.submit(process_task, read, partition, self.shipped, key=f"{self.task}-{name}")
        else:
            staged = c.submit(
                preprocess_task,
                read,
                partition,
                self.shipped,
                resources=cpu,
                key=f"preprocess-{name}",
            )
            done = c.submit(
                infer_write_task,
                staged,
                partition,
                self.shipped,
                resources={pools.model: 1},
                key=f"{self.task}-{name}",
            )
        return done

    def run(self, todo: list[Partition]) -> list[PartitionStats]:
        """Run ``todo``; return each partition's statistics in the order they committed."""
        queue = collections.deque(todo)
        flying: dict[Any, _Flight] = {}
        self._fill(queue, flying)
        try:
            while flying:
                for future in self._wait(flying):
                    self._collect(future, flying.pop(future), flying)
                self._check_time(flying)
                self._fill(queue, flying)
        except BaseException:
            for future in flying:
                future.cancel()
            raise
        return self.stats

    def _fill(self, queue: collections.deque[Partition], flying: dict[Any, _Flight]) -> None:
        """Submit waiting partitions until the window is full (it may have shrunk: then none)."""
        while queue and len(flying) < self.window:
            self._launch(queue.popleft(), flying)
        if self.demand is not None:
            self.demand.shrink(len(queue))

    def _launch(
        self, partition: Partition, flying: dict[Any, _Flight], attempt: int = 1, killed: int = 0
    ) -> None:
        future = self._submit(partition, attempt)
        flying[future] = _Flight(partition, time.monotonic(), attempt, killed)

    def _wait(self, flying: dict[Any, _Flight]) -> list[Any]:
        """The futures that finished within the next tick (a few seconds at most)."""
        from distributed import wait

        with self.client.as_current():  # wait() asks for the current client
            try:
                done, _ = wait(list(flying), timeout=self.tick, return_when="FIRST_COMPLETED")
            except TimeoutError:
                return []
        return [f for f in flying if f in done]

    def _collect(self, future: Any, flight: _Flight, flying: dict[Any, _Flight]) -> None:
        """Take a finished partition's statistics, or submit it again after a worker died."""
        from distributed import KilledWorker

        try:
            stats: PartitionStats = future.result()
        except KilledWorker as err:
            if flight.killed:
                raise self._killer(flight, err) from err
            # Workers killed from outside (preemption, an OOM killer, a restart) can hit the
            # same partition several times in a row: one more try before blaming it.
            logger.warning(
                "%s: its workers died %d times; submitting it once more",
                where(flight.partition.number, flight.partition.source),
                workers_killed(),
            )
            self._launch(flight.partition, flying, flight.attempt + 1, killed=workers_killed())
            return
        finally:
            future.release()
        stats.finished = time.perf_counter()
        self.stats.append(stats)
        self.quarantined += stats.marker.rows_quarantined if stats.marker else 0
        self.last_commit = time.monotonic()
        if self.progress is not None:
            self.progress.update(stats)
        self._check_budget(self.quarantined)

    def _check_time(self, flying: dict[Any, _Flight]) -> None:
        """Cancel and retry once a partition past ``timeout``; a heartbeat while none commits."""
        now = time.monotonic()
        for future, flight in list(flying.items()):
            age = now - flight.started
            if self.timeout is None or age <= self.timeout:
                continue
            future.cancel()
            del flying[future]
            if flight.attempt > 1:
                p = flight.partition
                raise PartitionTimeoutError(
                    f"{where(p.number, p.source)} ran longer than partition_timeout="
                    f"{self.timeout:g} s twice (on two attempts): a hung or very slow "
                    f"partition. Look at its input, or raise partition_timeout",
                    partition=p.number,
                    source=p.source,
                    seconds=self.timeout,
                )
            place = where(flight.partition.number, flight.partition.source)
            logger.warning("%s ran %.0f s, past partition_timeout: retrying once", place, age)
            self._launch(flight.partition, flying, flight.attempt + 1, flight.killed)
        self._check_workers(now)
        quiet = now - max(self.last_commit, self.last_heartbeat)
        if flying and self.progress is not None and quiet >= self.heartbeat:
            slowest = min(flying.values(), key=lambda f: f.started)
            self.progress.heartbeat(
                where(slowest.partition.number, slowest.partition.source), now - slowest.started
            )
            self.last_heartbeat = now

    def _check_workers(self, now: float) -> None:
        """At most once a tick (one scheduler call), not after every commit: size the window
        to the threads present; fail once no worker was there for ``no_workers`` seconds."""
        if now - self.last_worker_check < self.tick:
            return
        self.last_worker_check = now
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        if workers:
            self.last_worker_seen = now
            self.pools = self.pools.recount(workers)
            self.window = self.window_of(self.pools)
        elif self.no_workers is not None and now - self.last_worker_seen > self.no_workers:
            raise ClusterError(
                f"the cluster has had no worker for {now - self.last_worker_seen:.0f} s "
                f"(batchinfer.no-workers-timeout); start workers (dask worker SCHEDULER), or "
                f"check why they exit (their logs; a memory limit below what an idle worker "
                f"holds makes them restart forever). Committed partitions are kept: a re-run "
                f"resumes"
            )

    def _killer(self, flight: _Flight, err: BaseException) -> PartitionError:
        partition, deaths = flight.partition, flight.killed + workers_killed()
        return PartitionError(
            f"{where(partition.number, partition.source)} killed {deaths} workers (each died "
            f"while running it, over two submissions): most likely it needs more memory than a "
            f"worker may use. Lower the model's batch_size, make partitions smaller "
            f"(batchinfer.partition-size), or give workers more memory (batchinfer.memory-limit "
            f"for the local engine, dask worker --memory-limit); a crash in native code "
            f"(segfault) looks the same. If workers are being killed from outside, raise "
            f"distributed.scheduler.allowed-failures. "
            f"Cause: {err}",
            partition=partition.number,
            source=partition.source,
        )

    def _check_budget(self, quarantined: int) -> None:
        if self.bad_rows_allowed is not None and quarantined > self.bad_rows_allowed:
            raise BadRowsError(
                f"{quarantined} bad rows quarantined so far, more than max_bad_rows allows; "
                f"see the _errors/ folder of the output for the rows and their errors"
            )
