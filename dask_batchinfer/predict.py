"""``predict()``: lazy inference over a Dask DataFrame with ``map_partitions``.

Each partition runs through the same stages as a job's
(:mod:`dask_batchinfer.pipeline.stages`), without the write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dask_batchinfer.errors import InputError
from dask_batchinfer.job.schema import check_inputs, check_keep, check_spec, output_meta
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.pipeline.stages import StageSettings, predict_partition
from dask_batchinfer.worker.packed import Packed

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["predict"]


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
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    import dask.dataframe as dd

    model = check_spec(model)
    if not isinstance(ddf, dd.DataFrame):
        raise InputError(
            f"predict() takes a dask DataFrame, got {type(ddf).__name__}; wrap pandas data "
            f"with dask.dataframe.from_pandas(df, npartitions=...)"
        )
    kept = check_keep(keep, ddf._meta)
    check_inputs(model, ddf._meta, preprocess)
    meta = output_meta(ddf._meta, model, kept)
    settings = StageSettings(model=model, preprocess=preprocess, keep=kept)
    return ddf.map_partitions(
        predict_partition,
        shipped=Packed(settings),  # the scheduler never unpickles the user's code
        meta=meta,
        enforce_metadata=False,
        align_dataframes=False,
    )
