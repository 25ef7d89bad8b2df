"""``from_transformers(task="generate")``: prompts to new text, with a causal or seq2seq LM.

``prepare`` (the CPU pool) turns prompts into int32 token ids (:class:`Tokenize`;
an empty prompt becomes BOS, where ``generate`` starts without input). The
model worker (:class:`Generate`) pads each length-sorted batch on the left for
a decoder-only model and on the right for an encoder-decoder, runs
``model.generate`` (greedy, or seeded sampling) and decodes the new tokens as
``pipeline("text-generation", return_full_text=False)`` does.

Sampling is reproducible per row: a row's randomness comes from its own
``torch.Generator``, seeded from ``seed`` and its prompt's token ids, through
the Gumbel-max rule (:class:`RowSampler`), so its text does not depend on the
rows sharing its batch, their order or the worker (a resumed or re-batched job
writes the same text; identical prompts get identical samples).
``generate_batch`` (continuous batching) runs on CPU but is slower there than
length-sorted ``generate`` (``benchmarks/generate.py``), so it is not used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.hf import load_tokenizer, local_folder, offline
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.model.tokens import TokenIds, collate_tokens, full_lengths, token_frame
from dask_batchinfer.worker import cache

__all__ = ["BATCH_SIZE", "COUNT", "Generate", "RowSampler", "Tokenize", "build", "row_seeds"]

#: Rows per batch when ``batch_size`` is not given.
BATCH_SIZE = 32
#: The output column holding each row's count of new tokens.
COUNT = "generated_tokens"
_TEXT = "generated_text"
_DTYPES = {"auto": "float16", "fp16": "float16", "bf16": "bfloat16"}


def tokenizer(path: str, storage_options: dict | None, trust_remote_code: bool = False) -> Any:
    """The checkpoint's tokenizer, made once per process."""
    key = ("hf-generate", path, repr(storage_options), trust_remote_code)
    return cache.helper(
        key, lambda: load_tokenizer(path, storage_options, trust_remote_code), per_thread=True
    )


def load_generator(
    path: str,
    seq2seq: bool,
    storage_options: dict | None = None,
    trust_remote_code: bool = False,
    dtype_on_gpu: str | None = None,
) -> Any:
    """The checkpoint's ``AutoModelForSeq2SeqLM`` or ``AutoModelForCausalLM``; on a GPU
    its weights are cast to ``dtype_on_gpu`` (decoding reads every weight at each step)."""
    offline()
    import torch
    import transformers

    auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    folder = local_folder(path, storage_options)
    model = auto.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if dtype_on_gpu and torch.cuda.is_available():
        model = model.to(getattr(torch, dtype_on_gpu))
    return model


def _token(recipe: Any) -> tuple[str, str]:
    """A frozen dataclass's deterministic token: its class and its fields."""
    return (f"{__name__}.{type(recipe).__name__}", repr(dataclasses.astuple(recipe)))


@dataclasses.dataclass(frozen=True)
class Tokenize:
    """``prepare``: prompts to token ids, on the CPU pool, truncated to ``limit`` tokens (on
    the tokenizer's ``truncation_side``); lengths count up to ``limit + 1`` (truncated rows)."""

    path: str
    limit: int
    storage_options: dict | None = None
    trust_remote_code: bool = False

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        tok = tokenizer(self.path, self.storage_options, self.trust_remote_code)
        texts = frame[frame.columns[0]].astype(str).tolist()
        limit = self.limit
        ids = tok(texts, truncation=True, max_length=limit)["input_ids"]
        lengths = full_lengths(tok, texts, ids, limit)
        empty = np.flatnonzero(lengths == 0)
        if len(empty):  # generate() starts from BOS when it has no prompt: so do we
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            if start is None:
                raise InputError(
                    f"{len(empty)} empty prompt(s) in column {frame.columns[0]!r} and the "
                    f"tokenizer at {self.path!r} has no BOS or EOS token to start from"
                )
            for i in empty:
                ids[i] = [start]
            lengths[empty] = 1
        return token_frame(ids, lengths, frame.index)

    def __dask_tokenize__(self) -> tuple:
        return _token(self)


@dataclasses.dataclass(frozen=True)
class Lengths:
    """``lengths``: a row's prompt tokens (before truncation) plus the new tokens it may
    take, so that ``token_budget`` bounds rows x (prompt + new tokens) per batch."""

    max_new_tokens: int

    def __call__(self, model: Any, tokens: TokenIds) -> np.ndarray:
        return tokens.lengths + self.max_new_tokens

    def __dask_tokenize__(self) -> tuple:
        return _token(self)


def _limit(tokens: int, model: Any) -> int:
    """``length_limit``: prompt limit + new tokens (rows past it were truncated)."""
    return tokens


