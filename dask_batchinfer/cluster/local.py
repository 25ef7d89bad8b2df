"""Start a local cluster suited to batch inference, find worker pools, connect.

Cluster shapes from ``local_cluster(kind=...)``:

- ``"cpu"``: a ``distributed.LocalCluster`` of worker processes.
- ``"gpu"``: dask-cuda's ``LocalCUDACluster``, one worker per visible GPU
  (needs the ``gpu`` extra); every stage runs on the GPU workers.
- ``"mixed"``: a pool of CPU workers that read, preprocess and tokenise
  (resource ``batchinfer.pools.preprocess``, default ``"preprocess"``) and a
  pool of model workers that run the forward pass and write (resource
  ``batchinfer.pools.model``, default ``"model"``); model workers get one GPU
  each when GPUs are visible, and the CPU pool the remaining cores.
- ``"auto"`` (default): ``"mixed"`` when usable GPUs are there (the CPU pool
  keeps the GPUs fed), else ``"cpu"``.

Every cluster listens on 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from dask_batchinfer import _config
from dask_batchinfer.errors import ClusterError, InputError
from dask_batchinfer.worker.process import check_main_guard

__all__ = [
    "check_cluster",
    "KINDS",
    "Pools",
    "detect_pools",
    "gpu_count",
    "local_cluster",
    "mixed_cluster",
    "mixed_shape",
    "model_workers",
]

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


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InputError(f"local_cluster({name}={value!r}): expected a positive integer")


KINDS = ("auto", "cpu", "gpu", "mixed")


def local_cluster(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    *,
    kind: str = "auto",
    gpu: bool | None = None,
    **kwargs: Any,
):
    """Start a cluster of worker processes on this machine.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes. Default: one per GPU on a GPU machine; else the CPU
        count divided by ``threads_per_worker``. For ``kind="mixed"`` (and
        ``"auto"`` with GPUs) the model workers, see :func:`mixed_cluster`.
    threads_per_worker : int, optional
        Task threads per worker (torch uses as many). Default
        ``batchinfer.threads-per-worker`` (1: a process per core), at most the
        CPU count. For ``kind="mixed"`` (and ``"auto"`` with GPUs) the model
        workers' threads.
    kind : {"auto", "cpu", "gpu", "mixed"}, default "auto"
        The cluster shape, see the module docstring.
    gpu : bool, optional
        Deprecated spelling: ``True`` is ``kind="gpu"``, ``False`` is ``kind="cpu"``.
    **kwargs
        Passed on to ``LocalCluster`` / ``LocalCUDACluster`` / :func:`mixed_cluster`.

    Returns
    -------
    distributed.LocalCluster, dask_cuda.LocalCUDACluster or distributed.SpecCluster

    Raises
    ------
    InputError
        For ``kind="gpu"`` without dask-cuda or a GPU, naming the fix.

    Examples
    --------
    >>> from distributed import Client
    >>> cluster = dbi.local_cluster()  # doctest: +SKIP
    >>> client = Client(cluster)       # doctest: +SKIP
    """
    if kind not in KINDS:
        raise InputError(f"local_cluster(kind={kind!r}): expected one of {KINDS}")
    if gpu is not None:
        kind = "gpu" if gpu else "cpu"
    _positive(n_workers=n_workers, threads_per_worker=threads_per_worker)
    gpus = gpu_count() if kind in ("auto", "gpu") else 0
    if kind == "mixed" or (kind == "auto" and gpus):
        kwargs.setdefault("model_workers", n_workers)
        kwargs.setdefault("model_threads", threads_per_worker)
        return mixed_cluster(**kwargs)  # which checks the main guard itself
    check_main_guard("local_cluster()")
    cpus = os.cpu_count() or 1
    kwargs.setdefault("host", _config.get("host"))
    kwargs.setdefault("dashboard_address", f"{kwargs['host']}:0")
    if kind == "gpu" and not gpus:
        raise InputError(
            "local_cluster(kind='gpu') found no usable GPU: install the extra with "
            "`pip install 'dask-batchinfer[gpu]'` (dask-cuda, which needs cuda-bindings) and "
            "check that `nvidia-smi` lists a GPU"
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


def mixed_shape(
    cpus: int,
    gpus: int,
    cpu_workers: int | None = None,
    model_workers: int | None = None,
    cpu_threads: int = 1,
    model_threads: int | None = None,
) -> tuple[int, int, int]:
    """``(cpu_workers, model_workers, model_threads)`` of a mixed cluster on this machine.

    One model worker per GPU (1 without GPUs), each with 2 task threads on a
    GPU (one partition's forward pass holds the GPU while the other's inputs
    are padded and its outputs written) and 1 on CPU; the CPU pool gets the
    cores the model workers leave, one worker per ``cpu_threads``, at least one.
    """
    model_workers = model_workers or max(1, gpus)
    model_threads = model_threads or (2 if gpus else 1)
    cpu_workers = cpu_workers or max(1, (cpus - model_workers) // cpu_threads)
    return cpu_workers, model_workers, model_threads


def mixed_cluster(
    cpu_workers: int | None = None,
    model_workers: int | None = None,
    *,
    cpu_threads: int = 1,
    model_threads: int | None = None,
    host: str | None = None,
    dashboard_address: str | None = None,
    silence_logs: int | bool = logging.WARNING,
    memory_limit: str | int | None = None,
):
    """A local cluster with a CPU pool (read, preprocess, tokenise) and a model pool
    (forward pass, write).

    CPU workers hold the resource ``batchinfer.pools.preprocess`` and model
    workers ``batchinfer.pools.model``, one unit per thread. With GPUs
    visible, each model worker sees one GPU (``CUDA_VISIBLE_DEVICES``).
    Defaults (:func:`mixed_shape`): one model worker per GPU (1 without GPUs)
    with 2 task threads on a GPU (1 on CPU), and a CPU worker per remaining core.

    Examples
    --------
    >>> cluster = dbi.local_cluster(kind="mixed", cpu_workers=4, model_workers=1)  # doctest: +SKIP
    """
    from distributed import Nanny, Scheduler, SpecCluster

    _positive(
        cpu_workers=cpu_workers,
        model_workers=model_workers,
        cpu_threads=cpu_threads,
        model_threads=model_threads,
    )
    check_main_guard("mixed_cluster()")
    host = host or _config.get("host")
    gpus = gpu_count()
    cpu_workers, model_workers, model_threads = mixed_shape(
        os.cpu_count() or 1, gpus, cpu_workers, model_workers, cpu_threads, model_threads
    )
    cpu_resource, model_resource = pool_resources()
    common: dict[str, Any] = {"host": host, "silence_logs": silence_logs}
    if memory_limit is not None:  # per worker process, as LocalCluster(memory_limit=...)
        common["memory_limit"] = memory_limit
    workers: dict[str, dict[str, Any]] = {}
    for i in range(cpu_workers):
        workers[f"cpu-{i}"] = {
            "cls": Nanny,
            "options": {
                **common,
                "nthreads": cpu_threads,
                "resources": {cpu_resource: cpu_threads},
                # a tokenizer's own thread pool per worker would oversubscribe the cores
                "env": {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": str(cpu_threads)},
            },
        }
    for i in range(model_workers):
        options = {
            **common,
            "nthreads": model_threads,
            "resources": {model_resource: model_threads},
        }
        if gpus:
            devices = [str((i + k) % gpus) for k in range(gpus)]
            options["env"] = {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
        workers[f"model-{i}"] = {"cls": Nanny, "options": options}
    scheduler = {
        "cls": Scheduler,
        "options": {"host": host, "dashboard_address": dashboard_address or f"{host}:0"},
    }
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs)


def pool_resources() -> tuple[str, str]:
    """The resource names marking the CPU pool and the model pool (``batchinfer.pools.*``)."""
    return str(_config.get("pools.preprocess")), str(_config.get("pools.model"))


@dataclasses.dataclass(frozen=True)
class Pools:
    """The worker pools a job runs on.

    ``preprocess`` and ``model`` are the resource names of the two pools, or
    ``None`` on a single-pool cluster where every worker does every stage.
    """

    preprocess: str | None
    model: str | None
    model_threads: int
    total_threads: int

    @property
    def mixed(self) -> bool:
        return self.model is not None

    def recount(self, workers: Mapping[str, Any]) -> Pools:
        """These pools with the threads of ``workers`` (``scheduler_info()["workers"]``).

        Workers come and go (adaptive clusters, preemption); the executor
        recounts the threads of the workers present every few seconds.
        """
        total = sum(w["nthreads"] for w in workers.values())
        if not self.mixed:
            return dataclasses.replace(self, model_threads=total, total_threads=total)
        model = sum(
            w["nthreads"] for w in workers.values() if self.model in (w.get("resources") or {})
        )
        return dataclasses.replace(self, model_threads=model, total_threads=total)


def detect_pools(client: Any, pools: Mapping[str, str] | bool | None = None) -> Pools:
    """Find the CPU and model pools of ``client``'s cluster.

    Parameters
    ----------
    pools : mapping, bool or None
        ``None`` (default): look for workers with the default resource names;
        use both pools if both exist, a single pool if neither does.
        ``{"preprocess": NAME, "model": NAME}``: these resource names; both
        pools must exist. ``False``: ignore resources, one pool.

    Raises
    ------
    InputError
        When only one pool exists, or named pools are missing, with the fix.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    total = sum(w["nthreads"] for w in workers)
    if pools is False:
        return Pools(None, None, total, total)
    if pools is None or pools is True:
        cpu_name, model_name = pool_resources()
        explicit = pools is True
    else:
        unknown = set(pools) - {"preprocess", "model"}
        if unknown or len(pools) != 2:
            raise InputError(
                f"pools={dict(pools)!r}: expected {{'preprocess': RESOURCE, 'model': RESOURCE}}"
            )
        cpu_name, model_name = pools["preprocess"], pools["model"]
        explicit = True
    cpu = [w for w in workers if cpu_name in (w.get("resources") or {})]
    model = [w for w in workers if model_name in (w.get("resources") or {})]
    if not cpu and not model and not explicit:
        return Pools(None, None, total, total)
    missing = [
        (
            pool,
            f"no worker has the resource {name!r} (the {pool} pool); start some with "
            f"`{command} --resources '{name}=1'`",
        )
        for name, found, pool, command in (
            (cpu_name, cpu, "preprocessing", "dask worker SCHEDULER"),
            (model_name, model, "model", "dask cuda worker SCHEDULER"),
        )
        if not found
    ]
    if missing:
        lacks = " and the ".join(pool for pool, _ in missing)
        raise InputError(
            f"the cluster lacks the {lacks} pool{'s' if len(missing) > 1 else ''}: "
            + "; ".join(text for _, text in missing)
            + " (or pass pools=False to run every stage on every worker)"
        )
    return Pools(cpu_name, model_name, sum(w["nthreads"] for w in model), total)


