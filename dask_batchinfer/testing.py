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

import numpy as np
import pandas as pd
import torch

from dask_batchinfer.model import ModelSpec, from_torch

__all__ = ["TinyMLP", "feature_columns", "make_features", "make_mlp", "tiny_model"]


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
    """Build a :class:`TinyMLP` (a module-level factory, as specs need)."""
    return TinyMLP(n_features, hidden, seed)


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


def make_features(rows: int, n_features: int = 8, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """A frame with an ``id`` column and ``n_features`` float32 feature columns."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((rows, n_features), dtype=np.float32)
    frame = pd.DataFrame(data, columns=feature_columns(n_features))
    frame.insert(0, "id", np.arange(start_id, start_id + rows, dtype=np.int64))
    return frame
