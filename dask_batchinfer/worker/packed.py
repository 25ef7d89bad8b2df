"""User code travels as bytes that only the workers open.

A job's tasks carry the user's model recipe and preprocessing function. Pickled
as they are, the scheduler would unpickle them with the task graph and so need
every user module installed (``Error during deserialization of the task
graph``). :class:`Packed` pickles them once on the client into bytes; the
scheduler passes the bytes along untouched and a worker unpickles them on first
use (once per process, cached by content). When a worker lacks a module the
recipe needs, :meth:`Packed.get` raises :class:`~dask_batchinfer.errors.ModelLoadError`
naming the module and the worker, with the ways to ship it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Any, Generic, TypeVar

import cloudpickle

from dask_batchinfer.errors import ModelLoadError
from dask_batchinfer.worker.cache import LRU
from dask_batchinfer.worker.process import worker_address

__all__ = ["Packed", "forget_all", "missing_module_hint", "unpack"]

T = TypeVar("T")

_cache: LRU[str, Any] = LRU(lambda: 16)  # unpickled objects by content
_lock = threading.Lock()


class Packed(Generic[T]):
    """``obj`` pickled once; :meth:`get` unpickles it where it is used.

    Examples
    --------
    >>> packed = Packed({"batch_size": 64})
    >>> packed.get()
    {'batch_size': 64}
    """

    __slots__ = ("blob", "token")

    def __init__(self, obj: T) -> None:
        self.blob = cloudpickle.dumps(obj)
        self.token = hashlib.sha1(self.blob, usedforsecurity=False).hexdigest()

    @classmethod
    def _rebuild(cls, blob: bytes, token: str) -> Packed[Any]:
        packed = cls.__new__(cls)
        packed.blob, packed.token = blob, token
        return packed

    def __reduce__(self) -> tuple[Any, ...]:
        return (Packed._rebuild, (self.blob, self.token))

    def __dask_tokenize__(self) -> str:
        return self.token

    def __repr__(self) -> str:
        return f"Packed({self.token[:8]}, {len(self.blob)} bytes)"

    def get(self) -> T:
        """The object, unpickled once per process.

        Raises
        ------
        ModelLoadError
            When this process cannot import a module the object needs.
        """
        with _lock:
            found = _cache.get(self.token)
        if found is not None:
            return found  # type: ignore[no-any-return]
        try:
            obj = cloudpickle.loads(self.blob)
        except (ImportError, AttributeError) as err:
            raise _not_importable(err) from err
        with _lock:
            _cache.put(self.token, obj)
        return obj  # type: ignore[no-any-return]


def forget_all() -> None:
    """Forget every unpickled object: the next :meth:`Packed.get` imports afresh (after
    new code was shipped to this process)."""
    with _lock:
        _cache.clear()


def unpack(value: Packed[T] | T) -> T:
    """``value.get()`` for a :class:`Packed`, else ``value`` (a direct call in a test)."""
    return value.get() if isinstance(value, Packed) else value


def _not_importable(err: BaseException) -> ModelLoadError:
    module = getattr(err, "name", None)
    where = worker_address() or "this process"
    what = f"module {module!r}" if module else "a module"
    return ModelLoadError(
        f"{where} cannot import {what}, which the job's model or preprocess function needs "
        f"({type(err).__name__}: {err}). {missing_module_hint(module)}"
    )


def missing_module_hint(module: str | None) -> str:
    """How to get ``module`` onto the workers; names its file when this process has it."""
    top = (module or "").partition(".")[0]
    loaded = sys.modules.get(top) if top else None
    path = getattr(loaded, "__file__", None)
    if path and os.path.basename(path) == "__init__.py":
        path = os.path.dirname(path)
    ship = f"upload=[{path!r}] (CLI: --upload {path})" if path else "upload=[PATH] (CLI: --upload)"
    return (
        f"Install it on every worker (a package in the workers' environment), or ship it with "
        f"the job: run_job(..., {ship}), or client.upload_file()"
    )
