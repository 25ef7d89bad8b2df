"""What goes in and what comes out: the input columns a model needs, the output's columns.

Checked on the client against the input's ``meta`` (its empty frame), before
any task runs, with messages that name the column and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from dask_batchinfer.errors import InputError, did_you_mean
from dask_batchinfer.io.inputs import SOURCE
from dask_batchinfer.io.parquet import output_schema
from dask_batchinfer.model.spec import ModelSpec

__all__ = [
    "not_found",
    "check_read",
    "read_columns",
    "Columns",
    "check_inputs",
    "check_keep",
    "check_partition_on",
    "check_spec",
    "job_columns",
    "output_meta",
]


def check_spec(model: object) -> ModelSpec:
    if not isinstance(model, ModelSpec):
        raise InputError(
            f"model must be a dask_batchinfer.ModelSpec, got {type(model).__name__}; build one "
            f"with ModelSpec(...), from_torch(...), from_callable(...) or sentence_encoder(...). "
            f"Pass a recipe, not a loaded model: the model is loaded on each worker"
        )
    return model


def not_found(missing: Sequence[str], meta: pd.DataFrame, extra: Sequence[str] = ()) -> str:
    """``"the file F has no column(s) [...] (did you mean 'x'?); it has [...]"``.

    Lists every column the input has (not only those the job chose to read)
    and, for each missing name, the closest one (``difflib``); ``extra`` are
    other names that would have done (model outputs for ``partition_on``).
    """
    first, columns = meta.attrs.get(SOURCE, (None, list(meta.columns)))
    place = f"the file {first}" if first else "the input"
    hint = did_you_mean(missing, [*columns, *extra])
    return f"{place} has no column(s) {list(missing)}{hint}; it has {list(columns)}"


def check_keep(keep: Sequence[str] | str | None, meta: pd.DataFrame) -> tuple[str, ...]:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    if keep is None:
        return ()
    if isinstance(keep, str):
        keep = [keep]
    missing = [c for c in keep if c not in meta.columns]
    if missing:
        raise InputError(f"keep={list(keep)!r}: {not_found(missing, meta)}")
    return tuple(keep)


def _usable_as_float(dtype: object) -> bool:
    """Whether a column of ``dtype`` can become float32 model input (strings: row by row)."""
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        kind = dtype.pyarrow_dtype
        return bool(
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_decimal(kind)
        )
    if isinstance(dtype, pd.CategoricalDtype):
        return _usable_as_float(dtype.categories.dtype)
    return bool(
        pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
    ) and not pd.api.types.is_complex_dtype(dtype)


def check_inputs(model: ModelSpec, meta: pd.DataFrame, preprocess: object) -> None:
    """The model's input columns are there with usable dtypes (unless ``preprocess`` builds them).

    ``meta`` is the input's empty frame (``ddf._meta``). For the default
    float32 input, numeric, boolean and string columns are accepted (strings
    convert row by row; a value that does not fails its row); dates, lists,
    bytes and the like are refused here, before any task runs.
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    columns = list(meta.columns)
    if preprocess is not None:
        if not callable(preprocess):
            raise InputError(f"preprocess must be callable, got {preprocess!r}")
        return
    missing = [c for c in model.input_columns if c not in columns]
    if missing:
        raise InputError(
            f"model {model.name!r} needs input column(s) {missing}: {not_found(missing, meta)}. "
            f"Rename the columns, or pass preprocess= to build them"
        )
    if model.collate is not None:
        return
    dtypes = {c: meta[c].dtype for c in model.input_columns}
    wrong = {c: str(dtype) for c, dtype in dtypes.items() if not _usable_as_float(dtype)}
    if wrong:
        raise InputError(
            f"model {model.name!r} reads column(s) {list(wrong)} as float32 numbers, but "
            f"their dtypes are {wrong}; expected numeric, boolean or numeric strings. Convert "
            f"them in preprocess=, or give the spec a collate= that understands them"
        )


def output_meta(input_meta: pd.DataFrame, model: ModelSpec, keep: Sequence[str]) -> pd.DataFrame:
    """The empty frame describing ``predict``'s output: ``keep`` columns, then the outputs."""
    clash = [c for c in keep if c in model.outputs]
    if clash:
        raise InputError(
            f"keep={list(keep)!r} and the model's outputs share column(s) {clash}; rename "
            f"the model's output columns"
        )
    meta = model.meta().set_axis(input_meta.index[:0])
    if not keep:
        return meta
    return pd.concat([input_meta[list(keep)].iloc[:0], meta], axis=1)


def check_partition_on(
    partition_on: Sequence[str] | str | None, meta: pd.DataFrame, model: ModelSpec
) -> tuple[str, ...]:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    if partition_on is None:
        return ()
    if isinstance(partition_on, str):
        partition_on = [partition_on]
    missing = [c for c in partition_on if c not in meta.columns and c not in model.outputs]
    if missing:
        raise InputError(
            f"partition_on={list(partition_on)!r}: neither an input column nor a model output "
            f"({list(model.outputs)}): {not_found(missing, meta, list(model.outputs))}"
        )
    return tuple(partition_on)


@dataclasses.dataclass(frozen=True)
class Columns:
    """The columns of a job's output.

    ``keep`` holds the input columns written beside the predictions (the
    ``partition_on`` input columns included), ``schema`` the Arrow schema
    every output file shares.
    """

    keep: tuple[str, ...]
    partition_on: tuple[str, ...]
    schema: pa.Schema


def job_columns(
    meta: pd.DataFrame,
    model: ModelSpec,
    *,
    keep: Sequence[str] | str | None = None,
    partition_on: Sequence[str] | str | None = None,
    preprocess: object = None,
    columns: Sequence[str] | None = None,
) -> Columns:
    """Check the input's columns against the model and the options (``columns=`` included);
    the output's columns."""
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    check_read(columns, meta)
    kept = check_keep(keep, meta)
    split = check_partition_on(partition_on, meta, model)
    kept = kept + tuple(c for c in split if c in meta.columns and c not in kept)
    check_inputs(model, meta, preprocess)
    return Columns(kept, split, output_schema(output_meta(meta, model, kept)))


def read_columns(
    model: ModelSpec,
    *,
    keep: Sequence[str] | None = None,
    partition_on: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    preprocess: object = None,
) -> list[str] | None:
    """The input columns a job reads: the model's inputs (or, with ``preprocess``,
    ``columns``), ``keep`` and ``partition_on``; None (all) for a ``preprocess``
    without ``columns``. Names the input lacks are checked later, with its schema."""
    if preprocess is not None and columns is None:
        return None
    wanted = list(columns or ()) if preprocess is not None else list(model.input_columns)
    if preprocess is None and columns is not None:
        wanted += list(columns)
    return list(dict.fromkeys([*wanted, *(keep or ()), *(partition_on or ())]))


def check_read(columns: Sequence[str] | None, meta: pd.DataFrame) -> None:
    """Every name of ``columns=`` is a column of the input."""
    missing = [c for c in columns or () if c not in meta.columns]
    if missing:
        raise InputError(f"columns={list(columns or ())!r}: {not_found(missing, meta)}")
