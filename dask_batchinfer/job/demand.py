"""Show the scheduler the partitions waiting behind the window, so that adaptive clusters grow.

distributed sizes an adaptive cluster (``Scheduler.adaptive_target``) from the
work it sees: the expected run time of the tasks processing plus that of the
queued and unrunnable ones, against ``distributed.adaptive.target-duration``,
and never more workers than there are such tasks. The executor keeps only a
window of partitions in flight (a few per worker thread) so that memory stays
flat; the scheduler, seeing that window only, kept an adaptive cluster at the
size the first window kept busy, and with ``adapt(minimum=0)`` (no worker, no
task) started no worker at all.

A :class:`Demand` shows the waiting partitions as placeholder tasks that ask
for a resource no worker has (:data:`WAITING`): the scheduler counts them as
unrunnable work, but they never run and hold no data. One is released as each
partition is submitted for real. Their keys share the prefix of a partition's
last task (``process-batchinfer``), so the scheduler costs each at the
measured run time of a partition (``unknown-task-duration`` until one ran).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

__all__ = ["WAITING", "Demand", "waiting_partition"]

logger = logging.getLogger(__name__)

#: The resource the placeholders ask for; no worker should hold it.
WAITING = "batchinfer-waiting"


def waiting_partition(number: int) -> None:
    """A placeholder's function: it runs only on a worker holding :data:`WAITING`, and does
    nothing there."""


class Demand:
    """Placeholder tasks for the partitions waiting behind the executor's window.

    Parameters
    ----------
    client : distributed.Client
    job : str
        The job's id, in the placeholders' keys.
    waiting : int
        Partitions waiting to run.
    limit : int
        Show at most this many (``batchinfer.adaptive-lookahead``); 0: none.
    task : str, default "process"
        The prefix of the partition task whose measured duration the
        scheduler gives each placeholder.
    """

    def __init__(
        self, client: Any, job: str, waiting: int, limit: int, task: str = "process"
    ) -> None:
        self.client, self.job, self.task = client, job, task
        self.futures: list[Any] = []
        self._numbers = itertools.count()
        self._show(max(0, min(waiting, limit)))

    def _show(self, count: int) -> None:
        if not count:
            return
        numbers = [next(self._numbers) for _ in range(count)]
        self.futures += self.client.map(
            waiting_partition,
            numbers,
            resources={WAITING: 1},
            pure=False,
            key=[f"{self.task}-batchinfer-{self.job}-waiting-{n}" for n in numbers],
        )

    def retarget(self, task: str) -> None:
        """Cost the placeholders as ``task`` (e.g. ``"infer"`` on a mixed cluster)."""
        if task != self.task:
            count, self.task = len(self.futures), task
            self.close()
            self._show(count)

    def shrink(self, waiting: int) -> None:
        """Release the placeholders beyond ``waiting`` partitions (as they are submitted)."""
        while len(self.futures) > waiting:
            self.futures.pop().release()

    def close(self) -> None:
        """Release every placeholder."""
        self.shrink(0)

    def __enter__(self) -> Demand:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a closed client: the scheduler forgets them anyway
            logger.debug("could not release the placeholder tasks", exc_info=True)
