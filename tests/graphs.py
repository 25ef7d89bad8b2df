"""The tasks a job sent the scheduler, counted by a scheduler plugin (tests of #27)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin


class _Graphs(SchedulerPlugin):
    """Records the keys of the tasks of each graph the scheduler receives."""

    name = "count-graphs"

    def __init__(self) -> None:
        self.graphs: list[list[str]] = []

    def update_graph(self, scheduler, *, keys, tasks, **kwargs) -> None:  # noqa: ANN001
        self.graphs.append([str(key) for key in tasks])


def _graphs(dask_scheduler=None) -> list[list[str]]:  # noqa: ANN001 - run_on_scheduler's name
    return dask_scheduler.plugins["count-graphs"].graphs


@contextlib.contextmanager
def counted_graphs(client: Any) -> Iterator[list[list[str]]]:
    """``with counted_graphs(client) as graphs:``: afterwards (also after an error), the
    graphs of partition tasks sent meanwhile (not the placeholders, nor the model loads at
    the start), each a list of task keys."""
    graphs: list[list[str]] = []
    client.register_plugin(_Graphs())
    try:
        yield graphs
    finally:
        sent = client.run_on_scheduler(_graphs)
        client.unregister_scheduler_plugin("count-graphs")
        ours = [[k for k in g if "-waiting-" not in k and "-load-" not in k] for g in sent]
        graphs += [g for g in ours if g]


def job_graphs(client: Any, run: Callable[[], Any]) -> tuple[Any, list[list[str]]]:
    """``run()``'s result and the graphs of partition tasks it sent."""
    with counted_graphs(client) as graphs:
        result = run()
    return result, graphs


def covered(key: str, job: str) -> range:
    """The partitions a task ``process-batchinfer-JOB-FIRST[-LAST][-attemptN]`` ran."""
    first, _, rest = key[len(f"process-batchinfer-{job}-") :].partition("-")
    last = rest.split("-")[0] if rest and not rest.startswith("attempt") else first
    return range(int(first), int(last) + 1)
