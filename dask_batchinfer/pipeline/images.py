"""Images as model inputs: decode file bytes with Pillow, then one tensor per partition.

``decode_images(...)`` is a ``preprocess=`` step for frames from
:func:`~dask_batchinfer.read_files`: each row's ``bytes`` become an
``image`` column of fixed-shape uint8 arrays (channels, height, width),
stored as nested Arrow fixed-size lists, so the shape travels with the
column. :func:`image_tensor` is the matching ``collate=``: the whole column
as one ``uint8`` tensor of shape (rows, channels, height, width).

A row whose bytes do not decode raises an :class:`InputError` naming its
path; the preprocess step finds such rows by halving, so with
``on_error="quarantine"`` they are set aside like any bad row.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["CHANNELS", "RESAMPLING", "decode_frame", "decode_images", "image_tensor"]

#: Pillow modes :func:`decode_images` can produce, and their channels.
CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
#: Resampling filters by name (Pillow's ``Image.Resampling``).
RESAMPLING = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")


def decode_images(
    size: int | Sequence[int] = (224, 224),
    *,
    column: str = "bytes",
    mode: str = "RGB",
    output: str = "image",
    resample: str = "bilinear",
    path_column: str = "path",
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A ``preprocess=`` step that decodes image files and resizes them to one size.

    Parameters
    ----------
    size : int or (int, int), default (224, 224)
        ``(height, width)`` of every decoded image (an int: a square).
    column : str, default "bytes"
        The column holding each file's bytes (as :func:`~dask_batchinfer.read_files` gives).
    mode : {"RGB", "L", "RGBA"}, default "RGB"
        Pillow mode the images are converted to (3, 1 or 4 channels).
    output : str, default "image"
        The column that receives the decoded images: put it in the spec's
        ``input_columns`` with ``collate=dbi.image_tensor``.
    resample : str, default "bilinear"
        Resampling filter, one of :data:`RESAMPLING`.
    path_column : str, default "path"
        The column that names each row's file in errors.

    Returns
    -------
    callable
        A picklable ``preprocess(frame) -> frame``: the input's columns without
        ``column``, plus ``output``, uint8 of shape (channels, height, width)
        per row. JPEGs much larger than ``size`` are decoded at a reduced scale
        first (Pillow's draft mode), which is faster.

    Raises
    ------
    InputError
        Here, for a bad argument; in the step, for a row whose bytes are
        missing or not an image Pillow reads (naming its path).

    Examples
    --------
    >>> spec = dbi.ModelSpec(load=make_cnn, predict=classify,  # doctest: +SKIP
    ...                      input_columns=["image"], collate=dbi.image_tensor,
    ...                      outputs={"label": "int64"})
    >>> scores = dbi.predict(dbi.read_files("scans/"), spec,  # doctest: +SKIP
    ...                      preprocess=dbi.decode_images(size=(64, 64)), keep=["path"])
    """
    _require_pillow()
    height, width = _check_size(size)
    if mode not in CHANNELS:
        raise InputError(f"decode_images(mode={mode!r}) must be one of {sorted(CHANNELS)}")
    if resample not in RESAMPLING:
        raise InputError(f"decode_images(resample={resample!r}) must be one of {RESAMPLING}")
    for name, value in (("column", column), ("output", output), ("path_column", path_column)):
        if not isinstance(value, str) or not value:
            raise InputError(f"decode_images({name}={value!r}) must be a column name")
    return functools.partial(
        decode_frame,
        size=(height, width),
        column=column,
        mode=mode,
        output=output,
        resample=resample,
        path_column=path_column,
    )


def _require_pillow() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "decode_images needs Pillow: pip install 'dask-batchinfer[images]'"
        ) from err


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise InputError(
            f"decode_images(size={size!r}) must be (height, width) in pixels, e.g. (224, 224)"
        )
    return int(pair[0]), int(pair[1])


def decode_frame(
    frame: pd.DataFrame,
    *,
    size: tuple[int, int],
    column: str = "bytes",
    mode: str = "RGB",
    output: str = "image",
    resample: str = "bilinear",
    path_column: str = "path",
) -> pd.DataFrame:
    """Decode ``frame[column]`` into ``output`` (see :func:`decode_images`)."""
    if column not in frame.columns:
        raise InputError(
            f"decode_images: no column {column!r} to decode; the frame has {list(frame.columns)}"
        )
    height, width = size
    pixels = np.empty((len(frame), CHANNELS[mode], height, width), dtype=np.uint8)
    paths = frame[path_column].tolist() if path_column in frame.columns else None
    for i, data in enumerate(frame[column].tolist()):
        name = paths[i] if paths is not None else f"row {i}"
        pixels[i] = _decode(data, name, size, mode, resample)
    images = pd.arrays.ArrowExtensionArray(_nested(pixels))
    out = frame.drop(columns=[column])
    out[output] = pd.Series(images, index=frame.index)
    return out


def _decode(data: Any, name: str, size: tuple[int, int], mode: str, resample: str) -> np.ndarray:
    from PIL import Image

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"cannot decode image {name!r}: no bytes ({data!r})")
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(mode, (width, height))  # decode at a reduced scale when much larger
            converted = image.convert(mode)
        if converted.size != (width, height):
            filter_ = Image.Resampling[resample.upper()]
            converted = converted.resize((width, height), filter_)
        array = np.asarray(converted, dtype=np.uint8)
    except Exception as err:
        raise InputError(f"cannot decode image {name!r}: {type(err).__name__}: {err}") from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _nested(array: np.ndarray) -> pa.Array:
    """(rows, *shape) -> nested fixed-size lists, one per row, the shape in the type."""
    arrow: pa.Array = pa.array(array.reshape(-1))
    for width in reversed(array.shape[1:]):
        arrow = pa.FixedSizeListArray.from_arrays(arrow, width)
    return arrow


def image_tensor(frame: pd.DataFrame) -> torch.Tensor:
    """A ``collate=`` for :func:`decode_images`'s column: one tensor of the whole partition.

    ``frame`` holds one column of nested fixed-size lists (as ``decode_images``
    writes them); the result has shape (rows, channels, height, width) and
    the column's element type (``torch.uint8`` for images: scale in the
    model, e.g. ``x.float() / 255``). Any column of fixed-shape numeric
    arrays works the same way.
    """
    import torch

    if frame.shape[1] != 1:
        raise InputError(
            f"image_tensor reads one column (decode_images' output), got {list(frame.columns)}"
        )
    series = frame.iloc[:, 0]
    dtype = series.dtype
    if not isinstance(dtype, pd.ArrowDtype) or not pa.types.is_fixed_size_list(dtype.pyarrow_dtype):
        raise InputError(
            f"image_tensor reads a column of fixed-shape arrays (decode_images' output); "
            f"column {series.name!r} has dtype {dtype}"
        )
    values = pa.Table.from_pandas(frame, preserve_index=False).column(0).combine_chunks()
    shape = [len(values)]
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()  # honours slices (a batch's offset)
    array = values.to_numpy(zero_copy_only=False).reshape(shape)
    return torch.from_numpy(np.array(array, copy=True))
