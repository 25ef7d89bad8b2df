"""A tiny real model and data helpers, for our tests and for users' own.

Examples
--------
>>> from dask_batchinfer.testing import make_features, tiny_model
>>> frame = make_features(rows=4, n_features=3)
>>> list(frame.columns)
['id', 'f0', 'f1', 'f2']
>>> tiny_model(n_features=3).outputs
{'score': 'float32'}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from dask_batchinfer.model import ModelSpec, from_torch

__all__ = [
    "TinyMLP",
    "factory_calls",
    "feature_columns",
    "make_features",
    "make_mlp",
    "threads_probe",
    "tiny_model",
    "uneven_partitions",
]

_factory_calls: Counter[int] = Counter()


def feature_columns(n_features: int) -> list[str]:
    """``["f0", "f1", ...]``."""
    return [f"f{i}" for i in range(n_features)]


class TinyMLP(torch.nn.Module):
    """A two-layer perceptron with weights fixed by ``seed``."""

    def __init__(self, n_features: int = 8, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = torch.nn.Linear(n_features, hidden)
        self.out = torch.nn.Linear(hidden, 1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))[:, 0]


def make_mlp(n_features: int = 8, hidden: int = 16, seed: int = 0) -> TinyMLP:
    """Build a :class:`TinyMLP` (a module-level factory, as specs need).

    Each call is counted per ``seed`` in this process: see :func:`factory_calls`.
    """
    _factory_calls[seed] += 1
    return TinyMLP(n_features, hidden, seed)


def factory_calls(seed: int) -> int:
    """How many times this process has called :func:`make_mlp` with ``seed``."""
    return _factory_calls[seed]


def tiny_model(
    n_features: int = 8, hidden: int = 16, seed: int = 0, batch_size: int = 256
) -> ModelSpec:
    """A :class:`~dask_batchinfer.ModelSpec` of a :class:`TinyMLP` scoring ``f0..f{n-1}``."""
    return from_torch(
        make_mlp,
        factory_kwargs={"n_features": n_features, "hidden": hidden, "seed": seed},
        input_columns=feature_columns(n_features),
        outputs={"score": "float32"},
        batch_size=batch_size,
        name=f"tiny-mlp-{n_features}x{hidden}-seed{seed}",
    )


def _torch_threads(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.full((len(batch),), torch.get_num_threads(), dtype=torch.int32)


def threads_probe(n_features: int = 8) -> ModelSpec:
    """A spec whose output ``threads`` is ``torch.get_num_threads()`` during the forward pass."""
    return from_torch(
        make_mlp,
        factory_kwargs={"n_features": n_features, "seed": -1},
        predict=_torch_threads,
        input_columns=feature_columns(n_features),
        outputs={"threads": "int32"},
        name="threads-probe",
    )


def make_features(rows: int, n_features: int = 8, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """A frame with an ``id`` column and ``n_features`` float32 feature columns."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((rows, n_features), dtype=np.float32)
    frame = pd.DataFrame(data, columns=feature_columns(n_features))
    frame.insert(0, "id", np.arange(start_id, start_id + rows, dtype=np.int64))
    return frame


def _identity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def uneven_partitions(frame: pd.DataFrame, sizes: Sequence[int]):
    """A Dask DataFrame whose partitions hold ``sizes`` rows of ``frame`` in order.

    Sizes may be 0 (an empty partition); they must add up to ``len(frame)``.
    """
    import dask.dataframe as dd

    if sum(sizes) != len(frame):
        raise ValueError(f"sizes add up to {sum(sizes)}, the frame has {len(frame)} rows")
    bounds = np.cumsum([0, *sizes])
    chunks = [frame.iloc[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    return dd.from_map(_identity, chunks, meta=frame.iloc[:0], enforce_metadata=False)