def model_workers(client: Any, pools: Pools) -> list[str]:
    """Addresses of the workers that run the model: the model pool, or every worker."""
    infos = client.scheduler_info(n_workers=-1)["workers"]
    return [a for a, w in infos.items() if not pools.mixed or pools.model in w.get("resources", {})]


def check_cluster(client: Any, no_workers_timeout: float | None) -> None:
    """Fail fast on a cluster that cannot run a job: no worker, or workers over their memory.

    Waits up to ``no_workers_timeout`` seconds for a first worker. A worker that
    holds more than its pause threshold of memory while idle runs nothing, and
    one above its terminate threshold is restarted over and over.

    Raises
    ------
    ClusterError
        Naming what is wrong and the fix.
    """
    import dask
    from dask.utils import format_bytes

    try:
        client.wait_for_workers(1, timeout=no_workers_timeout)
    except TimeoutError as err:
        raise ClusterError(
            f"no worker joined the cluster in {no_workers_timeout:.0f} s "
            f"(batchinfer.no-workers-timeout); start some with `dask worker SCHEDULER`"
        ) from err
    pause = dask.config.get("distributed.worker.memory.pause") or 1.0
    workers = client.scheduler_info(n_workers=-1)["workers"]
    full = {}
    for address, info in workers.items():
        limit, used = info.get("memory_limit") or 0, info.get("metrics", {}).get("memory", 0)
        if limit and used >= pause * limit:
            full[address] = (used, limit)
    if full and len(full) == len(workers):
        address, (used, limit) = next(iter(full.items()))
        raise ClusterError(
            f"every worker is over its memory limit before the job starts (e.g. {address} holds "
            f"{format_bytes(used)} of {format_bytes(limit)}): they pause or restart over and "
            f"over and would run nothing. Give workers more memory (dask worker "
            f"--memory-limit, local_cluster(memory_limit=...)); an idle worker with torch "
            f"loaded holds about 300 MB, plus the model"
        )
