"""``predict()``: lazy inference over a Dask DataFrame with ``map_partitions``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dask_batchinfer.batching import BatchStats, run_model
from dask_batchinfer.errors import (
    BatchInferError,
    InputError,
    ModelLoadError,
    PartitionError,
    SchemaError,
)
from dask_batchinfer.model import ModelSpec

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "Prepared",
    "infer_features",
    "infer_partition",
    "output_meta",
    "predict",
    "preprocess_partition",
]

Preprocess = Callable[[pd.DataFrame], pd.DataFrame]


def check_spec(model: object) -> ModelSpec:
    if not isinstance(model, ModelSpec):
        raise InputError(
            f"model must be a dask_batchinfer.ModelSpec, got {type(model).__name__}; build one "
            f"with ModelSpec(...), from_torch(...), from_callable(...) or sentence_encoder(...). "
            f"Pass a recipe, not a loaded model: the model is loaded on each worker"
        )
    return model


def check_keep(keep: Sequence[str] | str | None, columns: Sequence[str]) -> tuple[str, ...]:
    if keep is None:
        return ()
    if isinstance(keep, str):
        keep = [keep]
    missing = [c for c in keep if c not in columns]
    if missing:
        raise InputError(
            f"keep={list(keep)!r}: column(s) {missing} are not in the input, which has "
            f"{list(columns)}"
        )
    return tuple(keep)


def _usable_as_float(dtype: object) -> bool:
    """Whether a column of ``dtype`` can become float32 model input (strings: row by row)."""
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        kind = dtype.pyarrow_dtype
        return bool(
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_decimal(kind)
        )  # fmt: skip
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
    columns = list(meta.columns)
    if preprocess is not None:
        if not callable(preprocess):
            raise InputError(f"preprocess must be callable, got {preprocess!r}")
        return
    missing = [c for c in model.input_columns if c not in columns]
    if missing:
        raise InputError(
            f"model {model.name!r} needs input column(s) {missing}; the input has "
            f"{columns}. Rename the columns or pass preprocess= to build them"
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


def _where(number: int | None, source: str | None) -> str:
    where = f"partition {number}" if number is not None else "a partition"
    return f"{where} (file {source})" if source else where


def _partition_error(
    err: BaseException, stage: str, number: int | None, source: str | None
) -> PartitionError:
    cause = _error_text(err)
    return PartitionError(
        f"{_where(number, source)} failed in {stage}: {cause}",
        partition=number if number is not None else -1,
        source=source,
    )


class _ShapeError(InputError):
    """``preprocess`` broke its contract (a whole-partition error: never bisected)."""


def _apply(preprocess: Preprocess | None, frame: pd.DataFrame) -> pd.DataFrame:
    features = preprocess(frame) if preprocess is not None else frame
    if not isinstance(features, pd.DataFrame):
        raise _ShapeError(
            f"preprocess must return a pandas DataFrame, got {type(features).__name__}"
        )
    if len(features) != len(frame):
        raise _ShapeError(
            f"preprocess returned {len(features)} rows for {len(frame)} input rows; it "
            f"must keep every row, in order (filter rows before run_job/predict)"
        )
    return features


def _bisect(
    run: Callable[[int, int], pd.DataFrame], rows: int, first_only: bool
) -> tuple[list[tuple[int, pd.DataFrame]], list[tuple[int, BaseException]]]:
    """Run ``run(lo, hi)`` over ``[0, rows)``, halving the ranges that fail.

    Returns the outputs of the good ranges (with their start row) and each bad
    row with its error. ``first_only`` stops at the first bad row. Model
    loading errors and broken preprocess contracts are not row errors: they
    pass through.
    """
    good: list[tuple[int, pd.DataFrame]] = []
    bad: list[tuple[int, BaseException]] = []

    def visit(lo: int, hi: int) -> None:
        if first_only and bad:
            return
        try:
            good.append((lo, run(lo, hi)))
        except (ModelLoadError, SchemaError, _ShapeError):
            raise
        except Exception as err:
            if hi - lo == 1:
                bad.append((lo, err))
                return
            mid = (lo + hi) // 2
            visit(lo, mid)
            visit(mid, hi)

    if rows == 1:
        try:
            good.append((0, run(0, 1)))
        except (ModelLoadError, SchemaError, _ShapeError):
            raise
        except Exception as err:
            bad.append((0, err))
        return good, bad
    mid = rows // 2
    visit(0, mid)
    visit(mid, rows)
    return good, bad


def _describe_row(kept: pd.DataFrame, row: int, label: int | None = None) -> str:
    values = {c: kept.iloc[row][c] for c in kept.columns[:3]}
    ids = ", ".join(f"{c}={getattr(v, 'item', lambda v=v: v)()!r}" for c, v in values.items())
    return f"row {row if label is None else label}" + (f" ({ids})" if ids else "")


def _no_bad_rows(kept: pd.DataFrame) -> pd.DataFrame:
    return kept.iloc[:0].assign(row=pd.Series([], dtype="int64"),
                                error_type=pd.Series([], dtype="str"),
                                error=pd.Series([], dtype="str"))  # fmt: skip


def _bad_frame(
    kept: pd.DataFrame, bad: list[tuple[int, BaseException]], positions: np.ndarray | None
) -> pd.DataFrame:
    rows = [r for r, _ in bad]
    index = kept.index[rows]
    labels = positions[rows] if positions is not None else np.asarray(rows, dtype=np.int64)
    return kept.iloc[rows].assign(
        row=pd.Series(labels, index=index, dtype="int64"),
        error_type=pd.Series([type(e).__name__ for _, e in bad], index=index, dtype="str"),
        error=pd.Series([str(e)[:2000] for _, e in bad], index=index, dtype="str"),
    )


def _good_positions(good: list[tuple[int, pd.DataFrame]]) -> np.ndarray:
    positions = [np.arange(lo, lo + len(out)) for lo, out in good]
    return np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)


def _error_text(err: BaseException) -> str:
    return str(err) if isinstance(err, BatchInferError) else f"{type(err).__name__}: {err}"


@dataclasses.dataclass
class Prepared:
    """One preprocessed partition on its way to the model.

    ``features`` and ``kept`` hold the rows preprocessing succeeded on;
    ``bad`` the rows it failed on (quarantine); ``positions`` each kept row's
    position in the input partition (None: all rows, in order).
    """

    features: pd.DataFrame
    kept: pd.DataFrame
    bad: pd.DataFrame
    rows_in: int
    positions: np.ndarray | None = None
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0


def preprocess_partition(
    frame: pd.DataFrame,
    *,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] = (),
    number: int | None = None,
    source: str | None = None,
    on_error: str = "raise",
) -> Prepared:
    """Run ``preprocess`` on one partition.

    When it fails, the failing rows are found by halving (``preprocess`` is
    expected to work row by row: the same rows give the same features
    whatever the batch). ``on_error="raise"`` raises a :class:`PartitionError`
    naming the partition, file, first bad row and cause; ``"quarantine"``
    returns the other rows and the bad ones in ``Prepared.bad``.
    """
    kept_all = frame[list(keep)]
    try:
        features = _apply(preprocess, frame)
        return Prepared(features, kept_all, _no_bad_rows(kept_all), len(frame))
    except _ShapeError as err:
        raise _partition_error(err, "preprocessing", number, source) from err
    except Exception as err:
        if preprocess is None:
            raise _partition_error(err, "preprocessing", number, source) from err
        first_error = err
    try:
        good, bad = _bisect(
            lambda lo, hi: _apply(preprocess, frame.iloc[lo:hi]),
            len(frame),
            first_only=on_error == "raise",
        )
    except _ShapeError as err:
        raise _partition_error(err, "preprocessing", number, source) from err
    if on_error == "raise" or not bad:
        row, cause = bad[0] if bad else (None, first_error)
        where = "preprocessing" + (f" at {_describe_row(kept_all, row)}" if row is not None else "")
        raise _partition_error(cause, where, number, source) from cause
    good.sort(key=lambda g: g[0])
    positions = _good_positions(good)
    features = pd.concat([out for _, out in good]) if good else frame.iloc[:0]
    return Prepared(
        features, kept_all.iloc[positions], _bad_frame(kept_all, bad, None), len(frame), positions
    )


def infer_features(
    features: pd.DataFrame,
    kept: pd.DataFrame,
    *,
    model: ModelSpec,
    number: int | None = None,
    source: str | None = None,
    stats: BatchStats | None = None,
    on_error: str = "raise",
    positions: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the model on preprocessed ``features``.

    Returns ``(kept + output columns, bad rows)``. When the partition fails,
    the failing rows are found by halving: with ``on_error="raise"`` the first
    one is named in a :class:`PartitionError` (partition, file, row, ids,
    cause); with ``"quarantine"`` the other rows' outputs are returned and the
    bad rows come back as ``kept`` columns plus ``row`` (its position in the
    input partition, see ``positions``), ``error_type`` and ``error``.
    Model-loading errors pass through unchanged.
    """

    def run(lo: int, hi: int) -> pd.DataFrame:
        attempt = BatchStats()
        out = run_model(model, features.iloc[lo:hi], attempt)
        if stats is not None:
            stats.add(attempt)
        return out

    try:
        outputs = run(0, len(features)).set_axis(kept.index)
        bad_rows = _no_bad_rows(kept)
    except ModelLoadError:
        raise
    except SchemaError as err:
        raise _partition_error(err, f"model {model.name!r}", number, source) from err
    except Exception as err:
        good, bad = _bisect(run, len(features), first_only=on_error == "raise")
        if on_error == "raise" or not bad:
            row, cause = bad[0] if bad else (None, err)
            where = f"model {model.name!r}" + (
                f" at {_describe_row(kept, row, positions[row] if positions is not None else None)}"
                if row is not None
                else ""
            )
            raise _partition_error(cause, where, number, source) from cause
        bad_rows = _bad_frame(kept, bad, positions)
        good.sort(key=lambda g: g[0])
        good_rows = _good_positions(good)
        outputs = pd.concat([out for _, out in good]) if good else model.meta()
        outputs = outputs.set_axis(kept.index[good_rows])
        kept = kept.iloc[good_rows]
    result = pd.concat([kept, outputs], axis=1) if len(kept.columns) else outputs
    return result, bad_rows


