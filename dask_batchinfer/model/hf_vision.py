"""Image tasks of ``from_transformers``: ``"image-classify"`` and ``"image-embed"``.

- ``"image-classify"``: ``label`` (``id2label``), ``score`` and optionally ``scores``
  (every label's), with ``pipeline("image-classification")``'s probabilities
  (softmax; sigmoid for multi-label or one logit; none for regression);
- ``"image-embed"``: ``embedding`` (float32[dim]), optionally L2-normalised:
  ``get_image_features`` for dual encoders (CLIP), else ``pooler_output``, or
  the first token (CLS) when the model has no pooler or the checkpoint lacks
  its weights (a classifier's checkpoint).

``prepare`` (:class:`Pixels`, on the CPU pool) makes RGB PIL images of the
image column (``decode_images``' arrays or encoded files), as the pipeline does
with what a user hands it, and runs the checkpoint's image processor on them.
When the processor ends with rescaling and normalising (ViT, CLIP, ConvNeXT...:
:func:`normalization`), it runs without them and the pixels travel as uint8,
finished on the model worker (:class:`Normalize`); else as float32.
"""

from __future__ import annotations

import dataclasses
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.hf import labelled, labels_of, local_folder, offline, probability
from dask_batchinfer.model.spec import ModelSpec, casts_to_fp16
from dask_batchinfer.worker import cache

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["PIXELS", "Normalize", "Pixels", "build", "collate_pixels", "normalization"]

#: The prepared frame's column: each row's pixels, (channels, height, width).
PIXELS = "pixel_values"
_SPLIT = {"do_rescale": False, "do_normalize": False}


class _Tokenized:
    """``__dask_tokenize__`` of a frozen dataclass: its name and field values."""

    def __dask_tokenize__(self) -> tuple:
        fields = dataclasses.astuple(self)  # type: ignore[call-overload]
        return (f"{__name__}.{type(self).__qualname__}", *fields)


def image_processor(path: str, storage_options: dict | None, trust_remote_code: bool) -> Any:
    """The checkpoint's ``AutoImageProcessor``; from an object store, through a temporary
    copy of the folder's small files (configs, remote code), not of its weights."""
    import posixpath
    import tempfile

    offline()
    from transformers import AutoImageProcessor

    folder = path.removeprefix("file://")
    if "://" not in folder:
        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    with tempfile.TemporaryDirectory(prefix="batchinfer-processor-") as folder:
        for remote in fs.ls(root, detail=False):
            if remote.endswith((".json", ".py")):
                fs.get(remote, posixpath.join(folder, posixpath.basename(remote)))
        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)


@dataclasses.dataclass(frozen=True)
class Normalize(_Tokenized):
    """The processor's last steps, on the model worker: ``(pixels * scale - mean) / std``."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        mean, std = (
            torch.tensor(v, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
            for v in (self.mean, self.std)
        )
        return (pixels.float() * self.scale - mean) / std


def normalization(processor: Any) -> Normalize | None:
    """The processor's rescaling and normalising as a :class:`Normalize`, or None: None
    unless, on a test image it resizes, the processor run without them gives bytes that
    :class:`Normalize` turns into what the whole processor gives (within 1e-5)."""
    import torch
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), np.uint8))
    try:
        full = _pixels(processor, [image], {})[0]
        raw = _pixels(processor, [image], _SPLIT)[0]
    except (TypeError, ValueError):  # a processor without those options
        return None
    whole = raw.size and raw.min() >= 0 and raw.max() <= 255 and np.all(raw == np.rint(raw))
    if raw.shape != full.shape or raw.ndim != 3 or not whole:
        return None
    scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", 0) else 1.0
    normalize = getattr(processor, "do_normalize", False)
    mean, std = (processor.image_mean, processor.image_std) if normalize else (0.0, 1.0)
    found = Normalize(scale, _per_channel(mean, len(raw)), _per_channel(std, len(raw)))
    finished = found(torch.from_numpy(np.ascontiguousarray(raw))).numpy()
    return found if np.allclose(finished, full, rtol=0.0, atol=1e-5) else None


def _per_channel(value: Any, channels: int) -> tuple[float, ...]:
    return tuple(np.broadcast_to(np.ravel(value).astype(float), (channels,)).tolist())


def _pixels(processor: Any, images: list[Image.Image], options: dict[str, Any]) -> np.ndarray:
    """The processor's ``pixel_values`` of ``images`` as one array (rows, channels, h, w)."""
    values = processor(images=images, return_tensors=None, **options)["pixel_values"]
    arrays = [np.asarray(value) for value in values]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise InputError(
            f"the image processor gives pixel arrays of different shapes {shapes[:3]}; give "
            f"it images of one size: preprocess=dbi.decode_images(size=...)"
        )
    return np.stack(arrays)


