"""Load a model into this process's cache: device, eval mode, compile and warm-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dask_batchinfer.errors import ModelLoadError
from dask_batchinfer.pipeline.batching import BatchStats, run_loaded
from dask_batchinfer.worker import cache
from dask_batchinfer.worker.process import configure_torch_threads

if TYPE_CHECKING:
    from dask_batchinfer.model.spec import ModelSpec

__all__ = ["load_model", "resolve_device", "run_example"]


def load_model(spec: ModelSpec) -> cache.LoadedModel:
    """The model of ``spec`` in this process, loaded on first use and cached.

    Raises
    ------
    ModelLoadError
        Naming the model, its loader and the device, with the cause chained.
    """
    return cache.get_or_load(spec, _load)


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when this process sees a GPU, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(spec: ModelSpec) -> cache.LoadedModel:
    import torch

    device = resolve_device(spec.device)
    configure_torch_threads(device)
    try:
        model = spec.load(**spec.load_kwargs)
        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval()
        if spec.compile:
            model = torch.compile(model)
        loaded = cache.LoadedModel(spec.cache_key, spec.name or "", model, device, 0.0)
        if spec.compile:
            run_example(spec, loaded)  # compile now, not on the first partition
    except Exception as err:
        module = getattr(spec.load, "__module__", "?")
        loader = f"{module}.{getattr(spec.load, '__qualname__', spec.load)}"
        raise ModelLoadError(
            f"loading model {spec.name!r} with {loader}(**{sorted(spec.load_kwargs)}) failed "
            f"on device {device!r}: {type(err).__name__}: {err}"
        ) from err
    return loaded


def run_example(spec: ModelSpec, loaded: cache.LoadedModel) -> None:
    """Run ``spec.example()`` through the model (at load time, e.g. to compile it)."""
    if spec.example is None:
        return
    configure_torch_threads(loaded.device)
    example = spec.example()
    run_loaded(spec, loaded, example, BatchStats())
    if len(example) > 1:  # a partial last batch: compile the dynamic-shape variant now too
        run_loaded(spec, loaded, example.iloc[: max(1, len(example) // 2 + 1)], BatchStats())
