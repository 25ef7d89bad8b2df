"""The cluster a job runs on when it is given none: chosen by the job's size, kept for the next.

``run_job`` without a ``client`` (and no default client) runs on an embedded
local cluster of one of two engines:

- ``"processes"``: :func:`~dask_batchinfer.local_cluster`, a worker process
  per core (or per GPU). Each worker imports the job's modules and loads the
  model (seconds), and no worker's Python holds up another's.
- ``"threads"``: one worker inside this process with a thread per core: no
  process to start, nothing to import twice, the model loaded once in this
  process; the threads share one GIL for the pandas and Arrow work around the
  model (torch releases it). A worker that runs out of memory takes this
  process with it.

``batchinfer.engine: auto`` (the default) picks ``"processes"`` in an
interactive session (an IPython or Jupyter kernel: a partition that exhausts
memory or hangs then ends in a ``PartitionError`` while the kernel and its
variables live on), ``"threads"`` for a script's job whose input is at most
``batchinfer.threads-engine-bytes`` on a machine without GPUs, where starting
processes costs more than it saves, and ``"processes"`` otherwise. Worker
processes of the embedded engine may use ``batchinfer.memory-limit`` each
(default: Dask's, the machine's memory shared between them).

The cluster is kept after the job (``batchinfer.reuse-cluster``):
the next job in this process with the same engine starts at once and finds
its model still loaded. :func:`shutdown` closes it; so does the interpreter's
exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError

__all__ = [
    "ENGINES",
    "await_stopped",
    "choose_engine",
    "connect",
    "dashboard_link",
    "embedded_client",
    "interactive",
    "reaches_workers",
    "shutdown",
]

logger = logging.getLogger(__name__)

#: ``batchinfer.engine``.
ENGINES = ("auto", "threads", "processes")

_lock = threading.Lock()
_embedded: dict[str, tuple[Any, Any]] = {}  # engine -> (cluster, client)
_exit_registered = False


def interactive() -> bool:
    """Whether this process is an interactive IPython session (a Jupyter kernel, the shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        return ipython.get_ipython() is not None
    except Exception:  # noqa: BLE001 - a half-imported IPython is not a session
        return False


def choose_engine(input_bytes: int | None) -> str:
    """The engine for a job reading ``input_bytes`` (None: not known), by ``batchinfer.engine``."""
    from dask.utils import parse_bytes

    setting = str(_config.get("engine"))
    if setting not in ENGINES:
        raise InputError(f"batchinfer.engine={setting!r}: expected one of {ENGINES}")
    if setting != "auto":
        return setting
    if interactive():  # the kernel is the user's hour of state: keep models out of it
        return "processes"
    from dask_batchinfer.cluster.local import gpu_count

    limit = parse_bytes(_config.get("threads-engine-bytes"))
    small = input_bytes is not None and input_bytes <= limit
    return "threads" if small and not gpu_count() else "processes"


@contextlib.contextmanager
def connect(client: Any = None, engine: str = "processes") -> Iterator[Any]:
    """Yield a ``distributed.Client`` for a job.

    ``client`` may be a ``Client``, a scheduler address (``"tcp://host:8786"``),
    or ``None``: then the current default client is used if there is one, and
    otherwise this process's embedded cluster of ``engine`` (see the module's
    docstring), kept for the next job unless ``batchinfer.reuse-cluster`` is off.
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
    started, kept = embedded_client(engine)
    try:
        yield started
    finally:
        if not kept:
            _close(started.cluster, started)


def embedded_client(engine: str) -> tuple[Any, bool]:
    """A client of this process's embedded cluster of ``engine``, started if needed.

    Returns ``(client, kept)``: ``kept`` is False when the caller must close
    the client and its cluster after the job (``batchinfer.reuse-cluster`` off).
    """
    from distributed import Client

    reuse = bool(_config.get("reuse-cluster"))
    with _lock:
        found = _embedded.get(engine) if reuse else None
        if found is not None and _alive(found[1]):
            return found[1], True
        if found is not None:
            _close(*_embedded.pop(engine))
        cluster = _start(engine)
        client = Client(cluster, set_as_default=False)
        logger.info(
            "started a %s cluster (%s); dashboard at %s", engine, cluster, dashboard_link(client)
        )
        if reuse:
            _embedded[engine] = (cluster, client)
            _register_exit()
        return client, reuse


def _start(engine: str) -> Any:
    from dask_batchinfer.cluster.local import local_cluster

    if engine == "processes":
        from dask_batchinfer.worker.process import check_main_guard

        check_main_guard(
            "a job on the processes engine (a dask DataFrame source, an input over "
            "batchinfer.threads-engine-bytes, or GPUs)"
        )
        limit = _config.get("memory-limit")
        return local_cluster(**({"memory_limit": limit} if limit is not None else {}))
    from distributed import LocalCluster

    # in-process transport (inproc://): no sockets between the client and the worker; its
    # HTTP server (metrics, health) would listen on every interface unless told where
    host = _config.get("host")
    return LocalCluster(
        n_workers=1,
        threads_per_worker=os.cpu_count() or 1,
        processes=False,
        dashboard_address=f"{host}:0",
        worker_dashboard_address=f"{host}:0",
    )


def dashboard_link(client: Any) -> str:
    """The scheduler's dashboard as a user can open it, or "" without one.

    Follows ``distributed.dashboard.link`` (what jupyter-server-proxy setups
    set). An in-process scheduler's address names the machine's network
    address although its dashboard listens on ``batchinfer.host``: the link
    then names that host.
    """
    address = str(getattr(getattr(client, "scheduler", None), "address", "") or "")
    if not address.startswith("inproc://"):
        return str(getattr(client, "dashboard_link", "") or "")
    from distributed.utils import format_dashboard_link

    port = client.scheduler_info().get("services", {}).get("dashboard")
    return format_dashboard_link(_config.get("host"), port) if port else ""


def _alive(client: Any) -> bool:
    return client.status == "running" and client.scheduler_info().get("workers") is not None


def _close(cluster: Any, client: Any) -> None:
    for thing in (client, cluster):
        try:
            thing.close()
        except Exception:  # noqa: BLE001 - closing what may be half gone; nothing to report
            logger.debug("closing %s failed", thing, exc_info=True)


def _register_exit() -> None:
    global _exit_registered
    if not _exit_registered:
        atexit.register(shutdown)
        _exit_registered = True


def shutdown() -> None:
    """Close the local clusters that ``run_job`` kept for the next job in this process.

    Frees their memory (worker processes, loaded models); the next job without
    a ``client`` starts a new one. Runs by itself when the interpreter exits.

    Examples
    --------
    >>> dbi.shutdown()  # doctest: +SKIP
    """
    with _lock:
        while _embedded:
            engine, (cluster, client) = _embedded.popitem()
            _close(cluster, client)
            if engine == "threads":  # its worker kept the models in this process
                from dask_batchinfer.worker import cache

                cache.clear()


def reaches_workers(client: Any, workers: Any) -> bool:
    """Whether this process can open a connection to a worker (TCP, 1 s): then results are
    fetched from the workers directly instead of through the scheduler (half its work per
    partition). A client that set ``direct_to_workers`` is taken at its word; one behind a
    gateway or proxy, which reaches the scheduler only, gathers through it."""
    if client.direct_to_workers is not None:
        return bool(client.direct_to_workers)
    address = next(iter(workers), "")
    if not address.startswith("tcp://"):
        return False
    host, _, port = address[len("tcp://") :].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except (OSError, ValueError):
        return False
    return True


def await_stopped(client: Any, keys: set[Any], timeout: float) -> bool:
    """Wait, up to ``timeout`` seconds, until no worker still runs one of ``keys``: cancelled
    tasks run on to their end, writing what they write. Whether they all stopped; best
    effort (a cluster that fails to answer counts as not stopped)."""
    deadline = time.monotonic() + timeout
    try:
        while keys:
            if not any(client.run(_running, keys).values()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the caller's own error matters more
        logger.debug("could not tell whether the cancelled tasks stopped", exc_info=True)
        return False
    return True


def _running(keys: set[Any], dask_worker: Any = None) -> int:
    """On a worker: how many of ``keys`` it runs (cancelled ones still running included)."""
    state = dask_worker.state
    return sum(ts.key in keys for ts in (*state.executing, *state.long_running))
