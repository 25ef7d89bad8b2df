"""``from_callable``: a spec for any function of a pandas DataFrame batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from dask_batchinfer.model.spec import ModelSpec, OutputType

__all__ = ["from_callable"]


def _return_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _call_with_frame(model: Callable[[pd.DataFrame], Any], batch: pd.DataFrame) -> Any:
    return model(batch)


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def from_callable(
    fn: Callable[[pd.DataFrame], Any],
    *,
    outputs: Mapping[str, OutputType],
    input_columns: Sequence[str] = (),
    batch_size: int | None = None,
    name: str | None = None,
) -> ModelSpec:
    """A spec for any function of a pandas DataFrame batch.

    ``fn(batch)`` receives ``batch_size`` rows holding ``input_columns`` (all
    columns when empty) and returns an array, a tensor or a mapping of output
    column to array. Use it for scikit-learn, XGBoost, ONNX Runtime sessions
    held in a closure, or plain numpy.

    Examples
    --------
    >>> spec = from_callable(lambda b: b["x"] * 2, input_columns=["x"],
    ...                      outputs={"y": "float64"})
    >>> spec.input_columns
    ('x',)
    """
    return ModelSpec(
        load=_return_fn,
        load_kwargs={"fn": fn},
        predict=_call_with_frame,
        collate=_frame,
        input_columns=input_columns,
        outputs=outputs,
        batch_size=batch_size,
        device="cpu",
        name=name or getattr(fn, "__name__", None),
    )
