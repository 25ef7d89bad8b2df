"""Worker plugins: one small plugin per concern.

``ModelWarmup`` loads a model on every model worker when a job starts, in
parallel, and on workers that join later as they arrive; on teardown (the
worker closes) it drops the model and releases GPU memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from dask_batchinfer import cache
from dask_batchinfer.model import ModelSpec

__all__ = ["ModelWarmup"]


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
            await asyncio.get_running_loop().run_in_executor(None, cache.get_model, self.spec)

    def teardown(self, worker: Any) -> None:
        cache.evict(self.spec)
