"""The per-process model cache.

Each worker process loads a :class:`~dask_batchinfer.ModelSpec` the first time a
task asks for it and keeps it for every later partition, and after the job for
the next one (at most ``batchinfer.cached-models`` models, least recently used
dropped first) (the loading itself is
:func:`dask_batchinfer.pipeline.loading.load_model`). Entries are keyed by the
spec's token (``dask.base.tokenize``), so two equal specs share one model.
Loads of one spec are serialised by a per-token lock; loads of different specs
run in parallel. Beside the models it keeps small helpers that the CPU pool
uses to prepare inputs (a tokenizer: :func:`helper`). The cache is emptied in a
forked child.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from dask_batchinfer import _config

if TYPE_CHECKING:
    from distributed import Client


__all__ = [
    "LRU",
    "LoadedModel",
    "clear",
    "evict",
    "get_or_load",
    "helper",
    "local_stats",
    "model_stats",
]


class Keyed(Protocol):
    """What the cache needs of a :class:`~dask_batchinfer.ModelSpec` (the cache sits below
    the recipes in the data flow and does not import them)."""

    @property
    def cache_key(self) -> str: ...

    @property
    def name(self) -> str | None: ...


Spec = TypeVar("Spec", bound=Keyed)
K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A least-recently-used mapping of at most ``size()`` entries (xarray's ``LRUCache``).

    ``get`` counts as a use; ``put`` drops the least recently used entries past
    the size and returns them, for the caller to release outside its lock. Not
    synchronised: callers hold their own lock.
    """

    def __init__(self, size: Callable[[], int]) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> list[V]:
        self._entries[key] = value
        self._entries.move_to_end(key)
        dropped = []
        while len(self._entries) > max(1, self.size()):
            dropped.append(self._entries.popitem(last=False)[1])
        return dropped

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


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
_models: LRU[str, LoadedModel] = LRU(lambda: int(_config.get("cached-models")))
_stats: dict[str, dict[str, Any]] = {}
_helpers: dict[Any, Any] = {}


def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    _load_locks.clear()
    _models.clear()
    _stats.clear()
    _helpers.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_or_load(spec: Spec, load: Callable[[Spec], LoadedModel]) -> LoadedModel:
    """The cached model of ``spec``; on first use in this process, ``load(spec)`` it.

    Concurrent first uses of one spec load it once; the load's time and count
    are recorded (see :func:`local_stats`).
    """
    with _registry_lock:
        loaded = _models.get(spec.cache_key)
        if loaded is not None:
            return loaded
        key_lock = _load_locks.setdefault(spec.cache_key, threading.Lock())
    with key_lock:
        with _registry_lock:
            loaded = _models.get(spec.cache_key)
        if loaded is None:
            start = time.perf_counter()
            loaded = load(spec)
            loaded.load_seconds = time.perf_counter() - start
            _record_load(spec, loaded)
            with _registry_lock:  # at most batchinfer.cached-models: the oldest go
                dropped = _models.put(spec.cache_key, loaded)
            if dropped:
                del dropped
                _release_gpu_memory()
    return loaded


def helper(key: Any, make: Callable[[], Any], per_thread: bool = False) -> Any:
    """A small per-process object (a tokenizer) made once by ``make()`` and kept under ``key``.

    Helpers are what preparing inputs needs on the CPU pool; unlike models
    they are not counted against ``batchinfer.cached-models``. ``per_thread``:
    one per thread, for objects that must not be used from two threads at once
    (a Rust tokenizer whose truncation settings change between calls raises
    "Already borrowed" when another thread is inside it).
    """
    if per_thread:
        key = (key, threading.get_ident())
    found = _helpers.get(key)
    if found is not None:
        return found
    with _registry_lock:
        key_lock = _load_locks.setdefault(f"helper-{key!r}", threading.Lock())
    with key_lock:
        if key not in _helpers:
            _helpers[key] = make()
    return _helpers[key]


def _record_load(spec: Keyed, loaded: LoadedModel) -> None:
    stats = _stats.setdefault(
        spec.cache_key,
        {"name": spec.name, "token": spec.cache_key, "loads": 0, "load_seconds": 0.0},
    )
    stats["loads"] += 1
    stats["load_seconds"] += loaded.load_seconds
    stats["device"] = loaded.device
    stats["pid"] = os.getpid()


def local_stats() -> dict[str, dict[str, Any]]:
    """Load counts and times of every spec this process has loaded, by token."""
    return {token: dict(stats) for token, stats in _stats.items()}


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evict(spec: Keyed | str) -> bool:
    """Drop ``spec``'s model (or the model of that cache key) from this process and
    release its GPU memory."""
    key = spec if isinstance(spec, str) else spec.cache_key
    with _registry_lock:
        dropped = _models.pop(key) is not None
    if dropped:
        _release_gpu_memory()
    return dropped


def clear() -> None:
    """Drop every cached model in this process and release GPU memory."""
    with _registry_lock:
        _models.clear()
        _helpers.clear()
        _load_locks.clear()
    _release_gpu_memory()


def model_stats(client: Client, spec: Keyed | None = None) -> dict[str, Any]:
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
