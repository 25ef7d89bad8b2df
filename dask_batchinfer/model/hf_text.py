"""Text for ``from_transformers``: tokenising on the CPU pool, loading on the model worker.

Texts (and second texts of pairs) become int32 token ids in the spec's
``prepare`` step (:class:`Tokenize`, see :mod:`dask_batchinfer.model.tokens`);
the model worker loads the checkpoint for its head (torch, or ONNX Runtime /
OpenVINO through :mod:`dask_batchinfer.model.hf_runtime`) and runs it on
padded batches (:func:`forward`). The heads are in
:mod:`dask_batchinfer.model.hf_text_tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer.model.hf import load_tokenizer, local_folder, offline
from dask_batchinfer.model.tokens import TokenIds, full_lengths, token_frame
from dask_batchinfer.worker import cache

__all__ = [
    "KINDS",
    "Limit",
    "Tokenize",
    "forward",
    "load_text_model",
    "token_limit",
    "token_lengths",
]

#: Each task's model class, and what the runtime backends call it.
KINDS = {
    "embed": "base",
    "classify": "sequence-classification",
    "token-classify": "token-classification",
}


def load_text_model(
    path: str,
    kind: str,
    backend: str = "torch",
    quantize: str | None = None,
    storage_options: dict | None = None,
    trust_remote_code: bool = False,
    half_on_gpu: bool = False,
) -> Any:
    """The checkpoint's model for ``kind``, on torch or a CPU runtime (see ``hf_runtime``)."""
    offline()
    folder = local_folder(path, storage_options)
    if backend != "torch":
        from dask_batchinfer.model.hf_runtime import load_runtime

        return load_runtime(folder, kind, backend, quantize)
    import torch
    import transformers

    auto = {
        "base": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
    }[kind]
    model = auto.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if half_on_gpu and torch.cuda.is_available():
        model = model.half()
    return model


@dataclasses.dataclass(frozen=True)
class Tokenize:
    """``prepare``: texts (and second texts of pairs) to token ids, on the CPU pool.

    With ``offsets``, each row also carries what entity grouping needs: its
    text, each token's character offsets and whether it is a special token.
    """

    path: str
    limit: int | None
    pair: bool = False
    offsets: bool = False
    storage_options: dict | None = None

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        key = ("hf-tokenizer", self.path, repr(self.storage_options))
        tok = cache.helper(
            key, lambda: load_tokenizer(self.path, self.storage_options), per_thread=True
        )
        texts = frame[frame.columns[0]].astype(str).tolist()
        pairs = frame[frame.columns[1]].astype(str).tolist() if self.pair else None
        limit = self.limit or token_limit(tok)
        encoded = tok(
            texts,
            pairs,
            truncation=True,
            max_length=limit,
            return_attention_mask=False,
            return_token_type_ids=self.pair,
            return_offsets_mapping=self.offsets,
            return_special_tokens_mask=self.offsets,
        )
        ids = encoded["input_ids"]
        if self.pair:  # a pair's truncation is shared between its texts: not counted
            lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        else:
            lengths = full_lengths(tok, texts, ids, limit)
        types = encoded["token_type_ids"] if self.pair else None
        prepared = token_frame(ids, lengths, frame.index, types)
        if self.offsets:
            prepared["text"] = pd.array(texts, dtype=pd.ArrowDtype(pa.string()))
            spans = [[i for span in row for i in span] for row in encoded["offset_mapping"]]
            prepared["offsets"] = pd.array(spans, dtype=pd.ArrowDtype(pa.list_(pa.int32())))
            prepared["special"] = pd.array(
                encoded["special_tokens_mask"], dtype=pd.ArrowDtype(pa.list_(pa.int8()))
            )
        return prepared

    def __dask_tokenize__(self) -> tuple:
        return (
            "dask_batchinfer.model.hf_text.Tokenize",
            self.path,
            self.limit,
            self.pair,
            self.offsets,
            repr(self.storage_options),
        )


def token_limit(tokenizer: Any) -> int:
    """The most tokens the model reads: the tokenizer's limit (512 when it sets none)."""
    limit = int(tokenizer.model_max_length or 0)
    return limit if 0 < limit < 1_000_000 else 512


@dataclasses.dataclass(frozen=True)
class Limit:
    """``length_limit``: the most tokens a row keeps (rows past it count as truncated)."""

    path: str
    limit: int | None
    storage_options: dict | None = None

    def __call__(self, model: Any) -> int:
        if self.limit:
            return self.limit
        key = ("hf-tokenizer", self.path, repr(self.storage_options))
        load = lambda: load_tokenizer(self.path, self.storage_options)  # noqa: E731
        return token_limit(cache.helper(key, load, per_thread=True))  # Tokenize's, if here

    def __dask_tokenize__(self) -> tuple:
        return ("dask_batchinfer.model.hf_text.Limit", self.path, self.limit)


def token_lengths(model: Any, inputs: Any) -> np.ndarray:
    """Each row's length in tokens before truncation (up to the limit + 1)."""
    tokens: TokenIds = inputs["tokens"] if isinstance(inputs, dict) else inputs
    return tokens.lengths


def forward(model: Any, batch: dict[str, Any], pad_id: int | None, field: str) -> Any:
    """The model on a padded batch; ``field`` of its output, as float32."""
    if pad_id:  # the batch pads with 0 under its attention mask
        batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad_id)
    return model(**batch)[field].float()