def infer_partition(
    frame: pd.DataFrame,
    *,
    model: ModelSpec,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] = (),
    number: int | None = None,
    source: str | None = None,
    stats: BatchStats | None = None,
) -> pd.DataFrame:
    """Preprocess one partition, run the model and return ``keep`` + output columns."""
    prepared = preprocess_partition(
        frame, preprocess=preprocess, keep=keep, number=number, source=source
    )
    result, _ = infer_features(
        prepared.features, prepared.kept, model=model, number=number, source=source, stats=stats
    )
    return result


def _predict_partition(
    frame: pd.DataFrame,
    *,
    model: ModelSpec,
    preprocess: Preprocess | None,
    keep: tuple[str, ...],
    partition_info: dict | None = None,
) -> pd.DataFrame:
    number = partition_info["number"] if partition_info else None
    return infer_partition(frame, model=model, preprocess=preprocess, keep=keep, number=number)


def predict(
    ddf: dd.DataFrame,
    model: ModelSpec,
    *,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] | str | None = None,
) -> dd.DataFrame:
    """Lazily run ``model`` over every partition of ``ddf``.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The input, partitioned; nothing is read until you compute.
    model : ModelSpec
        The recipe. Only the recipe travels in the graph; each worker process
        loads the model once and reuses it for all its partitions.
    preprocess : callable, optional
        ``preprocess(partition) -> DataFrame`` run before the model, on the same
        rows in the same order (e.g. feature engineering, tokenisation).
    keep : list of str, optional
        Input columns to carry into the output beside the predictions, e.g. ids.

    Returns
    -------
    dask.dataframe.DataFrame
        ``keep`` columns then the model's output columns, row-aligned with
        ``ddf`` (same index, same partitions).

    Raises
    ------
    InputError
        On the client, before any task runs, for a bad ``model``/``keep`` or
        missing input columns.

    Examples
    --------
    >>> scores = dbi.predict(ddf, spec, keep=["user_id"])  # doctest: +SKIP
    >>> scores.to_parquet("scores/")                         # doctest: +SKIP
    """
    import dask.dataframe as dd

    model = check_spec(model)
    if not isinstance(ddf, dd.DataFrame):
        raise InputError(
            f"predict() takes a dask DataFrame, got {type(ddf).__name__}; wrap pandas data "
            f"with dask.dataframe.from_pandas(df, npartitions=...)"
        )
    keep = check_keep(keep, list(ddf.columns))
    check_inputs(model, ddf._meta, preprocess)
    meta = output_meta(ddf._meta, model, keep)
    return ddf.map_partitions(
        _predict_partition,
        model=model,
        preprocess=preprocess,
        keep=keep,
        meta=meta,
        enforce_metadata=False,
        align_dataframes=False,
    )
