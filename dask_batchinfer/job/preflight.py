"""Checks of the cluster a job is about to run on, before any partition is read.

On a cluster of other machines three things that a local cluster hides can go
wrong, and each would otherwise show up late or not at all:

- the workers lack dask-batchinfer, or run another version of it;
- the workers cannot import the user's modules that the model or preprocess
  function needs (they were never installed or shipped there);
- a local input or output path names a folder the workers do not see (their
  own disk, not the client's): results would land where nobody reads them.

Each check is one broadcast to the workers (``Client.run``), a few ms.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import fsspec

from dask_batchinfer.errors import ClusterError, ModelLoadError
from dask_batchinfer.io.fs import is_local_url
from dask_batchinfer.version import __version__
from dask_batchinfer.worker.packed import Packed, missing_module_hint

__all__ = ["check_code", "check_shared_storage", "check_versions"]


def _broadcast(client: Any, function: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """``function(*args)`` on every worker; a worker that failed to answer is left out."""
    answers = client.run(function, *args, on_error="return")
    return {w: a for w, a in answers.items() if not isinstance(a, BaseException)}


def _version() -> str:
    return __version__


def check_versions(client: Any) -> None:
    """Every worker runs this version of dask-batchinfer.

    Raises
    ------
    ClusterError
        Naming the workers without it or with another version.
    """
    answers = client.run(_version, on_error="return")
    other = {
        w: f"no dask-batchinfer ({type(v).__name__}: {v})"
        if isinstance(v, ImportError)
        else f"dask-batchinfer {v}"
        for w, v in answers.items()
        if not isinstance(v, BaseException) or isinstance(v, ImportError)
        if v != __version__
    }
    if other:
        worker, version = next(iter(other.items()))
        raise ClusterError(
            f"{len(other)} of {len(answers)} workers run another dask-batchinfer than this "
            f"client's {__version__} (e.g. {worker}: {version}): install the same version on "
            f"the client, the scheduler and every worker"
        )


def _can_unpack(packed: Packed[Any]) -> dict[str, str | None] | None:
    try:
        packed.get()
    except ModelLoadError as err:
        cause = err.__cause__ or err
        return {"module": getattr(cause, "name", None), "error": f"{type(cause).__name__}: {cause}"}
    return None


def check_code(client: Any, packed: Packed[Any]) -> None:
    """Every worker can import the modules that ``packed`` (model, preprocess) needs.

    Raises
    ------
    ModelLoadError
        Naming the module, the workers that lack it and how to ship it.
    """
    failures = {w: e for w, e in _broadcast(client, _can_unpack, packed).items() if e}
    if not failures:
        return
    worker, failure = next(iter(failures.items()))
    module = failure["module"]
    raise ModelLoadError(
        f"{len(failures)} worker(s) cannot import module {module!r}, which the model or "
        f"preprocess function needs: {sorted(failures)} ({failure['error']} on {worker}). "
        f"{missing_module_hint(module)}. Nothing was read or written."
    )


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def check_shared_storage(client: Any, output: str, input_file: str | None) -> None:
    """The workers see the local output folder (and the local input) where the client does.

    The client writes a probe file in the output's staging folder; every
    worker must see it, and the first input file, at the same path.

    Raises
    ------
    ClusterError
        When some worker does not: the cluster's workers do not share this
        machine's disk, and the job needs shared storage.
    """
    checks: list[tuple[str, str]] = []  # (path to look for, what it stands for)
    probe = None
    if is_local_url(output):
        fs, root = fsspec.core.url_to_fs(output)
        probe = posixpath.join(root, "_staging", f"probe-shared-{uuid.uuid4().hex}")
        fs.makedirs(posixpath.dirname(probe), exist_ok=True)
        fs.pipe_file(probe, b"")
        checks.append((probe, f"the output folder {root}"))
    if input_file is not None and is_local_url(input_file):
        checks.append((fsspec.core.url_to_fs(input_file)[1], f"the input file {input_file}"))
    if not checks:
        return
    try:
        answers = _broadcast(client, _missing, [path for path, _ in checks])
    finally:
        if probe is not None:
            fs.rm(probe)
    blind = {w: m for w, m in answers.items() if m}
    if not blind:
        return
    missing = set().union(*blind.values())
    what = " and ".join(name for path, name in checks if path in missing)
    raise ClusterError(
        f"{len(blind)} of {len(answers)} workers do not see {what} on their disk "
        f"({sorted(blind)}): they run on other machines, or in containers without this "
        f"folder. A local path works only on shared storage that every worker mounts at the "
        f"same path; for this cluster use an object store (s3://bucket/prefix, with "
        f"storage_options) or a network file system mounted at the same path on the client "
        f"and every worker. "
        f"Nothing was read or written."
    )
