"""Worker plugins, one per concern, registered for a job's lifetime.

- :class:`ModelWarmup` loads a model on every model worker when a job starts,
  in parallel, and on workers that join later as they arrive; on teardown (the
  worker closes) it drops the model and releases GPU memory.
- :class:`CredentialsPlugin` hands a job's storage credentials to the workers
  once, so that tasks carry only a reference (see :mod:`dask_batchinfer.secrets`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from dask_batchinfer import cache, secrets
from dask_batchinfer.cluster import Pools, model_workers
from dask_batchinfer.errors import ModelLoadError
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.worker import workers_killed

if TYPE_CHECKING:
    from dask_batchinfer.model.spec import ModelSpec

__all__ = ["CredentialsPlugin", "ModelWarmup", "credentials", "warm_up"]

logger = logging.getLogger(__name__)


class ModelWarmup(WorkerPlugin):
    """Load ``spec`` into the worker's model cache at set-up.

    Parameters
    ----------
    spec : ModelSpec
    resource : str, optional
        Only workers holding this resource (the model pool) load the model.
    """

    idempotent = True

    def __init__(self, spec: ModelSpec, resource: str | None = None) -> None:
        self.spec = spec
        self.resource = resource
        self.name = f"batchinfer-warmup-{spec.cache_key}"

    def _wanted(self, worker: Any) -> bool:
        return self.resource is None or self.resource in worker.state.total_resources

    def setup(self, worker: Any) -> None:
        # In the background: a worker that joins must not wait on a model load (nor die
        # in it) while it starts; its first task waits on the cache's load lock instead.
        if self._wanted(worker):
            threading.Thread(target=_load_quietly, args=(self.spec,), daemon=True,
                             name=f"{self.name}-load").start()  # fmt: skip

    def teardown(self, worker: Any) -> None:
        cache.evict(self.spec)


def _load_quietly(spec: ModelSpec) -> None:
    try:
        load_model(spec)
    except Exception:  # noqa: BLE001 - the first task that needs the model raises it
        logger.warning("loading model %r in the background failed", spec.name, exc_info=True)


def _load_task(spec: ModelSpec) -> float:
    return load_model(spec).load_seconds


def warm_up(client: Any, model: ModelSpec, pools: Pools) -> None:
    """Load the model on every model worker in parallel, before any input is read.

    One load task per model worker, which the scheduler moves to another worker
    when its worker dies (a worker killed while loading does not fail the job),
    and a :class:`ModelWarmup` plugin so that workers that join later load the
    model on arrival.

    Raises
    ------
    ModelLoadError
        When the model cannot load (the first worker's error).
    """
    from distributed import KilledWorker

    plugin = ModelWarmup(model, resource=pools.model)
    try:
        client.register_plugin(plugin)
    except OSError as err:  # CommClosedError: a worker died during the broadcast; the
        logger.info("a worker left while the warm-up plugin registered: %s", err)  # rest have it
    workers = model_workers(client, pools)
    resources = {pools.model: 1} if pools.mixed else None
    tag = uuid.uuid4().hex[:8]
    futures = [
        client.submit(_load_task, model, workers=[address], allow_other_workers=True,
                      resources=resources, pure=False, key=f"batchinfer-load-{tag}-{i}")
        for i, address in enumerate(workers)
    ]  # fmt: skip
    try:
        client.gather(futures)
    except KilledWorker as err:
        raise ModelLoadError(
            f"loading model {model.name!r} killed {workers_killed()} workers in a row: most "
            f"likely it needs more memory than a worker may use; give workers more memory "
            f"(dask worker --memory-limit, local_cluster(memory_limit=...)) or load a smaller "
            f"model. Cause: {err}"
        ) from err


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


class CredentialsPlugin(WorkerPlugin):
    """A worker plugin that hands the secret options to tasks on each worker.

    Pickled, it holds the options masked with a one-time pad (also inside),
    so that they never appear verbatim in the bytes that distributed may log
    at DEBUG level or keep in memory dumps. That is masking, not encryption:
    anyone who can unpickle the plugin can read them, as the workers must.
    """

    idempotent = True

    def __init__(self, name: str, secret: Mapping[str, Any]) -> None:
        self.name = name
        self._secret = dict(secret)

    def __repr__(self) -> str:  # never print the secret
        return f"CredentialsPlugin({self.name!r})"

    def __getstate__(self) -> dict[str, Any]:
        data = pickle.dumps(self._secret)
        pad = os.urandom(len(data))
        return {"name": self.name, "pad": pad, "masked": _xor(data, pad)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self._secret = pickle.loads(_xor(state["masked"], state["pad"]))

    def setup(self, worker: Any) -> None:
        secrets.store(self.name, self._secret)

    def teardown(self, worker: Any) -> None:
        secrets.forget(self.name)


@contextlib.contextmanager
def credentials(client: Any, name: str | None, secret: Mapping[str, Any]) -> Iterator[None]:
    """Send ``secret`` to every worker (and late joiners) as ``name`` while the block runs.

    Nothing to do when ``name`` is None (no credentials in the options).
    """
    if name is None:
        yield
        return
    responses = client.register_plugin(CredentialsPlugin(name, secret), name=name) or {}
    try:
        failed = {w: r for w, r in responses.items() if r.get("status") != "OK"}
        if failed:
            worker, response = next(iter(failed.items()))
            raise RuntimeError(
                f"could not send the storage credentials to {len(failed)} worker(s), e.g. "
                f"{worker}: {secrets.redact(str(response.get('exception') or response))}"
            )
        yield
    finally:
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # noqa: BLE001 - best effort: the workers may be gone
            pass
