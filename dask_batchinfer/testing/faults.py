"""Models that fail the way real ones do: out of GPU memory, out of host memory.

Re-exported by :mod:`dask_batchinfer.testing`.
"""

from __future__ import annotations

import numpy as np
import torch

from dask_batchinfer.model import ModelSpec, from_torch
from dask_batchinfer.testing.models import TinyMLP, feature_columns

__all__ = [
    "hog_model",
    "make_hog_mlp",
    "make_hungry_mlp",
    "make_oom_mlp",
    "memory_hungry_model",
    "oom_model",
]


class _OOMMLP(TinyMLP):
    def __init__(self, limit: int, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (simulated: a batch of {len(x)} rows > {self.limit})"
            )
        return super().forward(x)


def make_oom_mlp(limit: int, n_features: int = 8, hidden: int = 16, seed: int = 0) -> TinyMLP:
    """A :class:`TinyMLP` that raises ``torch.cuda.OutOfMemoryError`` above ``limit`` rows."""
    return _OOMMLP(limit, n_features=n_features, hidden=hidden, seed=seed)


def oom_model(limit: int = 40, seed: int = 0, batch_size: int = 256) -> ModelSpec:
    """A :class:`TinyMLP` spec whose batches above ``limit`` rows run "out of GPU memory".

    Its scores equal :func:`tiny_model`'s for the same seed.
    """
    return from_torch(
        make_oom_mlp,
        factory_kwargs={"limit": limit, "seed": seed},
        input_columns=feature_columns(8),
        outputs={"score": "float32"},
        batch_size=batch_size,
        name=f"oom-mlp-limit{limit}",
    )


class _HogMLP(TinyMLP):
    def __init__(self, fraction: float, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.fraction = fraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":  # a real allocation that grows with the batch
            total = torch.cuda.get_device_properties(x.device).total_memory
            per_row = int(total * self.fraction) // 4
            scratch = torch.empty((len(x), per_row), dtype=torch.float32, device=x.device)
            del scratch
        return super().forward(x)


def make_hog_mlp(fraction: float, n_features: int = 8, hidden: int = 16, seed: int = 0):
    """A :class:`TinyMLP` that allocates ``fraction`` of the GPU's memory per row on CUDA."""
    return _HogMLP(fraction, n_features=n_features, hidden=hidden, seed=seed)


def hog_model(fraction: float = 1 / 48, seed: int = 0, batch_size: int = 256) -> ModelSpec:
    """A :class:`TinyMLP` spec whose batches really run out of GPU memory above
    about ``1 / fraction`` rows. Scores equal :func:`tiny_model`'s for the same seed."""
    return from_torch(
        make_hog_mlp,
        factory_kwargs={"fraction": fraction, "seed": seed},
        input_columns=feature_columns(8),
        outputs={"score": "float32"},
        batch_size=batch_size,
        name="hog-mlp",
    )


class _HungryMLP(TinyMLP):
    def __init__(self, gib: float, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.gib = gib

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        held = [np.ones(2**23) for _ in range(int(self.gib * 2**30) // 2**26)]  # 64 MiB each
        del held
        return super().forward(x)


def make_hungry_mlp(gib: float, seed: int = 0) -> TinyMLP:
    """A :class:`TinyMLP` that holds ``gib`` GiB of host memory during every forward pass."""
    return _HungryMLP(gib, seed=seed)


def memory_hungry_model(gib: float = 4.0, seed: int = 0) -> ModelSpec:
    """A spec whose every batch holds ``gib`` GiB of host memory, touched page by page:
    a worker with a smaller memory limit is killed running it."""
    return from_torch(
        make_hungry_mlp,
        factory_kwargs={"gib": gib, "seed": seed},
        input_columns=feature_columns(8),
        outputs={"score": "float32"},
        name=f"memory-hungry-{gib:g}GiB",
    )
