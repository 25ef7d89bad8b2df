""":class:`ModelSpec`: the picklable recipe of a model.

A spec is a few hundred bytes that say *how* to get a model: a loader callable
and its arguments, how to turn a pandas partition into model inputs, the batch
predict function and the output columns. The loaded model itself lives in the
per-process cache (:mod:`dask_batchinfer.worker.cache`) and never enters a task graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from dask.base import tokenize

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError, SchemaError
from dask_batchinfer.fingerprint import code_token, value_token
from dask_batchinfer.model.convert import check_nulls, float_tensor

__all__ = ["PRECISIONS", "ModelSpec", "OutputType", "casts_to_fp16", "output_dtype"]

#: An output column's type: a numpy/pandas dtype for a scalar column, a pair
#: ``(dtype, width)`` for a fixed-width vector column (stored as an Arrow
#: ``fixed_size_list``), or a ``pyarrow.DataType`` for anything else (text,
#: variable-length lists, lists of structs such as entities); ``predict``
#: then returns one Python value per row (a list, or an object array).
OutputType = Any

_DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def casts_to_fp16(precision: str, device: str) -> bool:
    """Whether a checkpoint's weights are cast to fp16 when it loads on a GPU: ``"auto"`` and
    ``"fp16"`` unless the device is the CPU (the loaders check that a GPU is there)."""
    return precision in ("auto", "fp16") and device != "cpu"


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
    precision : {"fp32", "bf16", "fp16", "auto"}, default "fp32"
        ``"bf16"``/``"fp16"`` run ``predict`` under ``torch.autocast``;
        ``"auto"`` is fp16 on a GPU and fp32 on CPU.
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
    prepare : callable, optional
        ``prepare(frame)`` turns the partition's ``input_columns`` into what
        ``collate`` reads, where preprocessing runs: on the CPU pool of a
        mixed cluster, before the partition travels to the model worker
        (e.g. tokenising texts into int32 token ids, see
        :mod:`dask_batchinfer.model.tokens`). It must keep every row, in
        order, and fail on the rows it cannot prepare (they are then found
        and named, or quarantined, like rows that ``preprocess`` fails on).
        ``collate`` then receives the prepared frame whole.
    pad_slack : float or None, default 0.1
        With ``token_budget`` on CPU, a length-sorted batch also ends (past 8
        rows) where rows grow longer than ``1 + pad_slack`` times its first
        row: less padding for encoders, whose cost follows the padded tokens.
        ``None``: only the budget cuts (generation, whose cost follows the
        decoding steps and favours full batches).
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
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    pad_slack: float | None = 0.1
    token: str = dataclasses.field(init=False, repr=False, compare=False)
    cache_key: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        __tracebackhide__ = True  # IPython shows the user's frame and the error
        _check_callables(self)
        _check_options(self)
        outputs = dict(self.outputs)
        for column, kind in outputs.items():
            _arrow_type(column, kind)  # validates
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        set_(self, "batch_size", _batch_size(self.batch_size))
        set_(self, "outputs", outputs)
        set_(self, "input_columns", tuple(self.input_columns))
        set_(self, "load_kwargs", dict(self.load_kwargs))
        set_(self, "name", self.name or getattr(self.load, "__name__", type(self.load).__name__))
        # The loaded model is shared by specs that load the same thing the same way.
        set_(
            self,
            "cache_key",
            tokenize(
                code_token(self.load), value_token(self.load_kwargs), self.device, self.compile
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
                code_token(self.prepare),
                self.outputs,
                self.input_columns,
                self.precision,
            ),
        )

    def __dask_tokenize__(self) -> str:
        return self.token

    def __repr__(self) -> str:
        """One line: the name, the loader, inputs and outputs, and what differs from the
        defaults (``dataclasses.fields`` has the rest)."""
        columns = list(self.input_columns)
        if len(columns) > 6:
            columns = [*columns[:3], "...", *columns[-2:]]
        optional = {
            "device": "auto",
            "precision": "fp32",
            "token_budget": None,
            "compile": False,
            "allow_nulls": False,
        }
        extra = "".join(
            f", {k}={getattr(self, k)!r}"
            for k, default in optional.items()
            if getattr(self, k) != default
        )
        steps = "".join(
            f", {k}={_callable_name(getattr(self, k))}"
            for k in ("prepare", "collate")
            if getattr(self, k) is not None
        )
        return (
            f"ModelSpec({self.name!r}, load={_callable_name(self.load)}, "
            f"inputs[{len(self.input_columns)}]={columns}, outputs={dict(self.outputs)}"
            f"{steps}, batch_size={self.batch_size}{extra})"
        )

    def with_options(self, **changes: Any) -> ModelSpec:
        """Return a copy with some fields changed, e.g. ``spec.with_options(batch_size=64)``."""
        __tracebackhide__ = True  # IPython shows the user's frame and the error
        return dataclasses.replace(self, **changes)

    def meta(self) -> pd.DataFrame:
        """An empty DataFrame with the output columns and their dtypes."""
        return pd.DataFrame(
            {
                column: pd.Series([], dtype=output_dtype(column, kind))
                for column, kind in self.outputs.items()
            }
        )

    def prepare_inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Run ``prepare`` on a partition's ``input_columns`` (checked for nulls first)."""
        assert self.prepare is not None, "prepare_inputs needs a spec with prepare="
        self._check_columns(frame)
        prepared = self.prepare(frame[list(self.input_columns)])
        if not isinstance(prepared, pd.DataFrame) or len(prepared) != len(frame):
            raise InputError(
                f"model {self.name!r}: prepare= must return a DataFrame of {len(frame)} rows, "
                f"one per input row; got {type(prepared).__name__} of "
                f"{len(prepared) if hasattr(prepared, '__len__') else '?'} rows"
            )
        return prepared

    def make_inputs(self, frame: pd.DataFrame, prepared: bool = False) -> Any:
        """Turn a partition into model inputs (see ``collate``).

        With a ``prepare`` step, ``frame`` is either already prepared
        (``prepared=True``: the job's CPU stage ran it) or prepared here.
        """
        if self.prepare is not None:
            frame = frame if prepared else self.prepare_inputs(frame)
            return self.collate(frame) if self.collate is not None else frame
        self._check_columns(frame)
        if self.collate is None:
            return float_tensor(frame, self.input_columns)
        selected = frame[list(self.input_columns)] if self.input_columns else frame
        return self.collate(selected)

    def _check_columns(self, frame: pd.DataFrame) -> None:
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise SchemaError(
                f"model {self.name!r} needs column(s) {missing}; this partition has "
                f"{list(frame.columns)} (do the input files share one schema?)"
            )
        if not self.allow_nulls:
            check_nulls(frame, self.input_columns)


