"""Where this code runs: inside a Dask worker or not, and the threads it may use.

Code that runs on workers also runs without one (``dask.compute`` with
threads, a plain function call in a test): every helper here answers
``None`` or does nothing outside a worker.
"""

from __future__ import annotations

from typing import Any

__all__ = [
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
