"""The graphs a job sends the scheduler: a task per partition, or per bundle of partitions.

Each refill of the executor's window is one graph (``client.get`` of many
tasks: one message, named without tokenising its tasks). A partition's read is
fused into its task when the input's graph for it is one task, as this
package's readers and optimised Dask DataFrames make it: the scheduler then
handles one task per partition, not two, and a partition waiting in the window
holds no data. On a mixed cluster the read and preprocessing are one task on
the CPU pool, inference and writing another on the model pool.

Partitions much quicker than a task's fixed cost (tiny partitions, a cheap
model: the scheduler spends about a millisecond on every task, the client
some hundreds of microseconds) go several to a task, a *bundle*, read and
committed one after the other inside it (:func:`bundle_size`): each still has
its own marker, statistics and error message; a bundle whose worker died or
that ran past its time is split into single partitions for its second try.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable, Sequence
from typing import Any

import dask

# The graph nodes Dask's own collections use, and the expression a graph travels in.
from dask._task_spec import Task, TaskRef

try:
    from dask._expr import LLGExpr
except ImportError:  # another Dask: graphs go as dicts, named by tokenising them (slower)
    LLGExpr = None  # type: ignore[misc, assignment]
from dask.optimization import cull

from dask_batchinfer.cluster.local import Pools
from dask_batchinfer.io.commit import Partition
from dask_batchinfer.job.tally import Tally
from dask_batchinfer.pipeline.stages import (
    Reads,
    StageSettings,
    infer_write_task,
    preprocess_task,
    process_bundle,
    process_task,
)
from dask_batchinfer.worker.packed import Packed

__all__ = ["BUNDLE_SECONDS", "MAX_BUNDLE", "Launch", "TaskGraphs", "bundle_size", "submit_read"]

#: Seconds of work a bundle of partitions aims at (their stages' measured time).
BUNDLE_SECONDS = 0.2
#: Partitions in a bundle at most.
MAX_BUNDLE = 64


@dataclasses.dataclass(frozen=True)
class Launch:
    """One task to submit: its partitions (one, or a bundle) and which attempt it is."""

    partitions: tuple[Partition, ...]
    attempt: int = 1

    def name(self, job: str) -> str:
        first, last = self.partitions[0].number, self.partitions[-1].number
        name = f"batchinfer-{job}-{first}" + (f"-{last}" if last != first else "")
        return name + (f"-attempt{self.attempt}" if self.attempt > 1 else "")


def bundle_size(tally: Tally, waiting: int, threads: int) -> int:
    """Partitions per task: as many as make :data:`BUNDLE_SECONDS` of the work measured so far
    (busy seconds per partition committed), at most :data:`MAX_BUNDLE`, and few enough that
    the ``waiting`` partitions still make two tasks for each of the ``threads``."""
    if not tally.partitions:
        return 1
    stages = ("read_seconds", "preprocess_seconds", "infer_seconds", "write_seconds")
    busy = sum(tally.sums.get(s, 0.0) for s in stages) / tally.partitions
    fits = int(BUNDLE_SECONDS / busy) if busy > 0 else MAX_BUNDLE
    return max(1, min(fits, MAX_BUNDLE, waiting // (2 * max(1, threads))))


def submit_read(client: Any, graph: dict, key: Hashable, resources: dict | None = None) -> Any:
    """A future of one input partition: its key computed from the input's own graph."""
    return client.get(cull(graph, [key])[0], [key], sync=False, resources=resources)[0]


def _partitionwise(ddf: Any) -> Any:
    """The input's expression when it makes each partition's task on its own, as Dask builds
    its graph (``expr._task(key, i)``: one expression, fused, depending on no other, its
    keys ``(name, i)``), else None. The job then never holds the input's whole graph (1.6 KB
    a partition, 160 MB at 100,000 partitions), nor the list of its keys."""
    try:
        expr = ddf.expr.lower_completely()
        if expr.dependencies() or not ddf.npartitions or expr._name != ddf._name:
            return None
        expr._task((expr._name, 0), 0)  # makes one, or is not the kind that can
    except Exception:  # noqa: BLE001 - another Dask, another collection: the whole graph
        return None
    return expr


@dataclasses.dataclass(frozen=True)
class _Keys(Sequence[tuple[str, int]]):
    """The keys ``(name, i)`` of a collection's ``length`` partitions, made when asked."""

    name: str
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: Any) -> Any:
        if not -self.length <= i < self.length:
            raise IndexError(i)
        return (self.name, i % self.length)


