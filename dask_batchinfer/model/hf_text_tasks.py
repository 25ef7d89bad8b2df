"""Text tasks of ``from_transformers``: ``"embed"``, ``"classify"``, ``"token-classify"``.

- ``"embed"``: pools the last hidden state (``mean`` over the attention mask,
  ``cls``, or ``last``) into ``embedding`` (float32[dim]), optionally L2-normalised;
- ``"classify"``: ``label`` (from ``id2label``) and ``score``, optionally
  ``scores`` (every label's) and, multi-label, ``labels`` (those past 0.5),
  with the probabilities ``pipeline("text-classification")`` applies
  (softmax, sigmoid for multi-label or a single logit, none for regression);
  a second text column makes pairs (cross-encoders, rerankers);
- ``"token-classify"``: ``entities``, one list per row of (``word``, ``label``,
  ``start``, ``end``, ``score``) built by ``pipeline("token-classification")``'s
  own post-processing, so every aggregation strategy gives what it gives.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.hf import labelled, labels_of, load_tokenizer, probability
from dask_batchinfer.model.hf_text import (
    KINDS,
    Limit,
    Tokenize,
    forward,
    load_text_model,
    token_lengths,
)
from dask_batchinfer.model.spec import ModelSpec, casts_to_fp16
from dask_batchinfer.model.tokens import collate_tokens
from dask_batchinfer.worker import cache

__all__ = ["AGGREGATIONS", "ENTITY", "POOLINGS", "build", "collate_tagged"]

POOLINGS = ("mean", "cls", "last", "pooler")
AGGREGATIONS = ("none", "simple", "first", "average", "max")
ENTITY = pa.struct(
    [
        ("word", pa.string()),
        ("label", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("score", pa.float32()),
    ]
)


def collate_tagged(frame: pd.DataFrame) -> dict[str, Any]:
    """``collate`` for token classification: token ids, and per row (text, offsets, special)."""
    rows = np.empty(len(frame), dtype=object)
    texts, spans, special = (frame[c].tolist() for c in ("text", "offsets", "special"))
    for i, (text, span, mask) in enumerate(zip(texts, spans, special, strict=True)):
        rows[i] = (text, np.asarray(span, dtype=np.int64).reshape(-1, 2), np.asarray(mask))
    return {"tokens": collate_tokens(frame), "rows": rows}


@dataclasses.dataclass(frozen=True)
class Embed:
    """``predict`` for ``"embed"``: the last hidden state pooled, optionally normalised."""

    pooling: str
    normalize: bool
    pad_id: int | None

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch

        if self.pooling == "pooler":  # the model's own pooler (BERT: tanh(dense(CLS)))
            pooled = forward(model, batch, self.pad_id, "pooler_output")
            return torch.nn.functional.normalize(pooled, dim=1) if self.normalize else pooled
        hidden = forward(model, batch, self.pad_id, "last_hidden_state")
        mask = batch["attention_mask"].to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # the last real token of each row
            last = batch["attention_mask"].sum(1) - 1
            pooled = hidden[torch.arange(len(hidden), device=hidden.device), last]
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def __dask_tokenize__(self) -> tuple:
        return ("dask_batchinfer.model.hf_text.Embed", self.pooling, self.normalize, self.pad_id)


@dataclasses.dataclass(frozen=True)
class Classify:
    """``predict`` for ``"classify"``: labels and probabilities as the pipeline gives them."""

    labels: tuple[str, ...]
    function: str  # "softmax", "sigmoid" or "none"
    all_scores: bool
    multi_label: bool
    pad_id: int | None
    column: str = "label"

    def __call__(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        logits = forward(model, batch, self.pad_id, "logits")
        out = labelled(logits, self.labels, self.function, self.column, True)
        probs = out["scores"] if self.all_scores else out.pop("scores")
        if self.multi_label:
            out["labels"] = [[self.labels[j] for j in np.flatnonzero(row > 0.5)] for row in probs]
        return out

    def __dask_tokenize__(self) -> tuple:
        return (
            "dask_batchinfer.model.hf_text.Classify",
            self.labels,
            self.function,
            self.all_scores,
            self.multi_label,
            self.pad_id,
            self.column,
        )


@dataclasses.dataclass(frozen=True)
class Tag:
    """``predict`` for ``"token-classify"``: entities by the pipeline's own post-processing."""

    path: str
    labels: tuple[str, ...]
    aggregation: str
    pad_id: int | None
    storage_options: dict | None = None

    def __call__(self, model: Any, batch: dict[str, Any]) -> list[list[dict[str, Any]]]:
        import torch
        from transformers.pipelines.token_classification import AggregationStrategy

        strategy = AggregationStrategy(self.aggregation)
        logits = forward(model, batch["tokens"], self.pad_id, "logits").cpu()
        tagger = cache.helper(("hf-tagger", self.path, self.labels), self._tagger)
        ids = batch["tokens"]["input_ids"]
        entities = []
        for i, (text, offsets, special) in enumerate(batch["rows"]):
            n = len(special)
            outputs = {
                "logits": logits[i : i + 1, :n],
                "input_ids": ids[i : i + 1, :n],
                "offset_mapping": [offsets.tolist()],
                "sentence": text,
                "special_tokens_mask": torch.from_numpy(np.asarray(special)[None]),
            }
            found = tagger.postprocess([outputs], aggregation_strategy=strategy)
            entities.append([_entity(e) for e in found])
        return entities

    def _tagger(self) -> Any:
        """The pipeline's post-processing alone: a token-classification pipeline object
        holding the tokenizer and the labels, never called on a model."""
        from transformers import TokenClassificationPipeline

        tagger: Any = TokenClassificationPipeline.__new__(TokenClassificationPipeline)
        tagger.tokenizer = load_tokenizer(self.path, self.storage_options)
        config = types.SimpleNamespace(id2label=dict(enumerate(self.labels)))
        tagger.model = types.SimpleNamespace(config=config)
        return tagger

    def __dask_tokenize__(self) -> tuple:
        return (
            "dask_batchinfer.model.hf_text.Tag",
            self.path,
            self.labels,
            self.aggregation,
            self.pad_id,
            repr(self.storage_options),
        )


