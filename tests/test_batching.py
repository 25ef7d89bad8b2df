"""Micro-batching on pandas partitions: OOM recovery, token budgets, precision, compile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import dask_batchinfer as dbi
from dask_batchinfer.cli.demo import make_corpus
from dask_batchinfer.pipeline.batching import BatchStats, _budget_ranges
from dask_batchinfer.pipeline.infer import run_model
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.testing import make_features, oom_model, tiny_model
from dask_batchinfer.worker import cache


def test_out_of_memory_splits_and_remembers():
    frame = make_features(1000, seed=1)
    spec = oom_model(limit=40, seed=2, batch_size=256)
    cache.evict(spec)
    stats = BatchStats()
    out = run_model(spec, frame, stats)
    one_row = run_model(tiny_model(seed=2, batch_size=1), frame)["score"].to_numpy()
    np.testing.assert_allclose(out["score"].to_numpy(), one_row, rtol=1e-6, atol=1e-6)
    never_hit = run_model(tiny_model(seed=2, batch_size=32), frame)["score"].to_numpy()
    np.testing.assert_array_equal(out["score"].to_numpy(), never_hit)  # identical
    assert stats.batch_size == 32  # 256 -> 128 -> 64 -> 32 fits under 40
    assert 1 <= stats.oom_events <= 3  # learned once, not once per batch
    again = BatchStats()
    run_model(spec, frame, again)
    assert again.oom_events == 0 and again.batch_size == 32  # remembered by the worker


def test_out_of_memory_at_one_row_raises():
    spec = oom_model(limit=0, seed=3)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_model(spec, make_features(4))


def test_budget_ranges_respect_budget_and_row_cap():
    lengths = np.array([1, 2, 2, 3, 5, 8, 8, 9, 20, 40])
    ranges = _budget_ranges(lengths, budget=24, max_rows=4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    for start, stop in ranges:
        rows = stop - start
        assert rows <= 4
        assert rows == 1 or rows * lengths[stop - 1] <= 24
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_budget_ranges_with_slack_bound_padding_but_keep_full_batches_of_one_length():
    from dask_batchinfer.pipeline.batching import PAD_MIN_ROWS, PAD_SLACK, _padded

    rng = np.random.default_rng(0)  # a 500-document partition, 3 to 256 tokens
    lengths = np.sort(np.clip(rng.lognormal(3.9, 0.6, 500).astype(int), 3, 256))
    plain = _budget_ranges(lengths, budget=8192, max_rows=128)
    bounded = _budget_ranges(lengths, budget=8192, max_rows=128, slack=PAD_SLACK)
    padding = [_padded(lengths, r) - lengths.sum() for r in (plain, bounded)]
    assert padding[1] < padding[0] / 2, padding  # measured 7,297 -> 1,482 padding tokens
    for start, stop in bounded:
        rows = stop - start
        assert rows <= 128 and (rows == 1 or rows * lengths[stop - 1] <= 8192)
        if rows > PAD_MIN_ROWS:  # past the minimum, rows stay within the slack
            assert lengths[stop - 1] <= lengths[start] * (1 + PAD_SLACK)
    same = np.full(300, 20)
    assert _budget_ranges(same, 8192, 128, PAD_SLACK) == [(0, 128), (128, 256), (256, 300)]


def _lengths(model, frame):
    return frame["text"].str.len().to_numpy()


def _echo_length(batch):
    return np.stack([batch["text"].str.len().to_numpy(), batch["i"].to_numpy()], axis=1)


def test_length_sorted_batches_restore_input_order():
    texts = [("x" * n) for n in np.random.default_rng(0).integers(1, 60, 300)]
    frame = pd.DataFrame({"text": texts, "i": np.arange(300)}, index=np.arange(300) + 1000)
    sizes = []

    def predict(model, batch):
        sizes.append((len(batch), int(batch["text"].str.len().max())))
        return _echo_length(batch)

    spec = dbi.ModelSpec(
        load=lambda: None, predict=predict, collate=lambda f: f, input_columns=["text", "i"],
        outputs={"n": "int64", "i": "int64"}, batch_size=64, token_budget=600, lengths=_lengths,
    )  # fmt: skip
    stats = BatchStats()
    out = run_model(spec, frame, stats)
    assert out.index.equals(frame.index)
    assert out["i"].tolist() == list(range(300))
    assert out["n"].tolist() == [len(t) for t in texts]
    assert all(rows == 1 or rows * longest <= 600 for rows, longest in sizes)
    assert stats.tokens == sum(len(t) for t in texts)
    assert stats.padded_tokens < stats.padded_tokens_unsorted


@pytest.mark.slow
def test_minilm_token_budget_equals_unsorted():
    corpus = make_corpus(200, seed=4)
    corpus.loc[::7, "text"] = corpus.loc[::7, "text"] * 6  # a few long rows
    budgeted = dbi.sentence_encoder(token_budget=2048, batch_size=64)
    plain = dbi.sentence_encoder(token_budget=None, batch_size=64)
    stats = BatchStats()
    a = run_model(budgeted, corpus, stats)
    b = run_model(plain, corpus)
    np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), atol=1e-5)
    assert stats.padded_tokens < stats.padded_tokens_unsorted


def test_bf16_autocast_is_close_to_fp32():
    frame = make_features(500, seed=5)
    fp32 = run_model(tiny_model(seed=6), frame)["score"].to_numpy()
    bf16 = run_model(tiny_model(seed=6).with_options(precision="bf16"), frame)["score"]
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16.to_numpy(), fp32, atol=0.1, rtol=0.05)
    assert not np.array_equal(bf16.to_numpy(), fp32)  # autocast really ran


@pytest.mark.slow
def test_compile_warms_up_at_load():
    spec = dbi.from_torch(
        __import__("dask_batchinfer.testing", fromlist=["make_mlp"]).make_mlp,
        factory_kwargs={"seed": 7}, input_columns=[f"f{i}" for i in range(8)],
        outputs={"score": "float32"}, batch_size=64, compile=True,
    )  # fmt: skip
    loaded = load_model(spec)
    assert type(loaded.model).__name__ == "OptimizedModule"
    frame = make_features(100, seed=8)
    np.testing.assert_allclose(
        run_model(spec, frame)["score"].to_numpy(),
        run_model(tiny_model(seed=7), frame)["score"].to_numpy(),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
