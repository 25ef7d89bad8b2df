"""predict() on a real LocalCluster of worker processes."""

from __future__ import annotations

import random

import cloudpickle
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch

import dask_batchinfer as dbi
from dask_batchinfer.testing import (
    factory_calls,
    feature_columns,
    make_features,
    make_mlp,
    tiny_model,
    uneven_partitions,
)


def _fresh_seed() -> int:
    """A seed no other test used, so its spec is new to the session's workers."""
    return random.randrange(10**6, 10**9)


def test_each_worker_loads_the_model_once(client):
    seed = _fresh_seed()
    spec = tiny_model(seed=seed, batch_size=50)
    ddf = dd.from_pandas(make_features(2400), npartitions=24)
    out = dbi.predict(ddf, spec, keep=["id"]).compute()
    assert len(out) == 2400
    calls = client.run(factory_calls, seed)  # counted in each worker process
    assert sum(calls.values()) >= 1
    assert set(calls.values()) <= {0, 1}, calls
    stats = dbi.model_stats(client, spec)
    for worker, count in calls.items():
        assert (stats[worker] or {"loads": 0})["loads"] == count


def test_graph_stays_small_with_a_large_model(client):
    kwargs = {"n_features": 64, "hidden": 400_000, "seed": 1}
    weights = sum(p.numel() * p.element_size() for p in make_mlp(**kwargs).parameters())
    assert weights > 100 * 2**20
    spec = dbi.from_torch(
        make_mlp,
        factory_kwargs=kwargs,
        input_columns=feature_columns(64),
        outputs={"score": "float32"},
    )
    ddf = dd.from_pandas(make_features(200, n_features=64), npartitions=20)
    out = dbi.predict(ddf, spec, keep=["id"])
    graph = dict(out.__dask_graph__())
    assert len(cloudpickle.dumps(graph)) < 2**20


def test_matches_in_process_torch_with_uneven_partitions(client):
    seed = _fresh_seed()
    frame = make_features(1000, seed=5)
    frame["name"] = pd.array([f"row-{i}" for i in range(1000)], dtype="str")
    sizes = [300, 0, 1, 250, 17, 0, 432]
    ddf = uneven_partitions(frame, sizes)
    spec = tiny_model(seed=seed, batch_size=64)

    out = dbi.predict(ddf, spec, keep=["id", "name"])
    assert list(out.columns) == ["id", "name", "score"]
    assert out.npartitions == len(sizes)
    lengths = out.map_partitions(len).compute().tolist()
    assert lengths == sizes
    result = out.compute()

    with torch.inference_mode():
        expected = make_mlp(8, 16, seed)(
            torch.from_numpy(frame[feature_columns(8)].to_numpy().copy())
        )
    assert result["id"].tolist() == frame["id"].tolist()
    assert result["name"].tolist() == frame["name"].tolist()
    np.testing.assert_allclose(result["score"].to_numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def _add_features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{f"f{i}": frame["x"] * (i + 1) for i in range(8)})


def test_preprocess_runs_on_workers_and_keeps_rows(client):
    frame = pd.DataFrame({"id": np.arange(100), "x": np.linspace(-1, 1, 100, dtype=np.float32)})
    spec = tiny_model(seed=3)
    result = dbi.predict(
        dd.from_pandas(frame, npartitions=4), spec, preprocess=_add_features, keep="id"
    ).compute()
    expected = dbi.predict(dd.from_pandas(_add_features(frame), npartitions=4), spec).compute()
    np.testing.assert_allclose(result["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-6)


def test_client_side_validation_before_any_task():
    ddf = dd.from_pandas(make_features(10, n_features=2), npartitions=2)
    with pytest.raises(dbi.InputError, match=r"input column\(s\) \['f2'"):
        dbi.predict(ddf, tiny_model(n_features=3))
    with pytest.raises(dbi.InputError, match=r"keep=\['nope'\]"):
        dbi.predict(ddf, tiny_model(n_features=2), keep=["nope"])
    with pytest.raises(dbi.InputError, match="not a loaded model|Pass a recipe"):
        dbi.predict(ddf, make_mlp(2))
    with pytest.raises(dbi.InputError, match="from_pandas"):
        dbi.predict(make_features(10), tiny_model())


def test_partition_error_names_the_partition(client):
    frame = make_features(30, n_features=2)
    frame["f1"] = frame["f1"].astype(object)
    frame.loc[25, "f1"] = "not a number"
    ddf = uneven_partitions(frame, [10, 10, 10])
    with pytest.raises(dbi.PartitionError, match="partition 2.*f1") as info:
        dbi.predict(ddf, tiny_model(n_features=2)).compute()
    assert info.value.partition == 2


def test_threads_scheduler_without_a_cluster():
    ddf = dd.from_pandas(make_features(100), npartitions=3)
    out = dbi.predict(ddf, tiny_model(seed=8), keep=["id"]).compute(scheduler="threads")
    assert out["id"].tolist() == list(range(100))
