"""ModelSpec, adapters and the in-process cache: pure functions on pandas objects."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pandas as pd
import pytest
import torch

import dask_batchinfer as dbi
from dask_batchinfer.pipeline.infer import run_model
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.testing import factory_calls, make_features, make_mlp, tiny_model
from dask_batchinfer.worker import cache


def test_spec_token_is_stable_and_discriminating():
    a, b = tiny_model(seed=1), tiny_model(seed=1)
    assert a is not b and a.token == b.token
    assert pickle.loads(pickle.dumps(a)).token == a.token
    assert tiny_model(seed=2).token != a.token
    # batch sizes do not change outputs, so neither the token nor the cached model
    assert a.with_options(batch_size=7).token == a.token
    assert a.with_options(batch_size=7).cache_key == a.cache_key
    assert a.with_options(batch_size=7).batch_size == 7
    # precision changes outputs but not the loaded model
    assert a.with_options(precision="bf16").token != a.token
    assert a.with_options(precision="bf16").cache_key == a.cache_key


def test_spec_pickle_is_small():
    assert len(pickle.dumps(tiny_model())) < 2_000


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"outputs": {}}, "at least one output"),
        ({"outputs": {"y": "not-a-dtype"}}, "output column 'y'"),
        ({"outputs": {"y": ("float32", 0)}}, "output column 'y'"),
        ({"input_columns": "f0"}, "did you mean ['f0']"),
        ({"load": 3}, "load=..."),
        ({"precision": "int4"}, "precision='int4'"),
        ({"token_budget": 100}, "needs lengths"),
        ({"compile": True, "example": None}, "needs example"),
    ],
)
def test_spec_validation_names_the_argument(changes, message):
    with pytest.raises(dbi.InputError) as info:
        tiny_model().with_options(**changes)
    assert message in str(info.value)


def test_run_model_matches_plain_torch_with_micro_batches():
    frame = make_features(1000, n_features=8, seed=3)
    spec = tiny_model(seed=11, batch_size=64)
    out = run_model(spec, frame)
    expected = make_mlp(8, 16, 11)(
        torch.from_numpy(frame[list(spec.input_columns)].to_numpy().copy())
    )
    assert out.index.equals(frame.index)
    assert out["score"].dtype == np.float32
    np.testing.assert_allclose(
        out["score"].to_numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_micro_batches_have_batch_size_rows():
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        return batch["x"].to_numpy() * 2

    spec = dbi.from_callable(fn, input_columns=["x"], outputs={"y": "float64"}, batch_size=7)
    frame = pd.DataFrame({"x": np.arange(50.0)}, index=np.arange(100, 150))
    out = run_model(spec, frame)
    assert sizes == [7] * 7 + [1]
    np.testing.assert_array_equal(out["y"].to_numpy(), np.arange(50.0) * 2)
    assert list(out.index) == list(range(100, 150))


def test_vector_and_multi_column_outputs():
    spec = dbi.from_callable(
        lambda b: {"vec": np.stack([b["x"], -b["x"]], axis=1), "n": b["x"] + 1},
        input_columns=["x"],
        outputs={"vec": ("float32", 2), "n": "int64"},
    )
    out = run_model(spec, pd.DataFrame({"x": [1, 2, 3]}))
    assert isinstance(out["vec"].dtype, pd.ArrowDtype)
    assert list(out["vec"].iloc[1]) == [2.0, -2.0]
    assert out["n"].tolist() == [2, 3, 4]

    two = dbi.from_callable(
        lambda b: np.stack([b["x"], b["x"] * 10], axis=1),
        input_columns=["x"],
        outputs={"a": "float64", "b": "float64"},
    )
    assert run_model(two, pd.DataFrame({"x": [1.0, 2.0]}))["b"].tolist() == [10.0, 20.0]


def test_wrong_output_shape_is_a_clear_error():
    spec = dbi.from_callable(lambda b: np.zeros(3), input_columns=["x"], outputs={"y": "float32"})
    with pytest.raises(dbi.InputError, match="returned 3 value.*batch of 5 rows"):
        run_model(spec, pd.DataFrame({"x": np.arange(5)}))


def test_empty_partition_gives_typed_empty_output():
    spec = tiny_model()
    out = run_model(spec, make_features(0))
    assert len(out) == 0 and out["score"].dtype == np.float32


def test_cache_loads_once_under_concurrency():
    spec = tiny_model(seed=424242)
    before = factory_calls(424242)
    barrier = threading.Barrier(8)
    models = []

    def load():
        barrier.wait()
        models.append(load_model(spec).model)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert factory_calls(424242) - before == 1
    assert all(m is models[0] for m in models)
    # an equal spec built separately shares the entry (keyed by token, not id)
    assert load_model(tiny_model(seed=424242)).model is models[0]
    assert cache.local_stats()[spec.cache_key]["loads"] == 1


def test_model_load_failure_names_the_model():
    spec = dbi.from_torch(
        make_mlp,
        factory_kwargs={"n_features": "eight"},
        input_columns=["f0"],
        outputs={"s": "float32"},
        name="broken-mlp",
    )
    with pytest.raises(dbi.ModelLoadError, match="broken-mlp.*make_mlp"):
        load_model(spec)


def test_float_tensor_is_writable_and_contiguous():
    frame = make_features(10, n_features=3)
    tensor = tiny_model(n_features=3).make_inputs(frame)
    assert tensor.dtype == torch.float32 and tensor.shape == (10, 3)
    assert tensor.is_contiguous()
    tensor[0, 0] = 5.0  # would raise on a read-only numpy buffer


def test_missing_input_column_is_named():
    frame = make_features(5, n_features=2)
    with pytest.raises(dbi.InputError, match=r"needs column\(s\) \['f2'\]"):
        tiny_model(n_features=3).make_inputs(frame)


def test_the_model_cache_keeps_the_most_recently_used_models():
    import dask

    from dask_batchinfer.pipeline.loading import load_model
    from dask_batchinfer.worker import cache

    specs = [tiny_model(seed=s) for s in (101, 102, 103)]
    cache.clear()
    with dask.config.set({"batchinfer.cached-models": 2}):
        first = load_model(specs[0])
        load_model(specs[1])
        assert load_model(specs[0]) is first  # used again: now the most recent
        load_model(specs[2])  # over the limit: drops specs[1], the least recently used
        assert load_model(specs[0]) is first
        assert not cache.evict(specs[1]) and cache.evict(specs[2])
    cache.clear()
