"""CPU runtimes for Hugging Face encoders: ONNX Runtime or OpenVINO, fp32 or dynamic int8.

:func:`load_runtime` exports a checkpoint to ONNX once per content (the
TorchScript exporter with dynamic batch and sequence axes, ``torch.export`` if
that fails; kept only if it matches torch on padded inputs of another shape),
quantises it for ``quantize="int8"`` (ONNX Runtime's dynamic quantisation; for
OpenVINO, NNCF's int8 weight compression when ``nncf`` is installed) and opens
it on CPU (OpenVINO at fp32 precision: it picks bf16 on CPUs with AMX or
AVX512-BF16). The cache key is a digest of ``config.json`` and the weights'
bytes, the kind, the quantisation and the packages' versions; entries are
staged in a hidden folder and renamed into place (processes on one machine
never see half an export) in Dask's ``temporary-directory`` or the system's::

    batchinfer-runtimes/
        <digest>/           model.onnx (or model.xml + .bin), export.json
        <digest>.lock       held while one process makes that entry
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import version
from importlib.util import find_spec
from typing import Any

import numpy as np

from dask_batchinfer.errors import InputError, ModelLoadError
from dask_batchinfer.model.hf import offline

__all__ = ["Runner", "cache_root", "cached", "content_digest", "load_runtime", "open_model"]

logger = logging.getLogger(__name__)

#: Each kind's ``transformers`` auto class and the output the runner returns.
KINDS = {
    "base": ("AutoModel", "last_hidden_state"),
    "sequence-classification": ("AutoModelForSequenceClassification", "logits"),
    "token-classification": ("AutoModelForTokenClassification", "logits"),
}
RUNTIMES = ("onnx", "openvino")
QUANTIZE = (None, "int8")
#: The inputs an export may take, in order (those the model's ``forward`` accepts).
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: ``torch.onnx.export(dynamo=False)`` first (faster, and well understood by the runtimes).
EXPORTERS = ("torchscript", "dynamo")
#: Part of every cache key: bump it when the export or the quantisation changes.
FORMAT = 1
_WEIGHTS = re.compile(r"config\.json|.+\.safetensors|pytorch_model.*\.bin|.+\.index\.json")


@dataclasses.dataclass
class Runner:
    """An exported encoder on a CPU runtime, called like the torch model.

    ``input_names`` are the inputs the graph declares (others are ignored);
    ``path`` is the model file it runs; ``info`` its cache entry's
    ``export.json`` (``method``, ``exporter``, ``seconds``...) with the
    ``versions`` of its key; ``export_seconds`` how long the ONNX export took
    when it was made; ``exported`` whether this load made a cache entry.
    """

    backend: str
    quantize: str | None
    output: str
    input_names: tuple[str, ...]
    path: str
    info: dict[str, Any]
    export_seconds: float
    exported: bool
    run: Callable[[dict[str, np.ndarray]], np.ndarray] = dataclasses.field(repr=False)

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """``{output: float32 tensor}``; a missing ``token_type_ids`` is zeros (as in torch)."""
        import torch

        feeds = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name == "token_type_ids":
                value = np.zeros(tuple(inputs["input_ids"].shape), dtype=np.int64)
            elif value is None:
                raise TypeError(f"runner: missing {name!r}; the graph takes {self.input_names}")
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            feeds[name] = np.ascontiguousarray(value, dtype=np.int64)
        out = np.ascontiguousarray(self.run(feeds), dtype=np.float32)
        return {self.output: torch.from_numpy(out)}


def cache_root() -> str:
    """The folder of exported models: ``batchinfer-runtimes`` in Dask's temporary directory."""
    import dask

    base = dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    return os.path.join(base, "batchinfer-runtimes")