def _graph(tasks: dict, name: str) -> Any:
    """``tasks`` as the scheduler takes them, named ``name`` (unique): ``client.get`` would
    name them by tokenising every task (its pieces, its partition, the shipped settings),
    a cost per partition as high as all the rest of the client's."""
    return tasks if LLGExpr is None else LLGExpr(tasks, _determ_token=name)


class TaskGraphs:
    """Builds and submits the tasks of a job's partitions.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The (optimised) input.
    pools : Pools
        Where each stage runs (``pools.mixed``: two tasks per partition).
    settings : StageSettings
        What every stage task carries (pickled once, as bytes).
    """

    def __init__(self, ddf: Any, pools: Pools, settings: StageSettings) -> None:
        self.expr = _partitionwise(ddf)
        self.keys = (
            _Keys(ddf._name, ddf.npartitions) if self.expr is not None else ddf.__dask_keys__()
        )
        #: The input's whole graph, only when its tasks cannot be made one partition at a time.
        self.graph: dict = {} if self.expr is not None else dict(ddf.__dask_graph__())
        self.mixed = pools.mixed
        self.job = settings.job
        self.shipped = Packed(settings)  # pickled once; the scheduler passes bytes along
        self.task = "infer" if pools.mixed else "process"  # a partition's last task
        self.resources = ({pools.preprocess: 1}, {pools.model: 1}) if pools.mixed else (None, None)
        #: Whether partitions may share a task: a single pool, and reads of one task each.
        self.bundles = not pools.mixed and bool(self.keys) and self._read(0) is not None

    def _inputs(self, number: int) -> dict:
        """Partition ``number``'s part of the input's graph: made for it alone when the
        input allows, else culled from the whole graph."""
        key = self.keys[number]
        if self.expr is not None:
            return {key: self.expr._task(key, number)}
        return cull(self.graph, [key])[0]  # type: ignore[no-any-return]

    def _read(self, number: int) -> Task | None:
        """Partition ``number``'s read, when the input's graph makes it one task, else None."""
        inputs = self._inputs(number)
        return inputs[self.keys[number]] if len(inputs) == 1 else None

    def _first_stage(self, partition: Partition, key: str) -> dict:
        """The graph of a partition's first task: its read fused into it when it is one
        task, else beside it."""
        read_key = self.keys[partition.number]
        first = preprocess_task if self.mixed else process_task
        stage = Task(key, first, TaskRef(read_key), partition, self.shipped)
        inputs = self._inputs(partition.number)
        if len(inputs) == 1:
            return {key: Task.fuse(inputs[read_key], stage, key=key)}
        return {**inputs, key: stage}

    def _bundle(self, partitions: Sequence[Partition], key: str) -> dict:
        reads = []
        for p in partitions:
            read_key, inputs = self.keys[p.number], self._inputs(p.number)
            # a read of several tasks runs in the bundle's thread (dask.get)
            one = len(inputs) == 1
            reads.append(inputs[read_key] if one else functools.partial(dask.get, inputs, read_key))
        return {key: Task(key, process_bundle, Reads(reads), tuple(partitions), self.shipped)}

    def submit(self, client: Any, launches: list[Launch]) -> list[Any]:
        """Futures of the last task of each launch: one graph to the scheduler for all of
        them (two on a mixed cluster, one per pool)."""
        names = [launch.name(self.job) for launch in launches]
        first = "preprocess" if self.mixed else self.task
        graph: dict = {}
        for launch, name in zip(launches, names, strict=True):
            if len(launch.partitions) > 1:
                graph.update(self._bundle(launch.partitions, f"{first}-{name}"))
            else:
                graph.update(self._first_stage(launch.partitions[0], f"{first}-{name}"))
        keys = [f"{first}-{name}" for name in names]
        cpu, model = self.resources
        graph = _graph(graph, f"{first}-{names[0]}-{len(names)}")
        staged = client.get(graph, keys, sync=False, resources=cpu)
        if not self.mixed:
            return staged  # type: ignore[no-any-return]
        infer = {
            f"{self.task}-{name}": Task(
                f"{self.task}-{name}",
                infer_write_task,
                future,
                launch.partitions[0],
                self.shipped,
            )
            for launch, name, future in zip(launches, names, staged, strict=True)
        }
        graph = _graph(infer, f"{self.task}-{names[0]}-{len(names)}")
        return client.get(graph, list(infer), sync=False, resources=model)  # type: ignore[no-any-return]
