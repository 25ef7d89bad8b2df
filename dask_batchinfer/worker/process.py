"""Where this code runs: inside a Dask worker or not, the threads it may use, and whether
worker processes may be started from here (:func:`check_main_guard`).

Code that runs on workers also runs without one (``dask.compute`` with
threads, a plain function call in a test): every helper here answers
``None`` or does nothing outside a worker.
"""

from __future__ import annotations

import ast
import os
import sys
import types
from typing import Any

from dask_batchinfer.errors import InputError

__all__ = [
    "check_main_guard",
    "configure_torch_threads",
    "current_worker",
    "worker_address",
    "worker_threads",
    "workers_killed",
]


def current_worker() -> Any | None:
    """The ``distributed.Worker`` running this task, or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker()
    except ValueError:
        return None


def worker_address() -> str | None:
    """The address of the worker running this task, or None."""
    worker = current_worker()
    return None if worker is None else worker.address


def worker_threads() -> int | None:
    """The task threads of the worker running this task, or None."""
    worker = current_worker()
    return None if worker is None else worker.state.nthreads


def configure_torch_threads(device: str = "cpu") -> None:
    """Keep torch's threads within the worker's: never more busy threads than it has.

    On CPU each of the worker's task threads runs its own forward passes with
    one torch thread (measured faster than one multi-threaded forward at a
    time: nothing else competes with OpenMP's threads for the cores). On a GPU
    forward passes take turns (``LoadedModel.lock``) and torch's host-side
    threads get the worker's thread count. OpenMP keeps the count per calling
    thread, so this runs in every thread that runs a model (cheap once set).
    Outside a worker torch keeps its own setting.
    """
    nthreads = worker_threads()
    if nthreads is None:
        return
    import torch

    wanted = 1 if device == "cpu" else nthreads
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def workers_killed() -> int:
    """How many workers a task kills before the scheduler gives up on it (``KilledWorker``)."""
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures")) + 1


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    values = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and values == {"__main__"}


def check_main_guard(what: str) -> None:
    """Refuse to start worker processes from a script's unguarded top-level code.

    Worker processes start with Python's ``spawn`` method, which imports the
    script again in each of them: a job started at the script's top level
    would start again in every worker (and fail there, or hang). Scripts need
    ``if __name__ == "__main__":`` around the code that starts jobs.

    Raises
    ------
    InputError
        Naming the script, the line and both fixes.
    """
    import dask

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and not (
        frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__"
    ):
        frame = frame.f_back
    path = frame.f_globals.get("__file__") if frame is not None else None
    if method == "fork" or frame is None or not path or not os.path.isfile(path):
        return  # a notebook, python -c, or a fork: nothing imports __main__ again
    if os.path.basename(path) == "__main__.py":  # spawn does not run a package's __main__
        return
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    guards = [n for n in tree.body if _is_main_guard(n)]
    if any(n.lineno <= line <= (n.end_lineno or n.lineno) for n in guards):
        return
    raise InputError(
        f"{what} starts worker processes, which import your script {path} again (Python's "
        f"spawn start method): line {line} would then run once more in every worker. Put the "
        f'code that starts jobs under `if __name__ == "__main__":`, or run on threads in '
        f"this process (batchinfer.engine: threads)"
    )
