"""The demo's code path, on a reduced corpus, with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest

from dask_batchinfer.cli.demo import make_corpus, run_demo, topic_coherence


def test_corpus_is_reproducible_and_varied():
    a, b = make_corpus(500), make_corpus(500)
    assert a.equals(b)
    assert a["text"].nunique() > 450
    assert a["topic"].nunique() == 8


@pytest.mark.slow
def test_demo_embeds_the_corpus(client, tmp_path):
    result = run_demo(str(tmp_path), n_docs=240, partitions=3, client=client, verbose=False)
    assert (result.rows_in, result.rows_out, result.partitions) == (240, 240, 3)
    assert set(result.model_loads.values()) == {1}
    assert result.padding_fraction is not None
    assert result.padding_fraction <= result.padding_fraction_unsorted  # length-sorted batches
    written = (
        ds.dataset(str(tmp_path / "embeddings"), format="parquet", partitioning="hive")
        .to_table()
        .to_pandas()
    )
    assert sorted(written["doc_id"]) == list(range(240))
    vectors = np.stack(written["embedding"].to_numpy())
    assert vectors.shape == (240, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    within, across = topic_coherence(written)
    assert within > across + 0.15
