"""``JobOptions``: every argument of a job checked once, on the client, before any work.

Nothing here touches a cluster or a file: a bad option fails in
milliseconds with a message that names the option, the value and the fix.
The command line takes its choices from here (:data:`JOB_MODES`, :data:`ON_ERROR`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from dask_batchinfer import _config, secrets
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.fs import absolute_url
from dask_batchinfer.io.read import FINGERPRINTS, FORMATS
from dask_batchinfer.report.progress import resolve_mode

__all__ = [
    "JOB_MODES",
    "ON_ERROR",
    "JobOptions",
    "ReadOptions",
    "check_not_nested",
    "column_names",
]

#: ``run_job(mode=...)``: what to do with an output folder that holds data.
JOB_MODES = ("resume", "overwrite", "error")
#: ``run_job(on_error=...)``: what a row the model or ``preprocess`` fails on does.
ON_ERROR = ("raise", "quarantine")


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """A job's options, checked (see :func:`~dask_batchinfer.run_job` for each).

    The storage options come split: ``storage_options`` as given (the
    client's, credentials included), ``task_options`` what tasks carry (the
    public options and, when there are credentials, a reference to them under
    ``credentials``, sent to the workers once in a plugin).
    """

    output: str
    mode: str = "resume"
    on_error: str = "raise"
    max_bad_rows: int | float | None = None
    keep: tuple[str, ...] | None = None
    partition_on: tuple[str, ...] | None = None
    pools: Mapping[str, str] | bool | None = None
    client: Any = None
    progress: str = "off"
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    secret_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    credentials: str | None = None
    inflight_per_thread: int = 2
    prefetch_per_model_thread: int = 2
    adaptive_lookahead: int = 1000
    partition_timeout: float | None = None
    heartbeat_seconds: float = 30.0
    no_workers_timeout: float | None = 180.0
    fingerprint: str = "metadata"
    upload: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None
    filters: Any = None
    format: str | None = None

    @classmethod
    def build(
        cls,
        *,
        output: Any,
        mode: str = "resume",
        on_error: str = "raise",
        max_bad_rows: Any = None,
        keep: Sequence[str] | str | None = None,
        partition_on: Sequence[str] | str | None = None,
        pools: Any = None,
        client: Any = None,
        progress: bool | str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        partition_timeout: Any = None,
        fingerprint: str = "metadata",
        upload: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
        columns: Sequence[str] | str | None = None,
        filters: Any = None,
        format: str | None = None,
    ) -> JobOptions:
        """Check every option; raise :class:`InputError` naming the first bad one."""
        __tracebackhide__ = True  # IPython shows the user's frame and the error
        _check_choices(mode=mode, on_error=on_error, format=format, fingerprint=fingerprint)
        _check_max_bad_rows(max_bad_rows)
        _check_pools(pools)
        _check_client(client)
        full = dict(storage_options or {})
        public, secret = secrets.split(full)
        secrets.remember(secret)  # redacted from every error this process prints
        reference = secrets.new_reference() if secret else None
        return cls(
            output=_output(output),
            mode=mode,
            on_error=on_error,
            max_bad_rows=max_bad_rows,
            keep=column_names("keep", keep),
            partition_on=column_names("partition_on", partition_on),
            pools=pools,
            client=client,
            progress=resolve_mode(progress),
            storage_options=full,
            task_options=public | ({secrets.REFERENCE: reference} if reference else {}),
            secret_options=secret,
            credentials=reference,
            partition_timeout=_seconds("partition_timeout", partition_timeout,
                                       _config.get("partition-timeout")),
            fingerprint=fingerprint,
            upload=_upload(upload),
            columns=column_names("columns", columns),
            filters=_filters(filters),
            format=format,
            **_configured(),
        )  # fmt: skip

    def bad_rows_allowed(self, already: int) -> int | None:
        """Rows this run may still quarantine (a count limit), given ``already`` committed."""
        if isinstance(self.max_bad_rows, int):
            return self.max_bad_rows - already
        return None

    def too_many_bad_rows(self, rows_in: int, rows_quarantined: int) -> bool:
        """Whether a fraction limit is exceeded, checked at the end of the job."""
        limit = self.max_bad_rows
        return isinstance(limit, float) and rows_in > 0 and rows_quarantined / rows_in > limit


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What ``plan()`` reads, checked as :meth:`JobOptions.build` checks them."""

    keep: tuple[str, ...] | None
    columns: tuple[str, ...] | None
    filters: Any
    format: str | None

    @classmethod
    def build(cls, *, keep: Sequence[str] | str | None = None,
              columns: Sequence[str] | str | None = None, filters: Any = None,
              format: str | None = None) -> ReadOptions:  # fmt: skip
        __tracebackhide__ = True  # IPython shows the user's frame and the error
        _check_choices(format=format)
        keep, columns = column_names("keep", keep), column_names("columns", columns)
        return cls(keep, columns, _filters(filters), format)