def content_digest(folder: str) -> str:
    """SHA-256 of a checkpoint's ``config.json`` and weight files (names and bytes).

    Tokenizer files and other modules' folders do not count: they do not
    change the exported graph.
    """
    names = sorted(name for name in os.listdir(folder) if _WEIGHTS.fullmatch(name))
    if names in ([], ["config.json"]):
        raise InputError(f"load_runtime: {folder!r} holds no weights (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0".encode())
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_info(entry: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(entry, "export.json")) as f:
            return dict(json.load(f))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (POSIX; elsewhere the rename decides)."""
    if os.name != "posix":  # pragma: no cover
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def cached(key: Any, make: Callable[[str], dict[str, Any]]) -> tuple[str, dict[str, Any], bool]:
    """The cache entry of ``key``: ``(folder, info, made)``; ``make(staging)`` makes it if absent.

    ``make`` writes the entry's files into an empty staging folder and returns
    what ``export.json`` records; the folder is renamed into place only when
    ``make`` returns, so a failed or concurrent export never leaves a partial entry.
    """
    digest = hashlib.sha256(json.dumps([FORMAT, key], sort_keys=True).encode()).hexdigest()[:32]
    root = cache_root()
    entry = os.path.join(root, digest)
    info = _read_info(entry)
    if info is not None:
        return entry, info, False
    os.makedirs(root, exist_ok=True)
    with _locked(entry + ".lock"):
        info = _read_info(entry)
        if info is not None:  # another process made it while we waited
            return entry, info, False
        shutil.rmtree(entry, ignore_errors=True)  # a folder without export.json is no entry
        staging = tempfile.mkdtemp(prefix=f".{digest}-", dir=root)
        try:
            info = make(staging)
            with open(os.path.join(staging, "export.json"), "w") as f:
                json.dump(info, f, indent=1)
            os.replace(staging, entry)
        except OSError:
            info = _read_info(entry)  # made meanwhile by a process that took no lock
            if info is None:
                raise
            return entry, info, False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry, info, True


def open_model(path: str, backend: str, output: str, threads: int | None = None) -> tuple:
    """``(input names, run)`` for a model file on the CPU; ``run(feeds)`` returns ``output``.

    ONNX Runtime runs ``.onnx`` files; OpenVINO ``.onnx`` or ``.xml`` files, at
    fp32 inference precision. ``run`` may be called from several threads.
    """
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in session.get_inputs())
        return names, lambda feeds: session.run([output], feeds)[0]
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(path, "CPU", config)
    local = threading.local()  # an infer request serves one call at a time

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        return np.array(request.infer(feeds)[output], dtype=np.float32, copy=True)

    return tuple(i.get_any_name() for i in compiled.inputs), run


def _example(config: Any, names: list[str], rows: int, length: int, seed: int) -> tuple:
    """``rows`` x ``length`` token ids, masks (later rows padded: the mask is traced) and types."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(config.vocab_size), (rows, length), generator=gen)
    mask = (torch.arange(length) < length - 2 * torch.arange(rows)[:, None]).long()  # padded
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(values[name] for name in names)


