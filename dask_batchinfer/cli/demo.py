"""The built-in demo: embed a synthetic corpus with all-MiniLM-L6-v2, fully offline.

The corpus is made here from a fixed seed: sentences about eight topics, each
with its own vocabulary and several sentence shapes, so the written vectors can
be checked for sense (sentences of one topic sit closer together).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import numpy as np
import pandas as pd

from dask_batchinfer.job.run import run_job
from dask_batchinfer.model import sentence_encoder
from dask_batchinfer.report.result import JobResult

__all__ = ["make_corpus", "run_demo", "topic_coherence"]

_TOPICS: dict[str, dict[str, list[str]]] = {
    "cooking": {
        "who": ["the chef", "my grandmother", "a home cook", "the baker", "our neighbour"],
        "did": ["simmered", "roasted", "seasoned", "baked", "whisked", "braised"],
        "what": [
            "a tomato sauce",
            "fresh bread",
            "garlic and onions",
            "a lemon tart",
            "the vegetable soup",
            "spiced lentils",
        ],
        "how": [
            "for an hour",
            "with olive oil",
            "in a cast iron pan",
            "until golden",
            "over low heat",
        ],
    },
    "football": {
        "who": ["the striker", "the goalkeeper", "the home team", "the coach", "the captain"],
        "did": ["scored", "defended", "celebrated", "missed", "passed", "tackled"],
        "what": [
            "a late penalty",
            "the corner kick",
            "the league title",
            "a header",
            "the final whistle",
            "a free kick",
        ],
        "how": [
            "in extra time",
            "in front of the fans",
            "after a long season",
            "at the stadium",
            "during the derby",
        ],
    },
    "finance": {
        "who": [
            "the central bank",
            "investors",
            "the treasury",
            "the fund manager",
            "shareholders",
        ],
        "did": ["raised", "cut", "hedged", "sold", "bought", "rebalanced"],
        "what": [
            "interest rates",
            "government bonds",
            "the stock portfolio",
            "quarterly dividends",
            "currency reserves",
            "the index fund",
        ],
        "how": [
            "after weak earnings",
            "as inflation rose",
            "before the market opened",
            "amid recession fears",
            "at the annual meeting",
        ],
    },
    "computing": {
        "who": ["the engineer", "the compiler", "our database", "the kernel", "the developer"],
        "did": ["optimised", "compiled", "cached", "deployed", "debugged", "refactored"],
        "what": [
            "the query planner",
            "a memory leak",
            "the GPU kernel",
            "the web server",
            "a race condition",
            "the build pipeline",
        ],
        "how": [
            "before the release",
            "with a profiler",
            "on the cluster",
            "after the code review",
            "in production",
        ],
    },
    "weather": {
        "who": ["the storm", "a cold front", "the forecast", "heavy rain", "the wind"],
        "did": ["flooded", "battered", "warned about", "cooled", "swept across", "soaked"],
        "what": [
            "the coastal towns",
            "the northern valleys",
            "the harbour",
            "the mountain passes",
            "the farmland",
            "the city streets",
        ],
        "how": [
            "overnight",
            "with thunder and hail",
            "for three days",
            "at dawn",
            "despite the sunny morning",
        ],
    },
    "travel": {
        "who": [
            "the backpackers",
            "our tour guide",
            "the family",
            "a solo traveller",
            "the pilgrims",
        ],
        "did": [
            "explored",
            "visited",
            "hiked through",
            "photographed",
            "booked",
            "wandered around",
        ],
        "what": [
            "the old harbour town",
            "a mountain hostel",
            "the ancient ruins",
            "the night market",
            "a coastal train",
            "the island ferry",
        ],
        "how": [
            "with a rucksack",
            "on a rainy holiday",
            "during the summer break",
            "without a map",
            "on their last day abroad",
        ],
    },
    "medicine": {
        "who": ["the nurse", "the surgeon", "the patient", "the pharmacist", "the clinical team"],
        "did": ["diagnosed", "treated", "prescribed", "monitored", "vaccinated", "examined"],
        "what": [
            "a fractured wrist",
            "the fever",
            "high blood pressure",
            "the infection",
            "antibiotics",
            "the heart rhythm",
        ],
        "how": [
            "in the emergency ward",
            "after the blood test",
            "at the clinic",
            "during the night shift",
            "before surgery",
        ],
    },
    "music": {
        "who": ["the orchestra", "the drummer", "a jazz trio", "the choir", "the guitarist"],
        "did": ["rehearsed", "performed", "recorded", "improvised", "tuned", "composed"],
        "what": [
            "a symphony",
            "the new album",
            "an old ballad",
            "the violin solo",
            "a catchy chorus",
            "the opening song",
        ],
        "how": [
            "in the concert hall",
            "at the festival",
            "late into the night",
            "in a small studio",
            "for a sold-out crowd",
        ],
    },
}

_SHAPES = [
    "{who} {did} {what} {how}.",
    "Yesterday {who} {did} {what}.",
    "{how}, {who} {did} {what}.",
    "Everyone said {who} {did} {what} {how}.",
    "Did you hear that {who} {did} {what}?",
]


def make_corpus(n_docs: int = 4000, seed: int = 0) -> pd.DataFrame:
    """A reproducible corpus: ``doc_id``, ``topic`` and ``text`` columns."""
    rng = np.random.default_rng(seed)
    topics = list(_TOPICS)
    chosen = rng.integers(len(topics), size=n_docs)
    shapes = rng.integers(len(_SHAPES), size=n_docs)
    texts = []
    for topic_index, shape_index in zip(chosen, shapes, strict=True):
        words = {
            slot: options[rng.integers(len(options))]
            for slot, options in _TOPICS[topics[topic_index]].items()
        }
        text = _SHAPES[shape_index].format(**words)
        texts.append(text[0].upper() + text[1:])
    return pd.DataFrame(
        {
            "doc_id": np.arange(n_docs, dtype=np.int64),
            "topic": pd.array([topics[i] for i in chosen], dtype="str"),
            "text": pd.array(texts, dtype="str"),
        }
    )


def _write_input(corpus: pd.DataFrame, folder: str, partitions: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(corpus)), partitions)):
        corpus.iloc[chunk].to_parquet(os.path.join(folder, f"docs-{i:03d}.parquet"), index=False)


def topic_coherence(frame: pd.DataFrame) -> tuple[float, float]:
    """Mean cosine similarity of embeddings within a topic and across topics."""
    vectors = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
    similarity = vectors @ vectors.T
    same = frame["topic"].to_numpy()[:, None] == frame["topic"].to_numpy()[None, :]
    np.fill_diagonal(same, False)
    other = ~same
    np.fill_diagonal(other, False)
    return float(similarity[same].mean()), float(similarity[other].mean())


def _clear(folder: str) -> None:
    import shutil

    if os.path.isdir(folder):
        shutil.rmtree(folder)


def run_demo(
    output: str = "batchinfer-demo-output",
    *,
    n_docs: int = 4000,
    partitions: int = 8,
    client: Any = None,
    verbose: bool = True,
) -> JobResult:
    """Write a corpus to ``output/input/`` and embed it into ``output/embeddings/``.

    The embeddings are partitioned by topic (hive folders). Both folders are
    replaced on every run.
    """
    say = print if verbose else (lambda *a, **k: None)
    input_dir = os.path.abspath(os.path.join(output, "input"))
    output_dir = os.path.abspath(os.path.join(output, "embeddings"))
    _clear(input_dir)
    _clear(output_dir)
    corpus = make_corpus(n_docs)
    _write_input(corpus, input_dir, partitions)
    say(f"corpus: {n_docs:,} sentences in {partitions} Parquet files under {input_dir}")
    result = run_job(
        input_dir,
        sentence_encoder(text_column="text"),
        output=output_dir,
        keep=["doc_id", "text"],
        partition_on=["topic"],
        client=client,
    )
    say(result)
    import pyarrow.dataset as ds

    written = ds.dataset(output_dir, format="parquet", partitioning="hive").to_table().to_pandas()
    within, across = topic_coherence(written)
    say(
        f"  check       {len(written):,} vectors read back from {posixpath.join(output_dir, '')}; "
        f"mean cosine within a topic {within:.3f}, across topics {across:.3f}"
    )
    return result
