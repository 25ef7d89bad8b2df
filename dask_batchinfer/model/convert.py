"""Turn a partition's columns into model inputs: checked for nulls, one float32 tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dask_batchinfer.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["check_nulls", "float_tensor"]


def check_nulls(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise :class:`InputError` naming the columns of ``frame`` that hold nulls, and where."""
    found = []
    for column in columns:
        count = int(frame[column].isna().sum())
        if count:
            found.append(f"{column!r} ({count} of {len(frame)} rows)")
    if found:
        raise InputError(
            f"null values in required input column(s) {', '.join(found)}; fill or drop them "
            f"in preprocess=, set the rows aside with on_error='quarantine', or pass "
            f"ModelSpec(allow_nulls=True) if the model handles them"
        )


def float_tensor(frame: pd.DataFrame, columns: Sequence[str]) -> torch.Tensor:
    """Columns of ``frame`` as one contiguous float32 tensor of shape (rows, columns).

    One vectorised conversion for the whole partition, no per-row Python. The
    array is copied when pandas hands out a read-only view (copy-on-write).
    """
    import torch

    try:
        array = frame[list(columns)].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        dtypes = {c: str(frame[c].dtype) for c in columns}
        raise InputError(
            f"cannot convert column(s) {list(columns)} to float32 (dtypes: {dtypes}): {err}"
        ) from err
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C", copy=True)
    return torch.from_numpy(array)
