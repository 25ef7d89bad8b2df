"""Model recipes: :class:`ModelSpec` and the adapters that build one.

- :mod:`~dask_batchinfer.model.spec`: the recipe itself,
- :mod:`~dask_batchinfer.model.torch_module`: ``from_torch`` (a module factory),
- :mod:`~dask_batchinfer.model.torch_file`: ``from_torch_file`` (weights on disk, loaded safely),
- :mod:`~dask_batchinfer.model.function`: ``from_callable`` (any batch function),
- :mod:`~dask_batchinfer.model.sentence`: ``sentence_encoder`` (sentence-transformers),
- :mod:`~dask_batchinfer.model.hf_tasks`: ``from_transformers`` (a Hugging Face checkpoint, by
  task; the task families in ``hf_text_tasks``, ``hf_vision``, ``hf_generate``).
"""

from __future__ import annotations

from dask_batchinfer.model.function import from_callable
from dask_batchinfer.model.hf_tasks import from_transformers
from dask_batchinfer.model.sentence import sentence_encoder
from dask_batchinfer.model.spec import ModelSpec, OutputType, output_dtype
from dask_batchinfer.model.torch_file import file_sha256, from_torch_file
from dask_batchinfer.model.torch_module import from_torch

__all__ = [
    "ModelSpec",
    "OutputType",
    "file_sha256",
    "from_callable",
    "from_torch",
    "from_torch_file",
    "from_transformers",
    "output_dtype",
    "sentence_encoder",
]
