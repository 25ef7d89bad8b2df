"""The model step: run the model on preprocessed features, finding the rows it fails on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dask_batchinfer.errors import ModelLoadError, SchemaError
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.batching import BatchStats, run_loaded
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.pipeline.rows import (
    bad_frame,
    bisect,
    describe_row,
    good_positions,
    no_bad_rows,
    partition_error,
)
from dask_batchinfer.worker.process import configure_torch_threads

__all__ = ["infer_features", "run_model"]


def run_model(
    spec: ModelSpec, frame: pd.DataFrame, stats: BatchStats | None = None, prepared: bool = False
) -> pd.DataFrame:
    """Run ``spec`` over every row of ``frame``; return the output columns on ``frame``'s index.

    The model comes from the per-process cache (loaded on first use; an empty
    frame loads nothing). ``stats``, when given, receives batch counts,
    out-of-memory recoveries and padding. ``prepared``: ``frame`` already went
    through the spec's ``prepare`` step (else it is run here).
    """
    if len(frame) == 0:
        return spec.meta().set_axis(frame.index[:0])
    loaded = load_model(spec)
    configure_torch_threads(loaded.device)
    return run_loaded(spec, loaded, frame, stats if stats is not None else BatchStats(), prepared)


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
    prepared: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the model on preprocessed ``features``.

    Returns ``(kept + output columns, bad rows)``. When the partition fails,
    the failing rows are found by halving: with ``on_error="raise"`` the first
    one is named in a :class:`PartitionError` (partition, file, row, ids,
    cause); with ``"quarantine"`` the other rows' outputs are returned and the
    bad rows come back as ``kept`` columns plus ``row`` (its position in the
    input partition, see ``positions``), ``error_type`` and ``error``.
    Model-loading errors pass through unchanged. ``prepared``: ``features``
    went through the model's ``prepare`` step already (the CPU stage ran it).
    """

    def run(lo: int, hi: int) -> pd.DataFrame:
        attempt = BatchStats()
        out = run_model(model, features.iloc[lo:hi], attempt, prepared)
        if stats is not None:
            stats.add(attempt)
        return out

    try:
        outputs = run(0, len(features)).set_axis(kept.index)
        bad_rows = no_bad_rows(kept)
    except ModelLoadError:
        raise
    except SchemaError as err:
        raise partition_error(err, f"model {model.name!r}", number, source) from err
    except Exception as err:
        good, bad = bisect(run, len(features), first_only=on_error == "raise")
        if on_error == "raise" or not bad:
            row, cause = bad[0] if bad else (None, err)
            where = f"model {model.name!r}" + (
                f" at {describe_row(kept, row, positions[row] if positions is not None else None)}"
                if row is not None
                else ""
            )
            raise partition_error(cause, where, number, source) from cause
        bad_rows = bad_frame(kept, bad, positions)
        good.sort(key=lambda g: g[0])
        good_rows = good_positions(good)
        outputs = pd.concat([out for _, out in good]) if good else model.meta()
        outputs = outputs.set_axis(kept.index[good_rows])
        kept = kept.iloc[good_rows]
    result = pd.concat([kept, outputs], axis=1) if len(kept.columns) else outputs
    return result, bad_rows
