"""Start a local cluster suited to batch inference, and connect to clusters.

``local_cluster()`` returns dask-cuda's ``LocalCUDACluster`` (one worker per
visible GPU) when the ``gpu`` extra is installed and a GPU is visible, and a
``distributed.LocalCluster`` of worker processes otherwise. Both listen on
127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError

__all__ = ["connect", "gpu_count", "local_cluster"]

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    """GPUs that dask-cuda can use here; 0 without the ``gpu`` extra, NVML or a GPU."""
    try:
        from dask_cuda.utils import get_n_gpus
    except Exception:  # not installed, or cuda-bindings missing: a CPU machine
        return 0
    try:
        return int(get_n_gpus())
    except Exception:  # no NVML / no driver
        return 0


def local_cluster(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    *,
    gpu: bool | None = None,
    **kwargs: Any,
):
    """Start a cluster of worker processes on this machine.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes. Default: one per GPU on a GPU machine; else the CPU
        count divided by ``threads_per_worker``.
    threads_per_worker : int, optional
        Task threads per worker (torch uses as many). Default
        ``batchinfer.threads-per-worker`` (4), at most the CPU count.
    gpu : bool, optional
        ``True`` requires dask-cuda and a GPU; ``False`` never uses one;
        ``None`` (default) uses GPUs when they are there.
    **kwargs
        Passed on to ``LocalCluster`` / ``LocalCUDACluster``.

    Returns
    -------
    distributed.LocalCluster or dask_cuda.LocalCUDACluster

    Examples
    --------
    >>> from distributed import Client
    >>> cluster = dbi.local_cluster()  # doctest: +SKIP
    >>> client = Client(cluster)       # doctest: +SKIP
    """
    cpus = os.cpu_count() or 1
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InputError(f"local_cluster({name}={value!r}): expected a positive integer")
    kwargs.setdefault("host", _config.get("host"))
    kwargs.setdefault("dashboard_address", f"{kwargs['host']}:0")
    gpus = gpu_count() if gpu is not False else 0
    if gpu and not gpus:
        raise InputError(
            "local_cluster(gpu=True) found no usable GPU: install the extra with "
            "`pip install 'dask-batchinfer[gpu]'` and check that `nvidia-smi` lists a GPU"
        )
    if gpus:
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(
            n_workers=n_workers or gpus, threads_per_worker=threads_per_worker or 1, **kwargs
        )
    threads = threads_per_worker or max(1, min(int(_config.get("threads-per-worker")), cpus))
    workers = n_workers or max(1, cpus // threads)
    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, **kwargs)


@contextlib.contextmanager
def connect(client: Any = None) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for a job.

    ``client`` may be a ``Client``, a scheduler address (``"tcp://host:8786"``),
    or ``None``: then the current default client is used if there is one, and
    otherwise a :func:`local_cluster` is started and closed afterwards.
    """
    from distributed import Client, default_client

    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        with Client(client) as connected:
            yield connected
        return
    if client is not None:
        raise InputError(
            f"client must be a distributed.Client, a scheduler address or None, got {client!r}"
        )
    try:
        existing = default_client()
    except ValueError:
        existing = None
    if existing is not None:
        yield existing
        return
    with local_cluster() as cluster, Client(cluster) as started:
        logger.info("started %s; dashboard at %s", cluster, started.dashboard_link)
        yield started
