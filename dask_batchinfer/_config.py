"""Defaults under the ``batchinfer`` key of :mod:`dask.config`.

Set them the way you set Dask's own options::

    dask.config.set({"batchinfer.batch-size": 4096})

or with ``DASK_BATCHINFER__BATCH_SIZE=4096`` in the environment.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_fn = os.path.join(os.path.dirname(__file__), "batchinfer.yaml")
with open(_fn) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def get(key: str) -> Any:
    """Return ``batchinfer.<key>`` from :mod:`dask.config`."""
    return dask.config.get(f"batchinfer.{key}")
