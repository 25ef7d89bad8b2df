"""The per-process model cache.

Each worker process loads a :class:`~dask_batchinfer.ModelSpec` the first time a
task asks for it and keeps it for every later partition. Entries are keyed by
the spec's token (``dask.base.tokenize``), so two equal specs share one model.
Loads of one spec are serialised by a per-token lock; loads of different specs
run in parallel. The cache is emptied in a forked child.

On CPU each task thread runs forward passes with one torch thread, side by
side; on a GPU forward passes take turns (:attr:`LoadedModel.lock`). Either
way a worker never has more busy threads than it was given.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from dask_batchinfer.errors import ModelLoadError

if TYPE_CHECKING:
    from distributed import Client

    from dask_batchinfer.model import ModelSpec

__all__ = ["LoadedModel", "clear", "evict", "get_model", "local_stats", "model_stats"]


@dataclasses.dataclass
class LoadedModel:
    """A model loaded in this process, with what it took to load it."""

    token: str
    name: str
    model: Any
    device: str
    load_seconds: float
    #: Forward passes on an accelerator take turns; on CPU they run side by side.
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    #: The largest batch (rows) known to fit after an out-of-memory error; None: no limit seen.
    max_batch: int | None = None
    #: Out-of-memory errors recovered from, over this process's life.
    oom_events: int = 0


_registry_lock = threading.Lock()
_load_locks: dict[str, threading.Lock] = {}
_models: dict[str, LoadedModel] = {}
_stats: dict[str, dict[str, Any]] = {}


def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    _load_locks.clear()
    _models.clear()
    _stats.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_model(spec: ModelSpec) -> LoadedModel:
    """Return the loaded model for ``spec``, loading it on first use in this process."""
    loaded = _models.get(spec.cache_key)
    if loaded is not None:
        return loaded
    with _registry_lock:
        key_lock = _load_locks.setdefault(spec.cache_key, threading.Lock())
    with key_lock:
        loaded = _models.get(spec.cache_key)
        if loaded is None:
            loaded = _load(spec)
            _models[spec.cache_key] = loaded
    return loaded


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except ValueError:  # not inside a dask worker
        return None


def configure_torch_threads(device: str = "cpu") -> None:
    """Keep torch's threads within the worker's: never more busy threads than it has.

    On CPU each of the worker's task threads runs its own forward passes with
    one torch thread (measured faster than one multi-threaded forward at a
    time: nothing else competes with OpenMP's threads for the cores). On a GPU
    forward passes take turns (``LoadedModel.lock``) and torch's host-side
    threads get the worker's thread count. OpenMP keeps the count per calling
    thread, so this runs in every thread that runs a model (cheap once set).
    """
    nthreads = _worker_threads()
    if nthreads is None:
        return
    import torch

    wanted = 1 if device == "cpu" else nthreads
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when this process sees a GPU, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(spec: ModelSpec) -> LoadedModel:
    import torch

    device = resolve_device(spec.device)
    configure_torch_threads(device)
    start = time.perf_counter()
    try:
        model = spec.load(**spec.load_kwargs)
        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval()
        if spec.compile:
            model = torch.compile(model)
        loaded = LoadedModel(spec.cache_key, spec.name or "", model, device, 0.0)
        if spec.compile:
            from dask_batchinfer.batching import warm_up

            warm_up(spec, loaded)  # compile now, not on the first partition
    except Exception as err:
        module = getattr(spec.load, "__module__", "?")
        loader = f"{module}.{getattr(spec.load, '__qualname__', spec.load)}"
        raise ModelLoadError(
            f"loading model {spec.name!r} with {loader}(**{sorted(spec.load_kwargs)}) failed "
            f"on device {device!r}: {type(err).__name__}: {err}"
        ) from err
    seconds = time.perf_counter() - start
    stats = _stats.setdefault(
        spec.cache_key,
        {"name": spec.name, "token": spec.cache_key, "loads": 0, "load_seconds": 0.0},
    )
    stats["loads"] += 1
    stats["load_seconds"] += seconds
    stats["device"] = device
    stats["pid"] = os.getpid()
    loaded.load_seconds = seconds
    return loaded


def local_stats() -> dict[str, dict[str, Any]]:
    """Load counts and times of every spec this process has loaded, by token."""
    return {token: dict(stats) for token, stats in _stats.items()}


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evict(spec: ModelSpec) -> bool:
    """Drop ``spec``'s model from this process and release its GPU memory."""
    with _registry_lock:
        dropped = _models.pop(spec.cache_key, None) is not None
    if dropped:
        _release_gpu_memory()
    return dropped


def clear() -> None:
    """Drop every cached model in this process and release GPU memory."""
    with _registry_lock:
        _models.clear()
        _load_locks.clear()
    _release_gpu_memory()


def model_stats(client: Client, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Model load counts and times on every worker of ``client``'s cluster.

    Parameters
    ----------
    client : distributed.Client
    spec : ModelSpec, optional
        Only this model's entry; workers that never loaded it report ``None``.

    Returns
    -------
    dict
        Worker address to ``{token: {"name", "loads", "load_seconds", "device", "pid"}}``,
        or to that one entry when ``spec`` is given.

    Examples
    --------
    >>> dbi.model_stats(client, spec)  # doctest: +SKIP
    {'tcp://127.0.0.1:40123': {'name': 'ranker', 'loads': 1, 'load_seconds': 0.42, ...}}
    """
    per_worker = client.run(local_stats)
    if spec is None:
        return per_worker
    return {worker: stats.get(spec.cache_key) for worker, stats in per_worker.items()}
