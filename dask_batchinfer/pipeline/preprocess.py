"""The CPU step: run the user's ``preprocess`` on one partition, keeping every row accounted for."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dask_batchinfer.errors import SchemaError
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import (
    Preprocess,
    ShapeError,
    apply_preprocess,
    bad_frame,
    bisect,
    describe_row,
    good_positions,
    no_bad_rows,
    partition_error,
)

__all__ = ["Prepared", "preprocess_partition"]


@dataclasses.dataclass
class Prepared:
    """One preprocessed partition on its way to the model.

    ``features`` and ``kept`` hold the rows preprocessing succeeded on;
    ``bad`` the rows it failed on (quarantine); ``positions`` each kept row's
    position in the input partition (None: all rows, in order); ``ready``:
    ``features`` went through the model's ``prepare`` step (e.g. token ids).
    """

    features: pd.DataFrame
    kept: pd.DataFrame
    bad: pd.DataFrame
    rows_in: int
    positions: np.ndarray | None = None
    ready: bool = False


def _steps(preprocess: Preprocess | None, model: ModelSpec | None) -> Preprocess | None:
    """The user's ``preprocess``, then the model's ``prepare`` step when it has one."""
    if model is None or model.prepare is None:
        return preprocess

    def steps(frame: pd.DataFrame) -> pd.DataFrame:
        return model.prepare_inputs(apply_preprocess(preprocess, frame))

    return steps


def preprocess_partition(
    frame: pd.DataFrame,
    *,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] = (),
    number: int | None = None,
    source: str | None = None,
    on_error: str = "raise",
    model: ModelSpec | None = None,
) -> Prepared:
    """Run ``preprocess`` on one partition, then ``model``'s ``prepare`` step, if any.

    When it fails, the failing rows are found by halving (``preprocess`` is
    expected to work row by row: the same rows give the same features
    whatever the batch). ``on_error="raise"`` raises a :class:`PartitionError`
    naming the partition, file, first bad row and cause; ``"quarantine"``
    returns the other rows and the bad ones in ``Prepared.bad``.
    """
    ready = model is not None and model.prepare is not None
    preprocess = _steps(preprocess, model)
    kept_all = frame[list(keep)]
    try:
        features = apply_preprocess(preprocess, frame)
        return Prepared(features, kept_all, no_bad_rows(kept_all), len(frame), None, ready)
    except (ShapeError, SchemaError) as err:  # the whole partition's shape, not a row
        raise partition_error(err, "preprocessing", number, source) from err
    except Exception as err:
        if preprocess is None:
            raise partition_error(err, "preprocessing", number, source) from err
        first_error = err
    try:
        good, bad = bisect(
            lambda lo, hi: apply_preprocess(preprocess, frame.iloc[lo:hi]),
            len(frame),
            first_only=on_error == "raise",
        )
    except (ShapeError, SchemaError) as err:
        raise partition_error(err, "preprocessing", number, source) from err
    if on_error == "raise" or not bad:
        row, cause = bad[0] if bad else (None, first_error)
        where = "preprocessing" + (f" at {describe_row(kept_all, row)}" if row is not None else "")
        raise partition_error(cause, where, number, source) from cause
    good.sort(key=lambda g: g[0])
    positions = good_positions(good)
    features = pd.concat([out for _, out in good]) if good else frame.iloc[:0]
    bad_rows = bad_frame(kept_all, bad, None)
    return Prepared(features, kept_all.iloc[positions], bad_rows, len(frame), positions, ready)