def row_seeds(seed: int, input_ids: Any, attention_mask: Any) -> list[int]:
    """Each row's seed: a hash of ``seed`` and the row's prompt token ids (padding left out)."""
    ids = input_ids.cpu().numpy()
    mask = attention_mask.cpu().numpy().astype(bool)
    seeds = []
    for row, keep in zip(ids, mask, strict=True):
        digest = hashlib.blake2b(digest_size=8, key=int(seed).to_bytes(16, "little", signed=True))
        digest.update(row[keep].astype("<i4").tobytes())
        seeds.append(int.from_bytes(digest.digest(), "little") >> 1)
    return seeds


class RowSampler:
    """A logits processor: ``argmax(scores + Gumbel noise)`` draws from ``softmax(scores)``
    (Gumbel-max), so greedy search samples. Row ``i``'s noise at step ``t`` is the ``t``-th
    draw of its generator (seeded by :func:`row_seeds`, on the CPU whatever the device)."""

    def __init__(self, seeds: list[int]) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        uniform = torch.empty(scores.shape, dtype=torch.float32)
        for row, generator in zip(uniform, self.generators, strict=True):
            row.uniform_(generator=generator)
        uniform.clamp_(min=torch.finfo(torch.float32).tiny)  # log(0) would tie every token
        gumbel = -torch.log(-torch.log(uniform))
        return scores + gumbel.to(scores.device, scores.dtype)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling settings; ``None`` takes the checkpoint's ``generation_config`` value, or
    the ``transformers`` default (temperature 1, top-k 50, top-p 1) as ``generate`` does."""

    seed: int
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None

    def processors(self, model: Any, input_ids: Any, attention_mask: Any) -> list[Any]:
        """The warpers of ``generate(do_sample=True)``, then this batch's :class:`RowSampler`."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        config = model.generation_config
        temperature = _first(self.temperature, config.temperature, 1.0)
        top_k = _first(self.top_k, config.top_k, 50)
        top_p = _first(self.top_p, config.top_p, 1.0)
        warpers: list[Any] = [TemperatureLogitsWarper(float(temperature))]
        warpers = warpers if temperature != 1 else []
        warpers += [TopKLogitsWarper(top_k=int(top_k))] if top_k else []
        warpers += [TopPLogitsWarper(top_p=float(top_p))] if top_p < 1.0 else []
        return [*warpers, RowSampler(row_seeds(self.seed, input_ids, attention_mask))]


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def left_pad(input_ids: Any, attention_mask: Any, pad_id: int) -> tuple[Any, Any]:
    """Right-padded rows (as :meth:`TokenIds.padded` makes them) moved to the right edge,
    with ``pad_id`` on their left."""
    import torch

    width = input_ids.shape[1]
    offset = width - attention_mask.sum(dim=1, keepdim=True)  # padding per row
    columns = torch.arange(width, device=input_ids.device)
    mask = (columns >= offset).to(attention_mask.dtype)
    ids = input_ids.gather(1, (columns - offset).clamp(min=0)).masked_fill(mask == 0, pad_id)
    return ids, mask


def new_token_counts(new: Any, eos_ids: list[int]) -> np.ndarray:
    """New tokens per row, up to and including the first EOS (all of them without one)."""
    import torch

    width = new.shape[1]
    if not eos_ids or width == 0:
        return np.full(new.shape[0], width, dtype=np.int32)
    is_eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
    counts = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, width)
    return counts.cpu().numpy().astype(np.int32)


def _eos_ids(model: Any, tok: Any) -> list[int]:
    eos = _first(model.generation_config.eos_token_id, tok.eos_token_id, [])
    return [int(e) for e in np.atleast_1d(eos)]


def _pad_id(model: Any, tok: Any, eos_ids: list[int]) -> int:
    """The tokenizer's padding id, else the checkpoint's, else EOS, else 0."""
    return int(_first(tok.pad_token_id, model.generation_config.pad_token_id, *eos_ids, 0))


@dataclasses.dataclass(frozen=True)
class Generate:
    """``predict``: a padded batch of prompts through ``model.generate``; the new text and
    the count of new tokens per row (see the module docstring)."""

    path: str
    seq2seq: bool
    max_new_tokens: int
    text_column: str = _TEXT
    sampling: Sampling | None = None
    storage_options: dict | None = None
    trust_remote_code: bool = False

    def __call__(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        tok = tokenizer(self.path, self.storage_options, self.trust_remote_code)
        eos_ids = _eos_ids(model, tok)
        pad = _pad_id(model, tok, eos_ids)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.seq2seq:
            ids = ids.masked_fill(mask == 0, pad)
        else:
            ids, mask = left_pad(ids, mask, pad)
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": pad}
        if self.sampling is not None:  # one beam: RowSampler turns greedy search into sampling
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList(self.sampling.processors(model, ids, mask))
            options.update(logits_processor=processors, num_beams=1)
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, num_return_sequences=1, **options
        )
        new = out[:, 1:] if self.seq2seq else out[:, ids.shape[1] :]  # 1: the decoder's start
        counts = new_token_counts(new, eos_ids)
        rows = [row[:count] for row, count in zip(new.cpu().tolist(), counts, strict=True)]
        texts = tok.batch_decode(rows, skip_special_tokens=True)
        return {self.text_column: texts, COUNT: counts}

    def __dask_tokenize__(self) -> tuple:
        return _token(self)