def rgb_images(column: pd.Series) -> list[Image.Image]:
    """Each row of an image column as an RGB PIL image, as the pipeline's ``load_image``
    makes them: ``decode_images``' uint8 arrays (channels, height, width) of 1, 3 or 4
    channels, or encoded image files (bytes, as ``read_files`` gives them)."""
    from PIL import Image, ImageOps

    kind = getattr(column.dtype, "pyarrow_dtype", None)
    if kind is not None and pa.types.is_fixed_size_list(kind):
        pixels = _arrays(column)
        if pixels.ndim == 4 and pixels.dtype == np.uint8 and pixels.shape[1] in (1, 3, 4):
            hwc = pixels.transpose(0, 2, 3, 1)
            hwc = hwc[..., 0] if hwc.shape[-1] == 1 else hwc  # gray: (height, width)
            return [Image.fromarray(np.ascontiguousarray(p)).convert("RGB") for p in hwc]
    elif kind in (pa.binary(), pa.large_binary()) or (
        kind is None and column.dtype == object and all(isinstance(v, bytes) for v in column)
    ):
        images = []
        for i, data in enumerate(column.tolist()):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    images.append(ImageOps.exif_transpose(image).convert("RGB"))
            except Exception as err:
                raise InputError(
                    f"cannot decode the image at index {column.index[i]!r} of column "
                    f"{column.name!r}: {type(err).__name__}: {err}"
                ) from err
        return images
    raise InputError(
        f"image column {column.name!r} has dtype {column.dtype}; it must hold images as "
        f"dbi.decode_images writes them (uint8 arrays of shape (channels, height, width)) or "
        f"encoded image files (bytes, as dbi.read_files gives them)"
    )


def _arrays(column: pd.Series) -> np.ndarray:
    """A column of nested fixed-size lists as one array (rows, *shape)."""
    chunked = pa.chunked_array(column.array.__arrow_array__())
    values = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    shape = [len(values)]
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()  # honours slices
    return values.to_numpy(zero_copy_only=False).reshape(shape)


def _nested(array: np.ndarray) -> pa.Array:
    """(rows, *shape) -> nested fixed-size lists, one per row, the shape in the type."""
    arrow: pa.Array = pa.array(array.reshape(-1))
    for width in reversed(array.shape[1:]):
        arrow = pa.FixedSizeListArray.from_arrays(arrow, width)
    return arrow


@dataclasses.dataclass(frozen=True)
class Pixels(_Tokenized):
    """``prepare``: images to the processor's pixels, on the CPU pool; with ``split``
    without rescaling and normalising, as uint8 (see :func:`normalization`)."""

    path: str
    split: bool
    storage_options: dict | None = None
    trust_remote_code: bool = False

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        if not len(frame):
            return pd.DataFrame({PIXELS: pd.Series([], dtype=object)}, index=frame.index)
        options = (self.path, self.storage_options, self.trust_remote_code)
        key = ("hf-image-processor", self.path, repr(self.storage_options), self.trust_remote_code)
        processor = cache.helper(key, lambda: image_processor(*options))
        images = rgb_images(frame[frame.columns[0]])
        if self.split:
            raw = _pixels(processor, images, _SPLIT)
            pixels = np.rint(raw).clip(0, 255).astype(np.uint8)
        else:
            pixels = _pixels(processor, images, {}).astype(np.float32, copy=False)
        column = pd.arrays.ArrowExtensionArray(_nested(pixels))
        return pd.DataFrame({PIXELS: column}, index=frame.index)


def collate_pixels(frame: pd.DataFrame) -> torch.Tensor:
    """The prepared pixels as one tensor (rows, channels, height, width), uint8 or float32."""
    import torch

    return torch.from_numpy(np.array(_arrays(frame[PIXELS]), copy=True))


def load_vision_model(
    path: str,
    task: str,
    storage_options: dict | None = None,
    trust_remote_code: bool = False,
    half_on_gpu: bool = False,
) -> Any:
    """The checkpoint's image classifier (``"image-classify"``) or base model, in float32;
    a base model loses a pooler whose weights the checkpoint lacks (a classifier's)."""
    offline()
    import torch
    import transformers

    folder = local_folder(path, storage_options)
    options = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
    if task == "image-classify":
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, **options)
    else:
        model, info = transformers.AutoModel.from_pretrained(
            folder, output_loading_info=True, **options
        )
        if any(key.startswith("pooler.") for key in info["missing_keys"]):
            model.pooler = None  # not in the checkpoint: random weights
    if half_on_gpu and torch.cuda.is_available():
        model = model.half()
    return model


def _model_pixels(model: Any, pixels: torch.Tensor, normalize: Normalize | None) -> Any:
    """The batch as the model reads it: uint8 pixels (from a split processor) finished."""
    return (normalize(pixels) if normalize is not None else pixels).to(model.dtype)


