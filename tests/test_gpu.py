"""GPU behaviour; skipped without a CUDA GPU. Run with `make gpu-check` on a GPU machine."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import dask_batchinfer as dbi
from dask_batchinfer.pipeline.batching import BatchStats
from dask_batchinfer.pipeline.infer import run_model
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.testing import hog_model, make_features, tiny_model
from dask_batchinfer.worker import cache

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _cpu_scores(frame, seed):
    return run_model(tiny_model(seed=seed).with_options(device="cpu"), frame)["score"].to_numpy()


def test_gpu_count_sees_the_gpus():
    """With the gpu extra installed, dask-cuda sees the GPUs torch sees (else 0: no GPU kind)."""
    pytest.importorskip("dask_cuda")
    assert dbi.cluster.local.gpu_count() == torch.cuda.device_count() >= 1


def test_pinned_prefetch_on_gpu_matches_cpu():
    frame = make_features(5000, seed=1)
    spec = tiny_model(seed=2, batch_size=128).with_options(device="cuda")
    out = run_model(spec, frame)["score"].to_numpy()
    assert load_model(spec).device == "cuda"
    np.testing.assert_allclose(out, _cpu_scores(frame, 2), rtol=1e-4, atol=1e-4)


def test_bf16_on_gpu():
    frame = make_features(2000, seed=3)
    spec = tiny_model(seed=4).with_options(device="cuda", precision="bf16")
    np.testing.assert_allclose(
        run_model(spec, frame)["score"], _cpu_scores(frame, 4), atol=0.1, rtol=0.05
    )


def test_real_out_of_memory_recovery():
    frame = make_features(1000, seed=5)
    spec = hog_model(fraction=1 / 48, seed=6, batch_size=256).with_options(device="cuda")
    stats = BatchStats()
    out = run_model(spec, frame, stats)["score"].to_numpy()
    assert stats.oom_events >= 1 and stats.batch_size == 32, stats
    np.testing.assert_allclose(out, _cpu_scores(frame, 6), rtol=1e-4, atol=1e-4)


def test_evict_releases_gpu_memory():
    spec = dbi.from_torch(
        torch.nn.Linear, factory_kwargs={"in_features": 8, "out_features": 2**25},
        input_columns=[f"f{i}" for i in range(8)], outputs={"y": ("float32", 2**25)},
        device="cuda",
    )  # fmt: skip
    before = torch.cuda.memory_allocated()
    load_model(spec)
    assert torch.cuda.memory_allocated() - before > 2**30
    assert cache.evict(spec)
    assert torch.cuda.memory_allocated() - before < 2**20


def test_local_cuda_cluster_job(tmp_path):
    pytest.importorskip("dask_cuda")
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client

    frame = make_features(20_000, seed=7)
    spec = tiny_model(seed=8, batch_size=4096)
    with dbi.local_cluster(kind="gpu", silence_logs=logging.WARNING) as cluster, \
            Client(cluster, set_as_default=False) as c:  # fmt: skip
        assert type(cluster).__name__ == "LocalCUDACluster"
        result = dbi.run_job(dd.from_pandas(frame, npartitions=8), spec, keep=["id"],
                             output=str(tmp_path / "out"), client=c)  # fmt: skip
        stats = [s for s in dbi.model_stats(c, spec).values() if s]
        assert stats and all(s["device"] == "cuda" and s["loads"] == 1 for s in stats)
        plugins = c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
        assert not [p for p in plugins if p.startswith("batchinfer")]  # the job removed its own
        used = c.run(torch.cuda.memory_allocated)
        assert all(used[w] > 0 for w in used)  # the model stays cached for the next job
        assert all(c.run(cache.evict, spec.cache_key).values())
        after = c.run(torch.cuda.memory_allocated)
        assert all(after[w] < used[w] for w in used), (used, after)
    assert result.rows_out == 20_000
    back = pd.read_parquet(tmp_path / "out").sort_values("id")
    np.testing.assert_allclose(
        back["score"].to_numpy(), _cpu_scores(frame, 8), rtol=1e-4, atol=1e-4
    )


def test_sentence_encoder_on_gpu_is_fp16_and_close_to_cpu():
    """Token ids padded per batch on the GPU, fp16 weights by default: within 2e-3 of fp32 CPU."""
    from dask_batchinfer.cli.demo import make_corpus

    corpus = make_corpus(600, seed=11)
    corpus.loc[::13, "text"] = corpus.loc[::13, "text"] * 30  # a few past the token limit
    gpu = dbi.sentence_encoder(batch_size=128)
    cpu = dbi.sentence_encoder(batch_size=128, device="cpu", precision="fp32")
    stats = BatchStats()
    on_gpu = np.stack(run_model(gpu, corpus, stats)["embedding"])
    assert next(load_model(gpu).model.parameters()).dtype == torch.float16
    assert stats.turn_seconds > 0
    on_cpu = np.stack(run_model(cpu, corpus)["embedding"])
    assert np.abs(on_gpu - on_cpu).max() < 2e-3


def test_default_local_cluster_with_a_gpu_is_mixed_and_tokenises_on_the_cpu_pool(tmp_path):
    """``local_cluster()`` on a GPU machine: CPU workers tokenise, the GPU worker never does."""
    import pandas as pd
    from distributed import Client

    from dask_batchinfer.cli.demo import make_corpus
    from dask_batchinfer.testing import tokenizer_calls

    corpus = make_corpus(4000, seed=12)
    (tmp_path / "in").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(corpus)), 8)):
        corpus.iloc[part].to_parquet(tmp_path / "in" / f"docs-{i}.parquet", index=False)
    spec = dbi.sentence_encoder(batch_size=512)
    with dbi.local_cluster(silence_logs=logging.WARNING) as cluster, \
            Client(cluster, set_as_default=False) as c:  # fmt: skip
        workers = c.scheduler_info(n_workers=-1)["workers"]
        model_pool = {a for a, w in workers.items() if "model" in (w.get("resources") or {})}
        assert len(model_pool) == torch.cuda.device_count()
        assert all(workers[a]["nthreads"] == 2 for a in model_pool)
        before = c.run(tokenizer_calls)
        result = dbi.run_job(str(tmp_path / "in"), spec, keep=["doc_id"],
                             output=str(tmp_path / "out"), client=c)  # fmt: skip
        calls = {w: n - before[w] for w, n in c.run(tokenizer_calls).items()}
        devices = {w: s["device"] for w, s in dbi.model_stats(c, spec).items() if s}
    assert result.rows_out == 4000
    assert all(calls[w] == 0 for w in model_pool), calls
    assert sum(n for w, n in calls.items() if w not in model_pool) >= 8
    assert set(devices) == model_pool and set(devices.values()) == {"cuda"}
    back = pd.read_parquet(tmp_path / "out").sort_values("doc_id")
    cpu = dbi.sentence_encoder(batch_size=512, device="cpu", precision="fp32")
    expected = np.stack(run_model(cpu, corpus)["embedding"])
    assert np.abs(np.stack(back["embedding"]) - expected).max() < 2e-3