def _entity(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "word": found["word"],
        "label": found.get("entity_group", found.get("entity")),
        "start": found["start"],
        "end": found["end"],
        "score": float(found["score"]),
    }


def _predict(task: str, path: str, config: dict[str, Any], options: dict[str, Any]) -> Any:
    pad_id = config.get("pad_token_id")
    if task == "embed":
        if options["pooling"] not in POOLINGS:
            raise InputError(f"pooling={options['pooling']!r}: expected one of {POOLINGS}")
        return Embed(options["pooling"], bool(options["normalize"]), pad_id)
    labels = labels_of(config)
    if task == "classify":
        function = probability(config, labels, options["multi_label"])
        multi = function == "sigmoid" and len(labels) > 1
        column = options.get("output_column") or "label"
        return Classify(labels, function, bool(options["all_scores"]), multi, pad_id, column)
    if options["aggregation"] not in AGGREGATIONS:
        raise InputError(f"aggregation={options['aggregation']!r}: expected one of {AGGREGATIONS}")
    return Tag(path, labels, options["aggregation"], pad_id, options["storage_options"])


def _outputs(task: str, predict: Any, config: dict[str, Any], column: str | None) -> dict:
    if task == "embed":
        return {column or "embedding": ("float32", int(config["hidden_size"]))}
    if task == "token-classify":
        return {column or "entities": pa.list_(ENTITY)}
    outputs: dict[str, Any] = {column or "label": pa.string(), "score": "float32"}
    if predict.all_scores:
        outputs["scores"] = ("float32", len(predict.labels))
    if predict.multi_label:
        outputs["labels"] = pa.list_(pa.string())
    return outputs


def _check(task: str, backend: str, precision: str, pair: str | None, pooling: Any) -> None:
    if pair is not None and task != "classify":
        raise InputError(f"text_pair_column is for task='classify' (pairs), not {task!r}")
    if backend != "torch" and pooling == "pooler" and task == "embed":
        raise InputError(f"pooling='pooler' runs on backend='torch', not {backend!r}")
    if backend != "torch" and precision not in ("auto", "fp32"):
        raise InputError(
            f"backend={backend!r} runs fp32 on CPU (or quantize='int8'), "
            f"not precision={precision!r}"
        )


def build(
    path: str,
    task: str,
    config: dict[str, Any],
    *,
    text_column: str,
    text_pair_column: str | None,
    output_column: str | None,
    max_length: int | None,
    batch_size: int | None,
    token_budget: int | None,
    precision: str,
    device: str,
    name: str | None,
    backend: str,
    quantize: str | None,
    storage_options: dict | None,
    trust_remote_code: bool,
    **options: Any,
) -> ModelSpec:
    """The spec of a text task (see the module docstring); ``options``: ``pooling``,
    ``normalize``, ``multi_label``, ``all_scores``, ``aggregation``."""
    _check(task, backend, precision, text_pair_column, options.get("pooling"))
    more = {"storage_options": storage_options, "output_column": output_column}
    predict = _predict(task, path, config, {**options, **more})
    columns = [text_column] + ([text_pair_column] if text_pair_column else [])
    tagged, runtime = task == "token-classify", backend != "torch"
    return ModelSpec(
        load=load_text_model,
        load_kwargs={
            "path": path,
            "kind": KINDS[task],
            "backend": backend,
            "quantize": quantize,
            "storage_options": storage_options,
            "trust_remote_code": trust_remote_code,
            "half_on_gpu": casts_to_fp16(precision, device),
        },
        predict=predict,
        prepare=Tokenize(path, max_length, bool(text_pair_column), tagged, storage_options),
        collate=collate_tagged if tagged else collate_tokens,
        input_columns=columns,
        outputs=_outputs(task, predict, config, output_column),
        batch_size=batch_size or (32 if tagged else 128),
        token_budget=token_budget,
        lengths=token_lengths,
        length_limit=Limit(path, max_length, storage_options),
        precision="fp32" if runtime else precision,
        device="cpu" if runtime else device,
        name=name or f"{task}:{path.rstrip('/').rsplit('/', 1)[-1]}",
    )
