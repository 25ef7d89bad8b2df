"""The checks behind :class:`~dask_batchinfer.job.options.JobOptions`: one per kind of value.

Each takes the option's name (for the message) and the value as given, and
returns it normalised or raises :class:`InputError` naming the option, the
value and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from dask_batchinfer.errors import InputError
from dask_batchinfer.io.fs import absolute_url

__all__ = [
    "bad_rows_limit",
    "check_not_nested",
    "choice",
    "cluster_client",
    "column_names",
    "dnf_filters",
    "integer",
    "output_url",
    "pools_choice",
    "seconds",
    "upload_paths",
]


def output_url(option: str, output: Any) -> str | None:
    """An output folder as an absolute URL (None: no output, as for ``plan()``)."""
    if output is None:
        return None
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise InputError(f"{option} must be a local path or URL, got {output!r}")
    return absolute_url(os.fspath(output))


def upload_paths(option: str, upload: Any) -> tuple[str, ...]:
    """Local ``.py`` files and package folders to ship to the workers, absolute."""
    if upload is None:
        return ()
    paths = [upload] if isinstance(upload, (str, os.PathLike)) else list(upload)
    checked = []
    for path in paths:
        full = os.path.abspath(os.fspath(path)).rstrip("/")
        is_module = os.path.isfile(full) and full.endswith(".py")
        is_package = os.path.isfile(os.path.join(full, "__init__.py"))
        if not (is_module or is_package):
            raise InputError(
                f"{option}={os.fspath(path)!r}: expected a local .py module or a package "
                f"folder (with __init__.py) to ship to the workers"
            )
        checked.append(full)
    return tuple(checked)


def dnf_filters(option: str, filters: Any) -> Any:
    """DNF filters as plain lists of tuples (hashable into the job's fingerprint)."""
    if not filters:
        return None
    if not isinstance(filters, (list, tuple)) or not all(
        isinstance(f, (list, tuple)) for f in filters
    ):
        raise InputError(
            f"{option}={filters!r}: expected [(column, op, value), ...] (AND) or a list of such "
            f"lists (OR of ANDs), as in dask.dataframe.read_parquet"
        )
    nested = isinstance(filters[0][0], (list, tuple))
    clauses = [list(map(tuple, c)) for c in filters] if nested else [list(map(tuple, filters))]
    for clause in (c for conjunction in clauses for c in conjunction):
        if len(clause) != 3 or not isinstance(clause[0], str):
            raise InputError(f"{option}: {clause!r} is not (column, op, value)")
    return clauses if nested else clauses[0]


def bad_rows_limit(option: str, value: Any) -> int | float | None:
    """A count (int >= 0) or a fraction (float in [0, 1)) of bad rows; None for no limit."""
    if value is None:
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or value < 0 or (isinstance(value, float) and not 0 <= value < 1):  # NaN too
        raise InputError(
            f"{option}={value!r}: expected a count (int >= 0) or a fraction (float in [0, 1))"
        )
    return value


def seconds(option: str, value: Any) -> float | None:
    """A duration in seconds (a number, or text such as ``"10 minutes"``); None for off."""
    from dask.utils import parse_timedelta

    if value is None or value is False:
        return None
    try:
        seconds = parse_timedelta(value, default="s")
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(f"{option}={value!r}: expected seconds, e.g. 600 or '10 minutes'") from err
    if seconds is None or not seconds > 0:
        raise InputError(f"{option}={value!r}: expected a positive duration in seconds")
    return float(seconds)


def column_names(option: str, value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``value`` (a name or a list of names) as a tuple, checked; ``option`` names it in errors."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(name, str) for name in names):
        raise InputError(f"{option}={value!r}: expected a column name or a list of them")
    return tuple(names)


def pools_choice(option: str, pools: Any) -> Mapping[str, str] | bool | None:
    """None (detect), a bool, or ``{"preprocess": RESOURCE, "model": RESOURCE}``."""
    if pools is None or isinstance(pools, bool):
        return pools
    if not isinstance(pools, Mapping) or set(pools) != {"preprocess", "model"}:
        raise InputError(
            f"{option}={pools!r}: expected {{'preprocess': RESOURCE, 'model': RESOURCE}}, "
            f"True, False or None"
        )
    return dict(pools)


def cluster_client(option: str, client: Any) -> Any:
    """A ``distributed.Client``, a scheduler address, or None (the job's engine)."""
    from distributed import Client

    if client is not None and not isinstance(client, (str, Client)):
        raise InputError(
            f"{option} must be a distributed.Client, a scheduler address or None, got {client!r}"
        )
    return client


def choice(choices: Sequence[Any]) -> Any:
    """A check that the value is one of ``choices``."""

    def check(option: str, value: Any) -> Any:
        if value not in choices:
            raise InputError(f"{option}={value!r}: expected one of {tuple(choices)}")
        return value

    return check


def integer(option: str, value: Any) -> int:
    """A whole number >= 0 (a configuration key)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{option}={value!r}: expected a whole number >= 0")
    return value


def check_not_nested(source: Any, options: Any) -> None:
    """Refuse an output inside the input, or an input inside the output."""
    if not isinstance(source, (str, os.PathLike)) or options.output is None:
        return
    in_fs, in_root = fsspec.core.url_to_fs(os.fspath(source), **options.storage_options)
    out_fs, out_root = fsspec.core.url_to_fs(options.output, **options.storage_options)
    if in_fs.protocol != out_fs.protocol:
        return
    a, b = in_root.rstrip("/") + "/", out_root.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise InputError(
            f"output {options.output!r} and input {os.fspath(source)!r} overlap; the job "
            f"deletes stale files under its output, so write to a folder outside the input"
        )