def _positions(config: dict[str, Any]) -> int | None:
    """The most positions the checkpoint reads (a decoder-only one: prompt and new tokens)."""
    for source in (config, config.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if isinstance(source.get(key), int) and source[key] > 0:
                return int(source[key])
    return None


def _is_int(value: Any, kinds: tuple = (int, np.integer)) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value, (int, float, np.integer, np.floating))


#: The generation options: what each accepts, and how to say it.
_RULES = {
    "max_new_tokens": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "do_sample": (lambda v: isinstance(v, bool), "True or False"),
    "seed": (_is_int, "an integer"),
    "max_length": (lambda v: v is None or (_is_int(v) and v > 0), "None or a positive integer"),
    "temperature": (lambda v: v is None or (_is_number(v) and v > 0), "None or a number above 0"),
    "top_k": (lambda v: v is None or (_is_int(v) and v >= 0), "None or an integer >= 0 (0: off)"),
    "top_p": (lambda v: v is None or (_is_number(v) and 0 < v <= 1), "None or a number in (0, 1]"),
}


def _check_options(options: dict[str, Any]) -> None:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    for name, value in options.items():
        ok, expected = _RULES[name]
        if not ok(value):
            raise InputError(f"from_transformers(task='generate'): {name}={value!r}: {expected}")
    given = {k: options[k] for k in ("temperature", "top_k", "top_p") if options[k] is not None}
    if given and not options["do_sample"]:
        raise InputError(
            f"from_transformers(task='generate'): {given} only apply when sampling; pass "
            f"do_sample=True, or leave them out for greedy search"
        )


def _prompt_limit(config: dict[str, Any], max_length: int | None, new: int) -> int:
    """The most prompt tokens kept: ``max_length``, else what the checkpoint's positions
    leave for the new tokens (a decoder-only model) or its positions (an encoder), else 1024."""
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    positions = _positions(config)
    if config.get("is_encoder_decoder") or positions is None:
        return max_length or positions or 1024
    if (max_length or positions - new) < 1 or (max_length or 0) + new > positions:
        raise InputError(
            f"from_transformers(task='generate'): the model reads {positions} positions; "
            f"max_length={max_length!r} prompt tokens + max_new_tokens={new} do not fit: "
            f"lower max_new_tokens or max_length"
        )
    return max_length or positions - new


def build(
    path: str,
    config: dict[str, Any],
    *,
    text_column: str,
    output_column: str | None,
    max_new_tokens: int,
    do_sample: bool,
    seed: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    max_length: int | None,
    batch_size: int | None,
    token_budget: int | None,
    precision: str,
    device: str,
    name: str | None,
    storage_options: dict | None,
    trust_remote_code: bool,
) -> ModelSpec:
    """The spec of ``from_transformers(path, task="generate", ...)`` (``config``: the
    checkpoint's ``config.json``; ``is_encoder_decoder`` picks ``AutoModelForSeq2SeqLM``
    over ``AutoModelForCausalLM``). Outputs: the new text (``output_column``, default
    ``generated_text``) and ``generated_tokens``, the new tokens up to and including EOS.
    ``token_budget`` bounds rows x (longest prompt + ``max_new_tokens``) per batch. The rest
    of the checkpoint's ``generation_config`` applies as in ``generate`` (e.g. ``num_beams``)."""
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    values = (max_new_tokens, do_sample, seed, max_length, temperature, top_k, top_p)
    _check_options(dict(zip(_RULES, values, strict=True)))
    text = output_column or _TEXT
    if text == COUNT:
        raise InputError(f"output_column={COUNT!r} is the count of new tokens: pick another name")
    seq2seq = bool(config.get("is_encoder_decoder"))
    limit = _prompt_limit(config, max_length, max_new_tokens)
    sampling = Sampling(int(seed), temperature, top_k, top_p) if do_sample else None
    folder = (storage_options, trust_remote_code)
    return ModelSpec(
        load=load_generator,
        load_kwargs={
            "path": path,
            "seq2seq": seq2seq,
            "storage_options": storage_options,
            "trust_remote_code": trust_remote_code,
            "dtype_on_gpu": _DTYPES.get(precision) if device != "cpu" else None,
        },
        predict=Generate(path, seq2seq, max_new_tokens, text, sampling, *folder),
        prepare=Tokenize(path, limit, *folder),
        collate=collate_tokens,
        input_columns=[text_column],
        outputs={text: pa.string(), COUNT: "int32"},
        batch_size=batch_size or BATCH_SIZE,
        token_budget=token_budget,
        lengths=Lengths(max_new_tokens),
        pad_slack=None,  # decoding steps, not padding, set the cost: full batches
        length_limit=functools.partial(_limit, limit + max_new_tokens),
        precision=precision,
        device=device,
        name=name or f"generate:{path.rstrip('/').rsplit('/', 1)[-1]}",
    )
