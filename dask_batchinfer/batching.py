"""Run a model over one pandas partition in micro-batches.

The partition becomes model inputs once (one vectorised conversion, see
``ModelSpec.collate``); micro-batches are slices of those inputs, so no
per-row Python runs. Outputs are gathered as numpy arrays and turned into the
output columns declared on the spec, aligned with the partition's index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer.cache import configure_torch_threads, get_model
from dask_batchinfer.errors import InputError
from dask_batchinfer.model import ModelSpec

__all__ = ["run_model"]


def slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of model inputs (tensor, array, list, pandas, or a dict of those)."""
    if isinstance(inputs, (pd.DataFrame, pd.Series)):
        return inputs.iloc[start:stop]
    if isinstance(inputs, Mapping):
        return {name: slice_inputs(value, start, stop) for name, value in inputs.items()}
    return inputs[start:stop]


def to_device(batch: Any, device: str) -> Any:
    """Move the tensors in ``batch`` to ``device``; other values pass through."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device.type != device else batch
    if isinstance(batch, Mapping):
        return {name: to_device(value, device) for name, value in batch.items()}
    return batch


def to_numpy(value: Any) -> np.ndarray:
    """A model output as a numpy array on the host."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.cpu().numpy()
    if isinstance(value, (pd.Series, pd.DataFrame)):
        return value.to_numpy()
    return np.asarray(value)


def _split_outputs(out: Any, spec: ModelSpec, rows: int) -> dict[str, np.ndarray]:
    names = list(spec.outputs)
    if isinstance(out, Mapping):
        missing = [name for name in names if name not in out]
        if missing:
            raise InputError(
                f"model {spec.name!r} returned keys {sorted(out)}; the spec declares "
                f"outputs {names} (missing {missing})"
            )
        columns = {name: to_numpy(out[name]) for name in names}
    else:
        array = to_numpy(out)
        if len(names) == 1:
            columns = {names[0]: array}
        elif array.ndim == 2 and array.shape[1] == len(names):
            columns = {name: array[:, j] for j, name in enumerate(names)}
        else:
            raise InputError(
                f"model {spec.name!r} returned an array of shape {array.shape}; the spec "
                f"declares {len(names)} outputs {names}: return shape (rows, {len(names)}) "
                f"or a dict of column name to array"
            )
    for name, array in columns.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise InputError(
                f"model {spec.name!r} returned {array.shape[0] if array.ndim else 'a scalar'} "
                f"value(s) for output {name!r} from a batch of {rows} rows"
            )
    return columns


def _output_column(name: str, kind: Any, array: np.ndarray) -> pd.Series | np.ndarray:
    if isinstance(kind, tuple):
        dtype, width = kind
        array = np.ascontiguousarray(array, dtype=dtype)
        if array.ndim != 2 or array.shape[1] != width:
            raise InputError(
                f"output {name!r} is declared as ({dtype!r}, {width}); the model returned "
                f"shape {array.shape}"
            )
        flat = pa.array(array.reshape(-1))
        values = pa.FixedSizeListArray.from_arrays(flat, width)
        return pd.arrays.ArrowExtensionArray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InputError(
            f"output {name!r} is declared as a scalar {kind!r}; the model returned shape "
            f"{array.shape}: declare it as ({kind!r}, width) to store vectors"
        )
    return array.astype(kind, copy=False)


def run_model(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Run ``spec`` over every row of ``frame`` in micro-batches of ``spec.batch_size``.

    Returns a DataFrame of the output columns with ``frame``'s index. The
    model comes from the per-process cache; forward passes hold the model's
    lock and run under ``torch.inference_mode()``.
    """
    import torch

    rows = len(frame)
    if rows == 0:
        return spec.meta().set_axis(frame.index[:0])
    loaded = get_model(spec)
    configure_torch_threads()
    inputs = spec.make_inputs(frame)
    step = spec.batch_size
    assert step is not None  # normalised by ModelSpec
    chunks: list[dict[str, np.ndarray]] = []
    with loaded.lock, torch.inference_mode():
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            batch = to_device(slice_inputs(inputs, start, stop), loaded.device)
            chunks.append(_split_outputs(spec.predict(loaded.model, batch), spec, stop - start))
    data = {
        name: _output_column(
            name,
            kind,
            chunks[0][name] if len(chunks) == 1 else np.concatenate([c[name] for c in chunks]),
        )
        for name, kind in spec.outputs.items()
    }
    return pd.DataFrame(data, index=frame.index)
