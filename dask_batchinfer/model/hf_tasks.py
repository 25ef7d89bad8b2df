"""``from_transformers``: a Hugging Face checkpoint folder as a :class:`ModelSpec`, by task."""

from __future__ import annotations

import os
from typing import Any

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.hf import BACKENDS, check_folder
from dask_batchinfer.model.spec import ModelSpec

__all__ = ["from_transformers"]

_TEXT = ("embed", "classify", "token-classify")
_IMAGE = ("image-classify", "image-embed")


def from_transformers(
    path: str | os.PathLike[str],
    task: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    image_column: str = "image",
    output_column: str | None = None,
    pooling: str = "mean",
    normalize: bool = False,
    multi_label: bool | None = None,
    all_scores: bool = False,
    aggregation: str = "simple",
    max_length: int | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int | None = None,
    token_budget: int | None = 8192,
    precision: str = "auto",
    device: str = "auto",
    backend: str = "torch",
    quantize: str | None = None,
    storage_options: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    name: str | None = None,
) -> ModelSpec:
    """A spec for a Hugging Face ``transformers`` checkpoint, by task.

    Parameters
    ----------
    path : str
        A folder written by ``save_pretrained`` (the model with its tokenizer
        or image processor), local or on an object store (``s3://``, copied
        once per worker process). Read on the client for its ``config.json``
        (a folder that is not a model, or a task its head lacks, fails here).
    task : {"embed", "classify", "token-classify", "image-classify", "image-embed", "generate"}
        What to compute; the output columns and what each task reads are in
        the user guide's "Hugging Face models".
    text_column, text_pair_column, image_column : str
        The input column(s): texts, second texts of pairs (``"classify"``:
        cross-encoders, rerankers), or images as :func:`decode_images` writes them.
    output_column : str, optional
        Name of the main output column (default: ``embedding``, ``label``,
        ``entities`` or ``generated_text``).
    pooling : {"mean", "cls", "last", "pooler"}, default "mean"
        ``"embed"``: how token states become one vector (``"pooler"``: the
        model's own pooler output, what its classification head reads).
    normalize : bool, default False
        ``"embed"``, ``"image-embed"``: L2-normalise the vectors.
    multi_label : bool, optional
        ``"classify"``: sigmoid per label instead of softmax (default: the
        checkpoint's ``problem_type``); adds a ``labels`` column (those past 0.5).
    all_scores : bool, default False
        ``"classify"``, ``"image-classify"``: add ``scores``, every label's probability.
    aggregation : {"none", "simple", "first", "average", "max"}, default "simple"
        ``"token-classify"``: how tokens group into entities, as in the pipeline.
    max_length : int, optional
        Tokens kept per text (default: the tokenizer's limit); longer rows are
        truncated and counted in ``JobResult.rows_truncated``.
    max_new_tokens, do_sample, seed, temperature, top_k, top_p
        ``"generate"``: greedy by default; sampling is reproducible per row
        (seeded from ``seed`` and the row's prompt).
    batch_size, token_budget, precision, device, name
        As for :func:`sentence_encoder` and :class:`ModelSpec`.
    backend : {"torch", "onnx", "openvino"}, default "torch"
        The encoder tasks (``"embed"``, ``"classify"``, ``"token-classify"``)
        can run on ONNX Runtime or OpenVINO on CPU: the checkpoint is exported
        once per model content on each machine, then reused.
    quantize : {None, "int8"}
        With a runtime backend: dynamic int8 quantisation (faster; outputs differ).
    storage_options : dict, optional
        fsspec options for a ``path`` on an object store.
    trust_remote_code : bool, default False
        Let ``transformers`` run code shipped with the checkpoint.

    Examples
    --------
    >>> spec = dbi.from_transformers("models/sentiment", task="classify")  # doctest: +SKIP
    >>> dbi.run_job("reviews/", spec, output="scores/", keep=["review_id"])  # doctest: +SKIP
    """
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    return _build(dict(locals()))


def _build(given: dict[str, Any]) -> ModelSpec:
    """Check the folder and the options, then let the task's family build the spec."""
    __tracebackhide__ = True
    path, task = os.fspath(given.pop("path")), given.pop("task")
    config = check_folder(path, task, given["storage_options"])
    backend, quantize = given.pop("backend"), given.pop("quantize")
    if backend not in BACKENDS:
        raise InputError(f"backend={backend!r}: expected one of {BACKENDS}")
    if backend != "torch" and task not in _TEXT:
        raise InputError(f"backend={backend!r} runs the encoder tasks {_TEXT}, not {task!r}")
    if quantize not in (None, "int8") or (quantize and backend == "torch"):
        raise InputError(
            f"quantize={quantize!r}: expected None, or 'int8' with backend 'onnx' or 'openvino'"
        )
    common = {k: given.pop(k) for k in _COMMON}
    if task in _TEXT:
        from dask_batchinfer.model import hf_text_tasks

        text = {k: given[k] for k in _TEXT_OPTIONS}
        return hf_text_tasks.build(
            path, task, config, backend=backend, quantize=quantize, **text, **common
        )
    if task in _IMAGE:
        from dask_batchinfer.model import hf_vision

        image = {k: given[k] for k in ("image_column", "all_scores", "normalize")}
        return hf_vision.build(path, task, config, text_column=None, **image, **common)
    from dask_batchinfer.model import hf_generate

    generate = {k: given[k] for k in _GENERATE_OPTIONS}
    return hf_generate.build(path, config, **generate, **common)


#: The options every family takes, and each family's own.
_COMMON = (
    "output_column",
    "batch_size",
    "precision",
    "device",
    "name",
    "storage_options",
    "trust_remote_code",
)
_TEXT_OPTIONS = (
    "text_column",
    "text_pair_column",
    "max_length",
    "token_budget",
    "pooling",
    "normalize",
    "multi_label",
    "all_scores",
    "aggregation",
)
_GENERATE_OPTIONS = (
    "text_column",
    "max_new_tokens",
    "do_sample",
    "seed",
    "temperature",
    "top_k",
    "top_p",
    "max_length",
    "token_budget",
)
