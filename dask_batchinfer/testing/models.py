"""The tiny models, data and probes of :mod:`dask_batchinfer.testing` (re-exported there)."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from dask_batchinfer.model import ModelSpec, from_torch
from dask_batchinfer.model.torch_module import call_module
from dask_batchinfer.pipeline.images import image_tensor

__all__ = [
    "LOAD_LOG_ENV",
    "TinyCNN",
    "TinyMLP",
    "factory_calls",
    "feature_columns",
    "make_features",
    "make_cnn",
    "make_mlp",
    "parse_json_features",
    "read_call_log",
    "set_call_log",
    "sleepy_preprocess",
    "slow_loading_model",
    "slow_model",
    "threads_probe",
    "tiny_cnn_model",
    "tiny_model",
    "tokenizer_calls",
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


class TinyCNN(torch.nn.Module):
    """One convolution, ReLU, global mean and a linear head over uint8 images
    (rows, channels, height, width): one score per image, weights fixed by ``seed``."""

    def __init__(self, channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x.float() / 255.0)).mean(dim=(2, 3))
        return self.head(features)[:, 0]


def make_cnn(channels: int = 3, seed: int = 0) -> TinyCNN:
    """Build a :class:`TinyCNN` (a module-level factory, as specs need)."""
    return TinyCNN(channels, seed)


def tiny_cnn_model(channels: int = 3, seed: int = 0, batch_size: int = 16) -> ModelSpec:
    """A spec of a :class:`TinyCNN` scoring the ``image`` column of
    :func:`~dask_batchinfer.decode_images` (collated by :func:`~dask_batchinfer.image_tensor`)."""
    return ModelSpec(
        load=make_cnn,
        load_kwargs={"channels": channels, "seed": seed},
        predict=call_module,
        collate=image_tensor,
        input_columns=["image"],
        outputs={"score": "float32"},
        batch_size=batch_size,
        name=f"tiny-cnn-{channels}ch-seed{seed}",
    )


_active = 0
_active_lock = __import__("threading").Lock()


def _torch_threads(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    global _active
    with _active_lock:
        _active += 1
        concurrent = _active
    time.sleep(0.05)  # long enough for forwards in other threads to overlap
    with _active_lock:
        concurrent = max(concurrent, _active)
        _active -= 1
    rows = len(batch)
    return {
        "threads": torch.full((rows,), torch.get_num_threads(), dtype=torch.int32),
        "concurrent": torch.full((rows,), concurrent, dtype=torch.int32),
    }


def threads_probe(n_features: int = 8) -> ModelSpec:
    """A spec reporting, per row, ``threads`` (``torch.get_num_threads()`` in its forward
    pass) and ``concurrent`` (forward passes running in the process at that time)."""
    return from_torch(
        make_mlp,
        factory_kwargs={"n_features": n_features, "seed": -1},
        predict=_torch_threads,
        input_columns=feature_columns(n_features),
        outputs={"threads": "int32", "concurrent": "int32"},
        batch_size=50,
        name="threads-probe",
    )


#: Environment variable naming a file to which :func:`slow_model` appends one
#: line per model call (``<pid> <rows>``), in whichever process runs it.
CALL_LOG_ENV = "DASK_BATCHINFER_TEST_CALL_LOG"
#: A folder where :func:`make_slow_loading_mlp` marks its loads' start and end.
LOAD_LOG_ENV = "DASK_BATCHINFER_TEST_LOAD_LOG"


class _SlowMLP(TinyMLP):
    def __init__(self, delay: float, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.delay = delay


def make_slow_mlp(delay: float = 0.05, n_features: int = 8, hidden: int = 16, seed: int = 0):
    """A :class:`TinyMLP` whose every forward pass sleeps ``delay`` seconds first."""
    return _SlowMLP(delay, n_features=n_features, hidden=hidden, seed=seed)


def _slow_counting_predict(model: _SlowMLP, batch: torch.Tensor) -> torch.Tensor:
    time.sleep(model.delay)
    log = os.environ.get(CALL_LOG_ENV)
    if log:
        with open(log, "a") as f:  # one short append per call: atomic on POSIX
            f.write(f"{os.getpid()} {len(batch)}\n")
    return model(batch)


def make_slow_loading_mlp(
    load_seconds: float = 1.0, n_features: int = 8, hidden: int = 16, seed: int = 0
) -> TinyMLP:
    """A :class:`TinyMLP` that takes ``load_seconds`` to build, like a large model.

    With :data:`LOAD_LOG_ENV` set to a folder, it touches ``loading-<pid>`` there when
    the load starts and ``loaded-<pid>`` when it ends (for tests that kill it in between).
    """
    folder = os.environ.get(LOAD_LOG_ENV)
    if folder:
        open(os.path.join(folder, f"loading-{os.getpid()}"), "w").close()
    time.sleep(load_seconds)
    if folder:
        open(os.path.join(folder, f"loaded-{os.getpid()}"), "w").close()
    return TinyMLP(n_features, hidden, seed)


def slow_loading_model(
    load_seconds: float = 1.0, seed: int = 0, n_features: int = 8, batch_size: int = 100
) -> ModelSpec:
    """A :class:`tiny_model` whose load takes ``load_seconds`` (same scores for the same seed).

    For tests of what happens while models load, e.g. a worker killed then.
    """
    return tiny_model(n_features, seed=seed, batch_size=batch_size).with_options(
        load=make_slow_loading_mlp,
        load_kwargs={"load_seconds": load_seconds, "n_features": n_features, "seed": seed},
        name=f"slow-loading-mlp-seed{seed}",
    )


def slow_model(
    delay: float = 0.1, seed: int = 0, n_features: int = 8, batch_size: int = 100
) -> ModelSpec:
    """A :class:`TinyMLP` spec that sleeps ``delay`` s per batch and logs its calls.

    Its scores equal :func:`tiny_model`'s for the same seed. Set the
    environment variable ``DASK_BATCHINFER_TEST_CALL_LOG`` to a file path (in
    the workers' environment) to record every call; :func:`read_call_log`
    sums the rows.
    """
    return from_torch(
        make_slow_mlp,
        factory_kwargs={"delay": delay, "n_features": n_features, "seed": seed},
        predict=_slow_counting_predict,
        input_columns=feature_columns(n_features),
        outputs={"score": "float32"},
        batch_size=batch_size,
        name=f"slow-mlp-seed{seed}",
    )


def set_call_log(path: str | None) -> None:
    """Set (or with ``None`` clear) :data:`CALL_LOG_ENV` in this process.

    Run it on every worker with ``client.run(set_call_log, path)``.
    """
    if path is None:
        os.environ.pop(CALL_LOG_ENV, None)
    else:
        os.environ[CALL_LOG_ENV] = path


def sleepy_preprocess(frame: pd.DataFrame, delay: float = 0.05) -> pd.DataFrame:
    """A preprocessing step that takes ``delay`` seconds and changes nothing.

    Use ``functools.partial(sleepy_preprocess, delay=...)`` as ``preprocess=``.
    """
    time.sleep(delay)
    return frame


def read_call_log(path: str | os.PathLike) -> tuple[int, int]:
    """``(calls, rows)`` recorded in a :data:`CALL_LOG_ENV` file (0, 0 when absent)."""
    try:
        with open(path) as f:
            lines = f.read().split()
    except FileNotFoundError:
        return 0, 0
    rows = [int(n) for n in lines[1::2]]
    return len(rows), sum(rows)


def make_features(rows: int, n_features: int = 8, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """A frame with an ``id`` column and ``n_features`` float32 feature columns."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((rows, n_features), dtype=np.float32)
    frame = pd.DataFrame(data, columns=feature_columns(n_features))
    frame.insert(0, "id", np.arange(start_id, start_id + rows, dtype=np.int64))
    return frame


def tokenizer_calls() -> int:
    """Calls to any Hugging Face tokenizer in this process since this was first run here.

    The first run installs a counter around ``PreTrainedTokenizerBase.__call__``;
    ``client.run(tokenizer_calls)`` shows where a job tokenised (the CPU pool).
    """
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    base: Any = PreTrainedTokenizerBase
    if not hasattr(base, "_batchinfer_calls"):
        original = base.__call__

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            base._batchinfer_calls += 1
            return original(self, *args, **kwargs)

        base._batchinfer_calls = 0
        base.__call__ = counted
    return int(base._batchinfer_calls)


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


def parse_json_features(frame: pd.DataFrame, n_features: int = 8) -> pd.DataFrame:
    """A row-wise preprocess: column ``raw`` holds a JSON list of ``n_features`` numbers.

    A malformed row raises (``json.JSONDecodeError`` or ``ValueError``), the
    way a real parsing step fails on bad records.
    """
    import json

    values = [json.loads(raw) for raw in frame["raw"]]
    for row in values:
        if not isinstance(row, list) or len(row) != n_features:
            raise ValueError(f"expected a list of {n_features} numbers, got {row!r}")
    data = np.asarray(values, dtype=np.float32).reshape(len(frame), n_features)
    return pd.DataFrame(data, columns=feature_columns(n_features), index=frame.index)