def _callable_name(value: Any) -> str:
    """``make_mlp``, ``partial(_zeros_frame)``, ``_Encode``: a callable as a short name."""
    if hasattr(value, "func"):  # functools.partial
        return f"partial({_callable_name(value.func)})"
    return str(getattr(value, "__qualname__", None) or type(value).__name__)


def _check_callables(spec: ModelSpec) -> None:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    if not callable(spec.load):
        raise InputError(f"ModelSpec(load=...) must be callable, got {spec.load!r}")
    if not callable(spec.predict):
        raise InputError(f"ModelSpec(predict=...) must be callable, got {spec.predict!r}")
    for field in ("collate", "prepare"):
        value = getattr(spec, field)
        if value is not None and not callable(value):
            raise InputError(f"ModelSpec({field}=...) must be callable, got {value!r}")
    if isinstance(spec.input_columns, str):
        raise InputError(
            f"ModelSpec(input_columns={spec.input_columns!r}) must be a list of column "
            f"names; did you mean [{spec.input_columns!r}]?"
        )
    if not spec.outputs:
        raise InputError("ModelSpec(outputs=...) must name at least one output column")


def _batch_size(value: int | None) -> int:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    batch_size = _config.get("batch-size") if value is None else value
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(
            f"ModelSpec(batch_size={batch_size!r}) must be a positive integer, e.g. 1024"
        )
    return batch_size


def _check_options(spec: ModelSpec) -> None:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    _batch_size(spec.batch_size)
    if spec.device not in _DEVICES and not str(spec.device).startswith("cuda:"):
        raise InputError(f"ModelSpec(device={spec.device!r}) must be one of {_DEVICES} or 'cuda:N'")
    if spec.precision not in PRECISIONS:
        raise InputError(f"ModelSpec(precision={spec.precision!r}) must be one of {PRECISIONS}")
    if spec.token_budget is not None:
        if not isinstance(spec.token_budget, int) or spec.token_budget < 1:
            raise InputError(
                f"ModelSpec(token_budget={spec.token_budget!r}) must be a positive integer"
            )
        if spec.lengths is None:
            raise InputError("ModelSpec(token_budget=...) needs lengths=... to measure rows")
    slack = spec.pad_slack
    if slack is not None and (
        isinstance(slack, bool) or not isinstance(slack, (int, float)) or not slack >= 0
    ):
        raise InputError(f"ModelSpec(pad_slack={slack!r}) must be a number >= 0, or None")
    if spec.compile and spec.example is None:
        raise InputError(
            "ModelSpec(compile=True) needs example=... (a function returning a small "
            "input DataFrame) to warm the compiled model up at load time"
        )


def _arrow_type(column: str, kind: OutputType) -> pa.DataType:
    if isinstance(kind, pa.DataType):
        return kind
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
            f"such as 'float32', a pair (dtype, width) such as ('float32', 384), or a pyarrow "
            f"type such as pa.string()"
        ) from err


def output_dtype(column: str, kind: OutputType) -> Any:
    """The pandas dtype of an output column."""
    if isinstance(kind, (tuple, pa.DataType)):
        return pd.ArrowDtype(_arrow_type(column, kind))
    return np.dtype(kind)
