"""``from_transformers``: a Hugging Face checkpoint as a spec, by task.

One function for every task; one module per task family builds the spec:

- :mod:`~dask_batchinfer.model.hf_text`: ``"embed"``, ``"classify"``, ``"token-classify"``,
- :mod:`~dask_batchinfer.model.hf_vision`: ``"image-classify"``, ``"image-embed"``,
- :mod:`~dask_batchinfer.model.hf_generate`: ``"generate"``.

The helpers here are what they share: checking the folder and the task on the
client (a clear error before any cluster work), reading the checkpoint's
``config.json``, the offline settings, and the per-process cache of
tokenizers and processors (:func:`dask_batchinfer.worker.cache.helper`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from dask_batchinfer.errors import InputError

__all__ = [
    "BACKENDS",
    "TASKS",
    "architectures",
    "check_folder",
    "labelled",
    "labels_of",
    "load_tokenizer",
    "local_folder",
    "offline",
    "probability",
    "read_config",
]

#: The tasks, and the ``transformers`` head each needs (None: any model).
TASKS = {
    "embed": None,
    "classify": "ForSequenceClassification",
    "token-classify": "ForTokenClassification",
    "image-classify": "ForImageClassification",
    "image-embed": None,
    "generate": ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel"),
}
#: ``backend=``: torch, or a CPU runtime for the encoder tasks.
BACKENDS = ("torch", "onnx", "openvino")


def offline() -> None:
    """Hugging Face libraries never reach for the network on a worker, nor draw bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def local_folder(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """``path`` as a local folder: itself, or a per-process copy of an object-store folder."""
    if "://" not in path or path.startswith("file://"):
        return path.removeprefix("file://")
    import hashlib
    import tempfile

    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    digest = hashlib.sha256(repr((path, fs.info(root).get("ETag"))).encode()).hexdigest()[:16]
    target = os.path.join(tempfile.gettempdir(), f"batchinfer-hf-{os.getpid()}-{digest}")
    if not os.path.exists(os.path.join(target, "config.json")):
        fs.get(root.rstrip("/") + "/", target + "/", recursive=True)
    return target


def load_tokenizer(
    path: str, storage_options: dict[str, Any] | None = None, trust_remote_code: bool = False
) -> Any:
    """The checkpoint's tokenizer (callers keep it: ``cache.helper(..., per_thread=True)``)."""
    offline()
    from transformers import AutoTokenizer

    folder = local_folder(path, storage_options)
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def read_config(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's ``config.json``, read on the client."""
    import fsspec

    config = path.rstrip("/") + "/config.json"
    try:
        with fsspec.open(config, "r", **(storage_options or {})) as f:
            return dict(json.load(f))
    except FileNotFoundError:
        raise InputError(
            f"from_transformers: {path!r} is not a model folder (no config.json); save a model "
            f"there with model.save_pretrained({path!r}) and its tokenizer or processor with "
            f".save_pretrained({path!r})"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"from_transformers: {config!r} is not valid JSON ({err})") from err


def labels_of(config: dict[str, Any]) -> tuple[str, ...]:
    """The checkpoint's labels in id order (``id2label``; ``LABEL_i`` where it names none)."""
    id2label = config.get("id2label") or {}
    n = len(id2label) or int(config.get("num_labels", 2))
    return tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n))


def probability(config: dict[str, Any], labels: tuple[str, ...], multi_label: bool | None) -> str:
    """What the classification pipelines apply to logits by default: ``"softmax"``,
    ``"sigmoid"`` (multi-label, or a single logit) or ``"none"`` (regression)."""
    problem = config.get("problem_type")
    if problem == "regression":
        return "none"
    if multi_label or problem == "multi_label_classification" or len(labels) == 1:
        return "sigmoid"
    return "softmax"


def labelled(
    logits: Any, labels: tuple[str, ...], function: str, column: str, all_scores: bool
) -> dict[str, Any]:
    """A classifier's logits as output columns: ``column`` (the top label), ``score`` (its
    probability) and, with ``all_scores``, ``scores``; ``function`` is :func:`probability`'s."""
    import torch

    if function == "softmax":
        logits = torch.softmax(logits, dim=-1)
    elif function == "sigmoid":
        logits = torch.sigmoid(logits)
    probs = logits.cpu().numpy()
    top = probs.argmax(axis=1)
    out = {column: [labels[i] for i in top], "score": probs[range(len(probs)), top]}
    return {**out, "scores": probs} if all_scores else out


def architectures(config: dict[str, Any]) -> list[str]:
    """The model classes the checkpoint was saved from (``config.json``'s ``architectures``)."""
    return list(config.get("architectures") or [])


def check_folder(path: Any, task: str, storage_options: dict[str, Any] | None = None) -> dict:
    """Refuse, on the client, a folder that is not a model or a task its checkpoint lacks."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError(f"from_transformers: path must be a model folder, got {path!r}")
    if task not in TASKS:
        raise InputError(f"from_transformers: task={task!r}: expected one of {tuple(TASKS)}")
    config = read_config(os.fspath(path), storage_options)
    head = TASKS[task]
    heads = (head,) if isinstance(head, str) else head or ()
    names = architectures(config)
    if heads and names and not any(h in name for h in heads for name in names):
        raise InputError(
            f"from_transformers: task={task!r} needs a checkpoint with a "
            f"{' or '.join(heads)} head; {os.fspath(path)!r} holds {names}. Use the task its "
            f"head does, or save a model of the right class there (e.g. "
            f"AutoModel{heads[0]}.from_pretrained(...).save_pretrained(...))"
        )
    return config
