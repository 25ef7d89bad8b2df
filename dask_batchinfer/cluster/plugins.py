"""Worker plugins, one per concern, registered for a job's lifetime.

- :class:`ModelWarmup` loads a model on every model worker when a job starts,
  in parallel, and on workers that join while the job runs as they arrive.
  The loaded model stays in the worker's cache after the job, for the next
  job with the same model (the cache keeps ``batchinfer.cached-models``).
- :class:`CredentialsPlugin` hands a job's storage credentials to the workers
  once, so that tasks carry only a reference (see :mod:`dask_batchinfer.secrets`).
- :class:`UploadCode` ships the user's local modules and packages to the
  workers (``run_job(upload=...)``, ``--upload``).

Each is registered under a name of its job and unregistered when the job ends,
success or failure: a long-lived cluster keeps nothing of a finished job, and a
worker that joins later starts without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import pickle
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from dask_batchinfer import secrets
from dask_batchinfer.cluster.local import Pools, model_workers
from dask_batchinfer.errors import ModelLoadError
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.worker import cache
from dask_batchinfer.worker.packed import Packed, forget_all
from dask_batchinfer.worker.process import workers_killed

if TYPE_CHECKING:
    from dask_batchinfer.model.spec import ModelSpec

__all__ = [
    "CredentialsPlugin",
    "ModelWarmup",
    "UploadCode",
    "credentials",
    "shipped_code",
    "unregister",
    "warm_up",
]

logger = logging.getLogger(__name__)


class ModelWarmup(WorkerPlugin):
    """Load a model into the worker's model cache at set-up, in the background.

    Parameters
    ----------
    spec : Packed[ModelSpec]
        The recipe as bytes: a worker that cannot import the user's modules
        still starts (and says so in its log); its first task raises the
        :class:`ModelLoadError`.
    cache_key : str
        The spec's cache key (part of the plugin's name).
    resource : str, optional
        Only workers holding this resource (the model pool) load the model.
    job : str
        The job it belongs to: each job registers and removes its own.
    """

    idempotent = True

    def __init__(
        self, spec: Packed[ModelSpec], cache_key: str, resource: str | None = None, job: str = ""
    ) -> None:
        self.spec = spec
        self.cache_key = cache_key
        self.resource = resource
        self.name = f"batchinfer-warmup-{cache_key}-{job}"

    def _wanted(self, worker: Any) -> bool:
        return self.resource is None or self.resource in worker.state.total_resources

    def setup(self, worker: Any) -> None:
        # In the background: a worker that joins must not wait on a model load (nor die
        # in it) while it starts; its first task waits on the cache's load lock instead.
        if self._wanted(worker):
            threading.Thread(
                target=_load_quietly, args=(self.spec,), daemon=True, name=f"{self.name}-load"
            ).start()


def _load_quietly(spec: Packed[ModelSpec]) -> None:
    try:
        load_model(spec.get())
    except Exception:  # noqa: BLE001 - the first task that needs the model raises it
        logger.warning("loading the model in the background failed", exc_info=True)


def _load_task(spec: Packed[ModelSpec]) -> float:
    return load_model(spec.get()).load_seconds


@contextlib.contextmanager
def warm_up(client: Any, model: ModelSpec, pools: Pools, job: str = "") -> Iterator[None]:
    """Load the model on every model worker in parallel, before any input is read;
    keep loading it on workers that join while the block runs.

    One load task per model worker, which the scheduler moves to another worker
    when its worker dies (a worker killed while loading does not fail the job),
    and a :class:`ModelWarmup` plugin so that workers that join later load the
    model on arrival. The plugin is removed when the block ends, success or
    failure; the loaded models stay in the workers' cache (bounded by
    ``batchinfer.cached-models``) for the next job.

    Raises
    ------
    ModelLoadError
        When the model cannot load (the first worker's error).
    """
    from distributed import KilledWorker

    packed = Packed(model)
    plugin = ModelWarmup(packed, model.cache_key, resource=pools.model, job=job)
    try:
        client.register_plugin(plugin)
    except OSError as err:  # CommClosedError: a worker died during the broadcast; the
        logger.info("a worker left while the warm-up plugin registered: %s", err)  # rest have it
    with unregister(client, plugin.name):
        workers = model_workers(client, pools)
        resources = {pools.model: 1} if pools.mixed else None
        tag = uuid.uuid4().hex[:8]
        futures = [
            client.submit(
                _load_task,
                packed,
                workers=[address],
                allow_other_workers=True,
                resources=resources,
                pure=False,
                key=f"batchinfer-load-{tag}-{i}",
            )
            for i, address in enumerate(workers)
        ]
        try:
            client.gather(futures)
        except KilledWorker as err:
            raise ModelLoadError(
                f"loading model {model.name!r} killed {workers_killed()} workers in a row: "
                f"most likely it needs more memory than a worker may use; give workers more "
                f"memory (dask worker --memory-limit, local_cluster(memory_limit=...)) or load "
                f"a smaller model. Cause: {err}"
            ) from err
        yield


@contextlib.contextmanager
def unregister(client: Any, name: str) -> Iterator[None]:
    """Remove the worker plugin ``name`` when the block ends (best effort)."""
    try:
        yield
    finally:
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # noqa: BLE001 - the workers may be gone; never hide the job's error
            logger.debug("could not unregister worker plugin %s", name, exc_info=True)


class UploadCode(WorkerPlugin):
    """Ship local modules (``.py``) and packages (folders) to the workers.

    They are zipped on the client; each worker saves the archive in its local
    directory, puts it first on ``sys.path`` and forgets any older import of
    the same names, so that the job's tasks import this version.

    Parameters
    ----------
    paths : list of str
        ``.py`` files and package folders, each placed at the archive's top
        level under its own name (``models.py`` imports as ``models``).
    """

    idempotent = True

    def __init__(self, paths: list[str]) -> None:
        self.data = zip_code(paths)
        self.names = sorted({os.path.splitext(os.path.basename(p.rstrip("/")))[0] for p in paths})
        self.name = (
            f"batchinfer-code-{hashlib.sha1(self.data, usedforsecurity=False).hexdigest()[:12]}"
        )

    def setup(self, worker: Any) -> None:
        path = os.path.join(worker.local_directory, f"{self.name}.zip")
        if path in sys.path:
            return
        with open(path, "wb") as f:
            f.write(self.data)
        older = [m for m in sys.modules if m.partition(".")[0] in self.names]
        for module in older:  # an older version of the same code, shipped by an earlier job
            del sys.modules[module]
        sys.path.insert(0, path)
        importlib.invalidate_caches()
        if older:  # recipes unpickled, and models built, with the older version
            forget_all()
            cache.clear()


def zip_code(paths: list[str]) -> bytes:
    """A zip archive of ``.py`` files and package folders (without caches), in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            path = path.rstrip("/")
            if os.path.isfile(path):
                archive.write(path, os.path.basename(path))
                continue
            parent = os.path.dirname(path)
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                for name in sorted(files):
                    if not name.endswith((".pyc", ".pyo")):
                        full = os.path.join(folder, name)
                        archive.write(full, os.path.relpath(full, parent))
    return buffer.getvalue()


@contextlib.contextmanager
def shipped_code(client: Any, paths: list[str], job: str = "") -> Iterator[None]:
    """The modules and packages ``paths`` on every worker while the block runs."""
    if not paths:
        yield
        return
    plugin = UploadCode(paths)
    responses = client.register_plugin(plugin) or {}
    with unregister(client, plugin.name):
        failed = _failures(responses)
        if failed:
            count, worker, error = failed
            raise ModelLoadError(
                f"could not ship {paths} to {count} worker(s), e.g. {worker}: {error}"
            )
        yield


def _failures(responses: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """(how many workers failed, the first of them, its error) from ``register_plugin``."""
    failed = {w: r for w, r in responses.items() if r.get("status") != "OK"}
    if not failed:
        return None
    worker, response = next(iter(failed.items()))
    return len(failed), worker, str(response.get("exception") or response)


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
    with unregister(client, name):
        failed = _failures(responses)
        if failed:
            count, worker, error = failed
            raise RuntimeError(
                f"could not send the storage credentials to {count} worker(s), e.g. "
                f"{worker}: {secrets.redact(error)}"
            )
        yield
