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

Each refill of the window is one graph sent to the scheduler, and each
partition one task (its read fused into its stage task) where the input's
graph allows; the partitions that finished within a tick are gathered in one
call. The client's work per partition is thus a few dictionary operations,
not a round trip (see ``docs/scaling.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dask_batchinfer.cluster.engine import await_stopped, reaches_workers
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
from dask_batchinfer.job.tally import Tally
from dask_batchinfer.job.tasks import Launch, TaskGraphs, bundle_size
from dask_batchinfer.pipeline.rows import where
from dask_batchinfer.pipeline.stages import PartitionStats, StageSettings
from dask_batchinfer.report.progress import Progress
from dask_batchinfer.worker.process import workers_killed

__all__ = ["Executor", "window_size"]

logger = logging.getLogger(__name__)

#: Seconds to wait, after a partition finished, for others to gather and refill with it.
LINGER = 0.02
#: Seconds a failing job waits for its cancelled tasks still running on workers (they may
#: be writing to ``_staging/``) before it tidies up and raises; longer ones are left to run.
STRAGGLERS_WAIT = 5.0


@dataclasses.dataclass
class _Flight:
    """A task in flight: its partitions (one, or a bundle), since when (``time.monotonic()``),
    which attempt, deaths so far."""

    launch: Launch
    started: float = 0.0
    killed: int = 0  # workers that died running it in earlier submissions
    timed_out: int = 0  # times it ran past the timeout on its own (not in a bundle)

    @property
    def partition(self) -> Partition:
        """The first (for a single partition, the only) partition."""
        return self.launch.partitions[0]

    @property
    def place(self) -> str:
        """Where it is, for messages: its partition, or how many from which."""
        place = where(self.partition.number, self.partition.source)
        count = len(self.launch.partitions)
        return place if count == 1 else f"a task of {count} partitions from {place}"

    def singles(self, killed: int = 0, timed_out: int = 0) -> list[_Flight]:
        """Its partitions one per task, for their next attempt."""
        attempt = self.launch.attempt + 1
        return [
            _Flight(Launch((p,), attempt), killed=killed, timed_out=timed_out)
            for p in self.launch.partitions
        ]


def window_size(pools: Pools, options: JobOptions) -> int:
    """Partitions in flight at once: the model threads plus the CPU pool's lead, or
    ``inflight-per-thread`` per thread on a single-pool cluster."""
    if pools.mixed:
        return max(1, pools.model_threads * (1 + options.prefetch_per_model_thread))
    return max(2, options.inflight_per_thread * pools.total_threads)


class _Queue:
    """The partitions not yet submitted, in order: ``todo`` is read as they go (a
    :class:`~dask_batchinfer.job.worklist.Partitions` makes each when asked), never copied."""

    def __init__(self, todo: Sequence[Partition]) -> None:
        self.todo, self.next = todo, 0

    def __len__(self) -> int:
        return len(self.todo) - self.next

    def take(self, count: int) -> tuple[Partition, ...]:
        """The next ``count`` partitions (fewer at the end)."""
        end = min(self.next + count, len(self.todo))
        taken = tuple(self.todo[i] for i in range(self.next, end))
        self.next = end
        return taken


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
    tally : Tally, optional
        Counts the statistics of every partition as it commits (so that
        they are there after a failure too); default a new one, ``self.tally``.
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
        tally: Tally | None = None,
        timeout: float | None = None,
        heartbeat: float = 30.0,
        no_workers: float | None = None,
        demand: Demand | None = None,
    ) -> None:
        self.client = client
        self.graphs = TaskGraphs(ddf, pools, settings)
        self.pools = pools
        self.bundle = 1  # partitions per task, from their measured time (job/tasks.py)
        self.window_of = window
        self.window = window(pools)
        self.bad_rows_allowed = bad_rows_allowed
        self.progress = progress
        self.tally = Tally() if tally is None else tally
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.tick = min(2.0, timeout / 4) if timeout else 2.0
        self.quarantined = 0
        self.last_commit = self.last_heartbeat = self.last_worker_seen = time.monotonic()
        self.last_worker_check = 0.0
        self.no_workers = no_workers
        self.demand = demand
        if demand is not None:
            demand.retarget(self.graphs.task)

    def run(self, todo: Sequence[Partition]) -> Tally:
        """Run ``todo``; return what the committed partitions add up to."""
        from distributed import as_completed

        queue = _Queue(todo)
        flying: dict[Any, _Flight] = {}
        self.finished = as_completed(loop=self.client.loop)
        self.direct = reaches_workers(
            self.client, self.client.scheduler_info(n_workers=-1)["workers"]
        )
        self._fill(queue, flying)
        try:
            while flying:
                self._collect(self._wait(), flying)
                self._check_time(flying)
                self._fill(queue, flying)
        except BaseException as err:
            for future in flying:
                future.cancel()
            if isinstance(err, Exception):  # not on Ctrl-C: stop at once
                await_stopped(self.client, {f.key for f in flying}, STRAGGLERS_WAIT)
            raise
        finally:
            self.finished.clear()
        self._check_committed(todo)
        return self.tally

    def _check_committed(self, todo: Sequence[Partition]) -> None:
        """Fail, never report success, if a partition of ``todo`` has no marker: the window
        emptied without committing it (a bookkeeping bug; the job writes no ``_SUCCESS``)."""
        markers = self.tally.markers
        missing = len(todo) - len(markers)
        if missing <= 0:
            return
        p = next(p for p in todo if p.number not in markers)
        raise PartitionError(
            f"{where(p.number, p.source)} and {missing - 1} other partition(s) were never "
            f"committed, yet none is left to run: a bug in dask-batchinfer (please report it "
            f"with the job's log). No _SUCCESS was written; a re-run resumes and runs only "
            f"the partitions missing",
            partition=p.number,
            source=p.source,
        )

    def _fill(self, queue: _Queue, flying: dict[Any, _Flight]) -> None:
        """Submit waiting partitions until the window is full (it may have shrunk: then none)."""
        if self.graphs.bundles:
            self.bundle = bundle_size(self.tally, len(queue), self.pools.total_threads)
        tasks = min(-(-len(queue) // self.bundle), self.window - len(flying))
        if tasks > 0 and tasks >= min(len(queue), max(1, self.window // 4)):
            flights = []
            for _ in range(tasks):
                flights.append(_Flight(Launch(queue.take(self.bundle))))
            self._launch(flights, flying)
        if self.demand is not None:  # the tasks left, each costed as a task so far took
            self.demand.shrink(-(-len(queue) // self.bundle))

    def _launch(self, flights: list[_Flight], flying: dict[Any, _Flight]) -> None:
        futures = self.graphs.submit(self.client, [f.launch for f in flights])
        started = time.monotonic()
        for future, flight in zip(futures, flights, strict=True):
            flight.started = started
            flying[future] = flight
        self.finished.update(futures)

    def _wait(self) -> list[Any]:
        """The futures that finished within the next tick (a few seconds at most); after the
        first, those that finish within a few milliseconds more, up to a quarter of the window
        (one gather and one refill for several partitions)."""
        deadline = time.monotonic() + self.tick
        ready = self.finished.thread_condition  # notified as each future finishes
        with ready:
            while not self.finished.has_ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                ready.wait(left)
        done = self.finished.next_batch(block=False)
        linger = time.monotonic() + LINGER
        while len(done) < self.window // 4 and (left := linger - time.monotonic()) > 0:
            with ready:
                if not self.finished.has_ready():
                    ready.wait(left)
            done += self.finished.next_batch(block=False)
        return done

    def _collect(self, done: list[Any], flying: dict[Any, _Flight]) -> None:
        """Take the finished partitions' statistics (one gather for all that succeeded),
        submit a partition again after a worker died, or wait again for one whose result
        was lost with its worker after it finished (the scheduler computes it again)."""
        # not those cancelled past their timeout; each once (a future waited for again)
        done = list(dict.fromkeys(f for f in done if f in flying))
        succeeded = [f for f in done if f.status == "finished"]
        results = self.client.gather(succeeded, direct=self.direct) if succeeded else []
        for future, stats in zip(succeeded, results, strict=True):
            for one in stats if isinstance(stats, list) else [stats]:  # a bundle's: a list
                self._commit(one)
            del flying[future]
            future.release()
        for future in done:
            if future not in flying:
                continue
            if future.status in ("error", "cancelled"):
                self._failed(future, flying.pop(future), flying)
            else:  # "lost" or "pending": finished, then its worker died before the gather
                logger.info("%s: lost with its worker; waiting for it again", flying[future].place)
                self.finished.add(future)

    def _failed(self, future: Any, flight: _Flight, flying: dict[Any, _Flight]) -> None:
        from distributed import KilledWorker

        try:
            future.result()  # raises the task's error
        except KilledWorker as err:
            if flight.killed:  # only ever set on a single partition (a split bundle's)
                raise self._killer(flight, err) from err
            # Workers killed from outside (preemption, an OOM killer, a restart) can hit the
            # same partition several times in a row: one more try before blaming it (a
            # bundle's partitions each on its own: which one was it?).
            logger.warning(
                "%s: its workers died %d times; submitting it once more",
                flight.place,
                workers_killed(),
            )
            self._launch(flight.singles(killed=workers_killed()), flying)
        finally:
            future.release()

    def _commit(self, stats: PartitionStats) -> None:
        stats.finished = time.perf_counter()
        self.tally.add(stats)
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
            if self.timeout is None or age <= self.timeout * len(flight.launch.partitions):
                continue
            future.cancel()
            del flying[future]
            alone = len(flight.launch.partitions) == 1
            if alone and flight.timed_out:
                p = flight.partition
                raise PartitionTimeoutError(
                    f"{where(p.number, p.source)} ran longer than partition_timeout="
                    f"{self.timeout:g} s twice (on two attempts): a hung or very slow "
                    f"partition. Look at its input, or raise partition_timeout",
                    partition=p.number,
                    source=p.source,
                    seconds=self.timeout,
                )
            # a bundle's partitions each get two tries of their own
            logger.warning(
                "%s ran %.0f s, past partition_timeout: retrying once", flight.place, age
            )
            self._launch(flight.singles(flight.killed, timed_out=int(alone)), flying)
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
