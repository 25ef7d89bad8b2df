"""Stable tokens for code and for the partitions of a job.

``dask.base.tokenize`` names a module-level function by its import path only,
so editing a preprocessing function's body would not change its token. Jobs
must notice such edits (an edited function invalidates the partitions it
produced), so callables are tokenised by their source code when it can be
found, and by Dask's own rules otherwise.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any

from dask.base import tokenize

__all__ = ["code_token", "partition_slug", "value_token"]


def code_token(obj: Any) -> str:
    """A token that changes when ``obj``'s code changes.

    Functions and classes are tokenised by module, qualified name and source
    (plus defaults and closure values); ``functools.partial`` by its function
    and arguments; callable instances by their type's code and their own
    ``tokenize`` (e.g. ``__dask_tokenize__``).
    """
    if obj is None:
        return tokenize(None)
    if isinstance(obj, functools.partial):
        return tokenize(
            "partial", code_token(obj.func), value_token(obj.args), value_token(obj.keywords)
        )
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj):
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):  # built in, or defined in a REPL without source
            source = None
        extra: list[Any] = []
        if inspect.isfunction(obj):
            extra.append(value_token(obj.__defaults__))
            extra.append(value_token(obj.__kwdefaults__))
            if obj.__closure__:
                try:
                    extra.append(value_token(tuple(c.cell_contents for c in obj.__closure__)))
                except ValueError:  # an empty cell
                    extra.append(tokenize(obj))
        if source is None:
            extra.append(tokenize(obj))
        return tokenize(
            getattr(obj, "__module__", None), getattr(obj, "__qualname__", None), source, extra
        )
    if callable(obj):
        return tokenize(code_token(type(obj)), tokenize(obj))
    return tokenize(obj)


def value_token(value: Any) -> str:
    """``tokenize`` with every callable inside (dicts, lists, tuples) tokenised by code."""
    if callable(value):
        return code_token(value)
    if isinstance(value, Mapping):
        return tokenize(sorted((str(k), value_token(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tokenize(type(value).__name__, [value_token(v) for v in value])
    return tokenize(value)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def partition_slug(relative_path: str) -> str:
    """A file-name-safe name for an input file, e.g. ``day=1/a.parquet`` -> ``day=1--a``."""
    stem = (
        relative_path[: -len(".parquet")] if relative_path.endswith(".parquet") else relative_path
    )
    return _UNSAFE.sub("_", stem.replace("/", "--")).strip("._") or "partition"
