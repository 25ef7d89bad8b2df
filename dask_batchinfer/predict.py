"""``predict()``: lazy inference over a Dask DataFrame with ``map_partitions``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dask_batchinfer.batching import BatchStats, run_model
from dask_batchinfer.errors import BatchInferError, InputError, ModelLoadError, PartitionError
from dask_batchinfer.model import ModelSpec

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
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


def check_inputs(model: ModelSpec, columns: Sequence[str], preprocess: object) -> None:
    """The model's input columns are there (unless ``preprocess`` builds them)."""
    if preprocess is not None:
        if not callable(preprocess):
            raise InputError(f"preprocess must be callable, got {preprocess!r}")
        return
    missing = [c for c in model.input_columns if c not in columns]
    if missing:
        raise InputError(
            f"model {model.name!r} needs input column(s) {missing}; the input has "
            f"{list(columns)}. Rename the columns or pass preprocess= to build them"
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
    cause = str(err) if isinstance(err, BatchInferError) else f"{type(err).__name__}: {err}"
    return PartitionError(
        f"{_where(number, source)} failed in {stage}: {cause}",
        partition=number if number is not None else -1,
        source=source,
    )


def preprocess_partition(
    frame: pd.DataFrame,
    *,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] = (),
    number: int | None = None,
    source: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``preprocess`` on one partition; return ``(features, keep columns)``.

    Errors are re-raised as :class:`PartitionError` naming the partition and file.
    """
    try:
        features = preprocess(frame) if preprocess is not None else frame
        if not isinstance(features, pd.DataFrame):
            raise InputError(
                f"preprocess must return a pandas DataFrame, got {type(features).__name__}"
            )
        if len(features) != len(frame):
            raise InputError(
                f"preprocess returned {len(features)} rows for {len(frame)} input rows; it "
                f"must keep every row, in order (filter rows before run_job/predict)"
            )
    except Exception as err:
        raise _partition_error(err, "preprocessing", number, source) from err
    return features, frame[list(keep)]


ERROR_COLUMNS = ("row", "error_type", "error")


def _bad_rows(
    features: pd.DataFrame, model: ModelSpec, stats: BatchStats | None, first_only: bool
) -> tuple[list[tuple[int, pd.DataFrame]], list[tuple[int, BaseException]]]:
    """Split rows the model fails on from the rest by halving failing ranges.

    Returns the outputs of the good ranges (with their start row) and each bad
    row with its error. ``first_only`` stops at the first bad row.
    """
    good: list[tuple[int, pd.DataFrame]] = []
    bad: list[tuple[int, BaseException]] = []

    def visit(lo: int, hi: int) -> None:
        if first_only and bad:
            return
        try:
            good.append((lo, run_model(model, features.iloc[lo:hi], stats)))
        except ModelLoadError:
            raise
        except Exception as err:
            if hi - lo == 1:
                bad.append((lo, err))
                return
            mid = (lo + hi) // 2
            visit(lo, mid)
            visit(mid, hi)

    mid = len(features) // 2
    visit(0, mid)
    visit(mid, len(features))
    return good, bad


def _describe_row(kept: pd.DataFrame, row: int) -> str:
    values = {c: kept.iloc[row][c] for c in kept.columns[:3]}
    ids = ", ".join(f"{c}={getattr(v, 'item', lambda v=v: v)()!r}" for c, v in values.items())
    return f"row {row}" + (f" ({ids})" if ids else "")


def infer_features(
    features: pd.DataFrame,
    kept: pd.DataFrame,
    *,
    model: ModelSpec,
    number: int | None = None,
    source: str | None = None,
    stats: BatchStats | None = None,
    on_error: str = "raise",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the model on preprocessed ``features``.

    Returns ``(kept + output columns, bad rows)``. When the partition fails,
    the failing rows are found by halving: with ``on_error="raise"`` the first
    one is named in a :class:`PartitionError` (partition, file, row, ids,
    cause); with ``"quarantine"`` the other rows' outputs are returned and the
    bad rows come back as ``kept`` columns plus ``row``, ``error_type`` and
    ``error``. Model-loading errors pass through unchanged.
    """
    try:
        outputs = run_model(model, features, stats).set_axis(kept.index)
        bad_rows = kept.iloc[:0].assign(row=pd.Series([], dtype="int64"),
                                        error_type=pd.Series([], dtype="str"),
                                        error=pd.Series([], dtype="str"))  # fmt: skip
    except ModelLoadError:
        raise
    except Exception as err:
        good: list[tuple[int, pd.DataFrame]] = []
        bad: list[tuple[int, BaseException]] = [(0, err)] if len(features) == 1 else []
        if len(features) > 1:
            good, bad = _bad_rows(features, model, stats, first_only=on_error == "raise")
        if on_error == "raise" or not bad:
            row, cause = bad[0] if bad else (None, err)
            where = f"model {model.name!r}" + (
                f" at {_describe_row(kept, row)}" if row is not None else ""
            )
            raise _partition_error(cause, where, number, source) from cause
        rows = [r for r, _ in bad]
        bad_rows = kept.iloc[rows].assign(
            row=pd.Series(rows, index=kept.index[rows], dtype="int64"),
            error_type=pd.Series(
                [type(e).__name__ for _, e in bad], index=kept.index[rows], dtype="str"
            ),
            error=pd.Series([str(e)[:2000] for _, e in bad], index=kept.index[rows], dtype="str"),
        )
        good.sort(key=lambda g: g[0])
        positions = [np.arange(lo, lo + len(out)) for lo, out in good]
        good_rows = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
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
    features, kept = preprocess_partition(
        frame, preprocess=preprocess, keep=keep, number=number, source=source
    )
    result, _ = infer_features(
        features, kept, model=model, number=number, source=source, stats=stats
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
    check_inputs(model, list(ddf.columns), preprocess)
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
