"""``from_torch``: a spec for a ``torch.nn.Module`` built by a factory function."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dask_batchinfer import _config
from dask_batchinfer.model.spec import ModelSpec, OutputType

if TYPE_CHECKING:
    import torch

__all__ = ["call_module", "from_torch"]


def call_module(model: Any, batch: Any) -> Any:
    """The default predict: ``model(batch)``."""
    return model(batch)


def from_torch(
    factory: Callable[..., torch.nn.Module],
    *,
    input_columns: Sequence[str],
    outputs: Mapping[str, OutputType],
    factory_kwargs: Mapping[str, Any] | None = None,
    predict: Callable[[Any, Any], Any] = call_module,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    name: str | None = None,
) -> ModelSpec:
    """A spec for a ``torch.nn.Module`` built by ``factory(**factory_kwargs)``.

    The numeric ``input_columns`` become one float32 tensor of shape
    (rows, len(input_columns)); the module's output fills ``outputs``.

    Parameters
    ----------
    factory : callable
        A module-level function or class returning the module, weights loaded.
    input_columns : sequence of str
        Feature columns, in the order the module expects.
    outputs : mapping
        Output columns, see :class:`ModelSpec`.
    factory_kwargs : mapping, optional
        Keyword arguments for ``factory`` (e.g. a weights path).
    predict : callable, default ``model(batch)``
        Override to post-process, e.g. ``lambda m, x: m(x).softmax(-1)``.
    batch_size, device, precision, compile, name
        See :class:`ModelSpec`. With ``compile=True`` the module is compiled and
        warmed up on zeros at load time.

    Examples
    --------
    >>> spec = from_torch(make_ranker, input_columns=["f0", "f1"],  # doctest: +SKIP
    ...                   outputs={"score": "float32"})
    """
    return ModelSpec(
        load=factory,
        load_kwargs=dict(factory_kwargs or {}),
        predict=predict,
        input_columns=input_columns,
        outputs=outputs,
        batch_size=batch_size,
        device=device,
        precision=precision,
        compile=compile,
        example=functools.partial(
            _zeros_frame, columns=tuple(input_columns), rows=batch_size or _config.get("batch-size")
        ),
        name=name or getattr(factory, "__name__", None),
    )


def _zeros_frame(columns: tuple[str, ...], rows: int) -> pd.DataFrame:
    """An all-zero float32 frame: a warm-up example for numeric models."""
    return pd.DataFrame(np.zeros((rows, len(columns)), dtype=np.float32), columns=list(columns))