def _output(output: Any) -> str:
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise InputError(f"output must be a local path or URL, got {output!r}")
    return absolute_url(os.fspath(output))


def _upload(upload: Any) -> tuple[str, ...]:
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
                f"upload={os.fspath(path)!r}: expected a local .py module or a package "
                f"folder (with __init__.py) to ship to the workers"
            )
        checked.append(full)
    return tuple(checked)


def _check_choices(**given: Any) -> None:
    choices = {"mode": JOB_MODES, "on_error": ON_ERROR, "fingerprint": FINGERPRINTS,
               "format": (None, *FORMATS)}  # fmt: skip
    for name, value in given.items():
        if value not in choices[name]:
            raise InputError(f"{name}={value!r}: expected one of {choices[name]}")


def _configured() -> dict[str, Any]:
    """The options that come from ``batchinfer.*`` settings only."""
    return {
        "inflight_per_thread": int(_config.get("inflight-per-thread")),
        "prefetch_per_model_thread": int(_config.get("prefetch-per-model-thread")),
        "adaptive_lookahead": int(_config.get("adaptive-lookahead")),
        "heartbeat_seconds": float(
            _seconds("progress-heartbeat", None, _config.get("progress-heartbeat")) or 30.0
        ),
        "no_workers_timeout": _seconds("no-workers-timeout", None,
                                       _config.get("no-workers-timeout")),
    }  # fmt: skip


def _filters(filters: Any) -> Any:
    """DNF filters as plain lists of tuples (hashable into the job's fingerprint)."""
    if not filters:
        return None
    if not isinstance(filters, (list, tuple)) or not all(isinstance(f, (list, tuple))
                                                          for f in filters):  # fmt: skip
        raise InputError(
            f"filters={filters!r}: expected [(column, op, value), ...] (AND) or a list of such "
            f"lists (OR of ANDs), as in dask.dataframe.read_parquet"
        )
    nested = isinstance(filters[0][0], (list, tuple))
    clauses = [list(map(tuple, c)) for c in filters] if nested else [list(map(tuple, filters))]
    for clause in (c for conjunction in clauses for c in conjunction):
        if len(clause) != 3 or not isinstance(clause[0], str):
            raise InputError(f"filters: {clause!r} is not (column, op, value)")
    return clauses if nested else clauses[0]


def _check_max_bad_rows(value: Any) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        or (isinstance(value, float) and not 0 <= value < 1)  # NaN too
    ):  # fmt: skip
        raise InputError(
            f"max_bad_rows={value!r}: expected a count (int >= 0) or a fraction (float in [0, 1))"
        )


def _seconds(option: str, value: Any, default: Any) -> float | None:
    """A duration in seconds (a number, or text such as ``"10 minutes"``); None for off."""
    from dask.utils import parse_timedelta

    value = default if value is None else value
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


def _check_pools(pools: Any) -> None:
    if pools is None or isinstance(pools, bool):
        return
    if not isinstance(pools, Mapping) or set(pools) != {"preprocess", "model"}:
        raise InputError(
            f"pools={pools!r}: expected {{'preprocess': RESOURCE, 'model': RESOURCE}}, "
            f"True, False or None"
        )


def _check_client(client: Any) -> None:
    from distributed import Client

    if client is not None and not isinstance(client, (str, Client)):
        raise InputError(
            f"client must be a distributed.Client, a scheduler address or None, got {client!r}"
        )


def check_not_nested(source: Any, options: JobOptions) -> None:
    """Refuse an output inside the input, or an input inside the output."""
    if not isinstance(source, (str, os.PathLike)):
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