@dataclasses.dataclass(frozen=True)
class ClassifyImages(_Tokenized):
    """``predict`` for ``"image-classify"``: labels and probabilities as the pipeline's."""

    labels: tuple[str, ...]
    function: str  # "softmax", "sigmoid" or "none"
    all_scores: bool
    normalize: Normalize | None
    column: str = "label"

    def __call__(self, model: Any, batch: torch.Tensor) -> dict[str, Any]:
        logits = model(pixel_values=_model_pixels(model, batch, self.normalize)).logits.float()
        return labelled(logits, self.labels, self.function, self.column, self.all_scores)


@dataclasses.dataclass(frozen=True)
class EmbedImages(_Tokenized):
    """``predict`` for ``"image-embed"``: image features, pooled output or first token."""

    l2: bool
    normalize: Normalize | None
    column: str = "embedding"

    def __call__(self, model: Any, batch: torch.Tensor) -> dict[str, Any]:
        import torch

        pixels = _model_pixels(model, batch, self.normalize)
        if hasattr(model, "get_image_features"):  # dual encoders: the projected features
            out = model.get_image_features(pixel_values=pixels)
            pooled = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            out = model(pixel_values=pixels)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state[:, 0]
        pooled = pooled.float().reshape(len(pooled), -1)  # (rows, C, 1, 1) poolers too
        if self.l2:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return {self.column: pooled}


def _embedding_width(config: dict[str, Any]) -> int:
    """The width of what :class:`EmbedImages` returns, from ``config.json``."""
    vision = config.get("vision_config")
    if isinstance(vision, dict):  # a dual encoder: projected (CLIP) or pooled (SigLIP)
        width = config.get("projection_dim") or vision.get("hidden_size")
    else:  # a base checkpoint keeps its pooler (ViT's may be narrower); a classifier's not
        base = not any("For" in name for name in config.get("architectures") or ())
        sizes = config.get("hidden_sizes") or [None]  # convolutional: the last stage's
        width = (base and config.get("pooler_output_size")) or config.get("hidden_size")
        width = width or sizes[-1]
    if not isinstance(width, int) or width < 1:
        raise InputError(
            f"from_transformers: no hidden_size in {config.get('model_type')}'s config"
        )
    return width


def _checked(image_column: Any, text_column: str | None) -> None:
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    if text_column is not None:
        raise InputError(
            f"from_transformers: the image tasks read images from image_column, not "
            f"text_column={text_column!r}; embed texts with task='embed'"
        )
    if not isinstance(image_column, str) or not image_column:
        raise InputError(f"from_transformers: image_column={image_column!r} must be a column name")


def build(
    path: str,
    task: str,
    config: dict[str, Any],
    *,
    image_column: str,
    text_column: str | None,
    output_column: str | None,
    all_scores: bool,
    normalize: bool,
    batch_size: int | None,
    precision: str,
    device: str,
    name: str | None,
    storage_options: dict | None,
    trust_remote_code: bool,
) -> ModelSpec:
    """The spec of an image task (see the module docstring); ``config`` is the
    checkpoint's ``config.json``. Its image processor is read here, on the client."""
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    _checked(image_column, text_column)
    try:
        finish = normalization(image_processor(path, storage_options, trust_remote_code))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"from_transformers: {path!r} has no image processor this version of transformers "
            f"reads ({type(err).__name__}: {err}); save the checkpoint's processor there with "
            f"AutoImageProcessor.from_pretrained(...).save_pretrained({path!r})"
        ) from err
    predict: ClassifyImages | EmbedImages
    if task == "image-classify":
        labels = labels_of(config)
        function = probability(config, labels, None)
        predict = ClassifyImages(labels, function, all_scores, finish, output_column or "label")
        outputs: dict[str, Any] = {predict.column: pa.string(), "score": "float32"}
        if all_scores:
            outputs["scores"] = ("float32", len(labels))
    else:
        predict = EmbedImages(normalize, finish, output_column or "embedding")
        outputs = {predict.column: ("float32", _embedding_width(config))}
    return ModelSpec(
        load=load_vision_model,
        load_kwargs={
            "path": path,
            "task": task,
            "storage_options": storage_options,
            "trust_remote_code": trust_remote_code,
            "half_on_gpu": casts_to_fp16(precision, device),
        },
        predict=predict,
        prepare=Pixels(path, finish is not None, storage_options, trust_remote_code),
        collate=collate_pixels,
        input_columns=[image_column],
        outputs=outputs,
        batch_size=batch_size or 64,
        precision=precision,
        device=device,
        name=name or f"{task}:{path.rstrip('/').rsplit('/', 1)[-1]}",
    )
