"""A tiny real model and data helpers, for our tests and for users' own.

Examples
--------
>>> from dask_batchinfer.testing import make_features, tiny_model
>>> frame = make_features(rows=4, n_features=3)
>>> list(frame.columns)
['id', 'f0', 'f1', 'f2']
>>> tiny_model(n_features=3).outputs
{'score': 'float32'}
"""

from __future__ import annotations

from dask_batchinfer.testing.faults import hog_model, memory_hungry_model, oom_model
from dask_batchinfer.testing.models import (
    CALL_LOG_ENV,
    LOAD_LOG_ENV,
    TinyCNN,
    TinyMLP,
    factory_calls,
    feature_columns,
    make_cnn,
    make_features,
    make_mlp,
    parse_json_features,
    read_call_log,
    set_call_log,
    sleepy_preprocess,
    slow_loading_model,
    slow_model,
    threads_probe,
    tiny_cnn_model,
    tiny_model,
    tokenizer_calls,
    uneven_partitions,
)

__all__ = [
    "CALL_LOG_ENV",
    "LOAD_LOG_ENV",
    "TinyCNN",
    "TinyMLP",
    "factory_calls",
    "feature_columns",
    "hog_model",
    "make_cnn",
    "make_features",
    "make_mlp",
    "memory_hungry_model",
    "oom_model",
    "parse_json_features",
    "read_call_log",
    "set_call_log",
    "sleepy_preprocess",
    "slow_loading_model",
    "slow_model",
    "threads_probe",
    "tiny_cnn_model",
    "tiny_model",
    "tokenizer_calls",
    "uneven_partitions",
]
