"""Worker plugins, one per concern, registered for a job's lifetime.

- :class:`ModelWarmup` loads a model on every model worker when a job starts,
  in parallel, and on workers that join later as they arrive; on teardown (the
  worker closes) it drops the model and releases GPU memory.
- :class:`CredentialsPlugin` hands a job's storage credentials to the workers
  once, so that tasks carry only a reference (see :mod:`dask_batchinfer.secrets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from dask_batchinfer import cache, secrets
from dask_batchinfer.pipeline.loading import load_model

if TYPE_CHECKING:
    from dask_batchinfer.cluster import Pools
    from dask_batchinfer.model.spec import ModelSpec

__all__ = ["CredentialsPlugin", "ModelWarmup", "credentials", "warm_up"]


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

    async def setup(self, worker: Any) -> None:
        if self._wanted(worker):
            # in a thread: loading takes seconds and must not block the worker's event loop
            await asyncio.get_running_loop().run_in_executor(None, load_model, self.spec)

    def teardown(self, worker: Any) -> None:
        cache.evict(self.spec)


def warm_up(client: Any, model: ModelSpec, pools: Pools) -> None:
    """Load the model on every model worker in parallel, before any input is read.

    A worker plugin, so workers that join later load the model on arrival.
    """
    plugin = ModelWarmup(model, resource=pools.model)
    try:
        client.register_plugin(plugin)
    except BaseException:
        client.unregister_worker_plugin(plugin.name)
        raise


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