def _graph(model: Any, names: list[str], output: str) -> Any:
    """The model as a module of positional inputs and its one output."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True)))[output]

    # eval() on the wrapper too: the TorchScript exporter restores the wrapper's
    # training flag afterwards, recursively, which would switch dropout on
    return Graph().eval()


def _torch_export(graph: Any, example: tuple, axes: dict, path: str, exporter: str) -> None:
    """``graph`` to ONNX at ``path``; ``axes``: the inputs' and then the output's dynamic axes."""
    import torch

    *names, output = list(axes)
    io_names: dict[str, Any] = {"input_names": names, "output_names": [output]}
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer and deprecation warnings; dynamo's progress
        if exporter == "torchscript":
            torch.onnx.export(graph, example, path, dynamic_axes=axes, dynamo=False, **io_names)
            return
        dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
        shapes = (tuple({i: dims[a] for i, a in axes[name].items()} for name in names),)  # *args
        torch.onnx.export(graph, example, path, dynamic_shapes=shapes, dynamo=True, **io_names)


def export_onnx(
    folder: str, kind: str, into: str, backend: str, exporters: tuple = EXPORTERS
) -> dict:
    """Export ``folder``'s ``kind`` model to ``into/model.onnx``; what ``export.json`` keeps.

    Each of ``exporters`` in turn; an export is kept when ``backend`` runs it
    within 1e-4 (of the output's scale) of torch on a batch of another shape.
    """
    import torch
    import transformers

    offline()
    auto, output = KINDS[kind]
    model = getattr(transformers, auto).from_pretrained(folder, dtype=torch.float32).eval()
    names = [name for name in INPUTS if name in inspect.signature(model.forward).parameters]
    graph = _graph(model, names, output)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, output]}
    if kind == "sequence-classification":
        axes[output] = {0: "batch"}
    example = _example(model.config, names, 2, 8, seed=0)
    check = _example(model.config, names, 3, 13, seed=1)
    with torch.no_grad():
        expected = graph(*check).float().numpy()
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    path, failures = os.path.join(into, "model.onnx"), []
    for exporter in exporters:
        start = time.perf_counter()
        try:
            _torch_export(graph, example, axes, path, exporter)
            seconds = time.perf_counter() - start
            declared, run = open_model(path, backend, output)
            got = run({n: t.numpy() for n, t in zip(names, check, strict=True) if n in declared})
            diff = float(np.abs(got - expected).max())
        except Exception as err:  # an exporter that cannot take this model: try the next
            failures.append(f"{exporter}: {type(err).__name__}: {err}")
            continue
        if diff <= tolerance:
            logger.info("load_runtime: %s (%s) exported in %.1f s", folder, kind, seconds)
            info = {"method": "onnx", "exporter": exporter, "seconds": seconds, "inputs": names}
            return {**info, "max_abs_diff": diff, "source": folder}
        failures.append(f"{exporter}: outputs differ from torch by up to {diff:.3g}")
    raise ModelLoadError(f"load_runtime: could not export {folder!r} ({kind}) to ONNX: {failures}")


def quantize_int8(source: str, staging: str, openvino: bool) -> dict[str, Any]:
    """``source`` quantised into ``staging``: by ONNX Runtime, or by NNCF for OpenVINO.

    ONNX Runtime's dynamic quantisation makes MatMul weights int8 per output
    channel (per-tensor scales lose five times more cosine similarity on
    MiniLM) and quantises activations per batch; NNCF compresses weights to
    int8 (``model.xml`` + ``.bin``). Embeddings and layer norms stay fp32.
    """
    start, quiet = time.perf_counter(), logging.Filter("quiet")  # drops records of the root logger
    logging.getLogger().addFilter(quiet)  # ONNX Runtime's hint to pre-process (which fails here)
    try:
        if openvino:
            import nncf
            import openvino as ov

            logging.getLogger("nncf").setLevel(logging.ERROR)
            with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
                model = nncf.compress_weights(ov.Core().read_model(source))  # int8 asymmetric
            ov.save_model(model, os.path.join(staging, "model.xml"), compress_to_fp16=False)
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            options = {"per_channel": True, "op_types_to_quantize": ["MatMul"]}
            target = os.path.join(staging, "model.onnx")
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, **options)
    finally:
        logging.getLogger().removeFilter(quiet)
    method = "nncf-int8-weights" if openvino else "onnxruntime-dynamic-int8"
    return {"method": method, "quantize_seconds": time.perf_counter() - start}


def load_runtime(
    folder: str,
    kind: str,
    backend: str,
    quantize: str | None = None,
    threads: int | None = None,
) -> Runner:
    """A checkpoint folder's encoder on ONNX Runtime or OpenVINO (CPU), exported once per content.

    Parameters
    ----------
    folder : str
        A local Hugging Face model folder (``save_pretrained`` output).
    kind : {"base", "sequence-classification", "token-classification"}
        ``AutoModel`` (the runner returns ``last_hidden_state``) or a head (``logits``).
    backend : {"onnx", "openvino"}
        ONNX Runtime's ``CPUExecutionProvider`` or OpenVINO's ``CPU`` device.
    quantize : {None, "int8"}, default None
        Dynamic int8 quantisation: faster, and outputs differ from torch
        (mean-pooled MiniLM embeddings: cosine similarity about 0.99).
    threads : int, optional
        Threads per call (default: the runtime's, one per core).

    Returns
    -------
    Runner
        Called with int64 ``input_ids``, ``attention_mask`` (and
        ``token_type_ids``) of any batch size and length.

    Raises
    ------
    InputError
        An unknown kind, backend or quantisation; a folder without config or weights.
    ModelLoadError
        Neither exporter made a graph that matches the torch model.
    """
    allowed = {"kind": tuple(KINDS), "backend": RUNTIMES, "quantize": QUANTIZE}
    for name, value in {"kind": kind, "backend": backend, "quantize": quantize}.items():
        if value not in allowed[name]:
            raise InputError(f"load_runtime: {name}={value!r}: expected one of {allowed[name]}")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(f"load_runtime: {folder!r} is not a local model folder (no config.json)")
    content = content_digest(folder)
    versions = {p: version(p) for p in ("torch", "transformers", "onnx")}
    key: list[Any] = [content, kind, None, versions]
    entry, info, made = cached(key, lambda d: export_onnx(folder, kind, d, backend))
    export_seconds, source = float(info["seconds"]), os.path.join(entry, "model.onnx")
    if quantize:
        nncf = backend == "openvino" and find_spec("nncf") is not None
        makers = ("openvino", "nncf") if nncf else ("onnxruntime",)
        versions.update({p: version(p) for p in makers})
        key = [content, kind, quantize, nncf, versions]
        entry, info, made_int8 = cached(key, lambda d: quantize_int8(source, d, nncf))
        made = made or made_int8
    name = "model.xml" if os.path.exists(os.path.join(entry, "model.xml")) else "model.onnx"
    path, output = os.path.join(entry, name), KINDS[kind][1]
    names, run = open_model(path, backend, output, threads)
    info = {**info, "versions": versions}
    return Runner(backend, quantize, output, names, path, info, export_seconds, made, run)
