"""Model inputs on their way to the device: sliced, reordered, padded, pinned, copied.

Inputs are whatever ``ModelSpec.collate`` made of a partition: a tensor, an
array, a list, a pandas object, :class:`~dask_batchinfer.model.tokens.TokenIds`,
or a dict of those. On CUDA each batch is collated into pinned memory and
copied on a side stream while the previous batch computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from dask_batchinfer.model.tokens import TokenIds

__all__ = ["on_device", "slice_inputs", "take_inputs", "to_device"]


def slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of model inputs (tensor, array, list, pandas, or a dict of those)."""
    if isinstance(inputs, (pd.DataFrame, pd.Series)):
        return inputs.iloc[start:stop]
    if isinstance(inputs, Mapping):
        return {name: slice_inputs(value, start, stop) for name, value in inputs.items()}
    return inputs[start:stop]


def take_inputs(inputs: Any, order: np.ndarray) -> Any:
    """Rows of model inputs in ``order`` (a permutation)."""
    import torch

    if isinstance(inputs, (pd.DataFrame, pd.Series)):
        return inputs.iloc[order]
    if isinstance(inputs, Mapping):
        return {name: take_inputs(value, order) for name, value in inputs.items()}
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.from_numpy(order)]
    if isinstance(inputs, TokenIds):
        return inputs.take(order)
    if isinstance(inputs, np.ndarray):
        return inputs[order]
    return [inputs[i] for i in order]


def _pin(inputs: Any) -> Any:
    """``inputs``' CPU tensors in pinned memory (one batch at a time: see :func:`on_device`)."""
    import torch

    if isinstance(inputs, torch.Tensor) and inputs.device.type == "cpu":
        return inputs.pin_memory()
    if isinstance(inputs, Mapping):
        return {name: _pin(value) for name, value in inputs.items()}
    return inputs


def _host(batch: Any) -> Any:
    """A batch as the model reads it on the host: token ids become padded tensors."""
    if isinstance(batch, TokenIds):
        return batch.padded()
    if isinstance(batch, Mapping):
        return {name: _host(value) for name, value in batch.items()}
    return batch


def to_device(batch: Any, device: str) -> Any:
    """Move the tensors in ``batch`` to ``device`` (asynchronously from pinned memory)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device.type != device else batch
    if isinstance(batch, Mapping):
        return {name: to_device(value, device) for name, value in batch.items()}
    return batch


def _record_stream(batch: Any, stream: Any) -> None:
    import torch

    if isinstance(batch, torch.Tensor):
        batch.record_stream(stream)
    elif isinstance(batch, Mapping):
        for value in batch.values():
            _record_stream(value, stream)


def on_device(inputs: Any, ranges: list[tuple[int, int]], device: str) -> Iterator[Any]:
    """Yield each range's batch on ``device``; on CUDA the next copy overlaps this compute."""
    import torch

    if not device.startswith("cuda"):
        for start, stop in ranges:
            yield to_device(_host(slice_inputs(inputs, start, stop)), device)
        return
    copy_stream = torch.cuda.Stream()
    compute_stream = torch.cuda.current_stream()

    def send(start: int, stop: int) -> Any:
        batch = _pin(_host(slice_inputs(inputs, start, stop)))  # collated in pinned memory
        with torch.cuda.stream(copy_stream):
            return to_device(batch, device)

    upcoming = send(*ranges[0]) if ranges else None
    for i in range(len(ranges)):
        compute_stream.wait_stream(copy_stream)
        batch = upcoming
        _record_stream(batch, compute_stream)
        upcoming = send(*ranges[i + 1]) if i + 1 < len(ranges) else None
        yield batch
