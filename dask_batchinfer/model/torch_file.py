"""``from_torch_file``: a spec for a torch model saved in a file, loaded safely."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dask_batchinfer.model.spec import ModelSpec, OutputType
from dask_batchinfer.model.torch_module import call_module

if TYPE_CHECKING:
    import torch

__all__ = ["file_sha256", "from_torch_file"]


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
    predict: Callable[[Any, Any], Any] = call_module,
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
