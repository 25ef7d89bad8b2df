"""``predict()``: lazy inference over a Dask DataFrame with ``map_partitions``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

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
    err: Exception, stage: str, number: int | None, source: str | None
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


def infer_features(
    features: pd.DataFrame,
    kept: pd.DataFrame,
    *,
    model: ModelSpec,
    number: int | None = None,
    source: str | None = None,
    stats: BatchStats | None = None,
) -> pd.DataFrame:
    """Run the model on preprocessed ``features``; return ``kept`` + output columns.

    Errors are re-raised as :class:`PartitionError` naming the partition and
    file; model-loading errors pass through unchanged.
    """
    try:
        outputs = run_model(model, features, stats).set_axis(kept.index)
    except ModelLoadError:
        raise
    except Exception as err:
        raise _partition_error(err, f"model {model.name!r}", number, source) from err
    return pd.concat([kept, outputs], axis=1) if len(kept.columns) else outputs


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
    return infer_features(features, kept, model=model, number=number, source=source, stats=stats)


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
