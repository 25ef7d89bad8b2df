"""Text classification with a MiniLM-sized checkpoint: ``from_transformers`` against the peers.

    python -m benchmarks.classify            # 4,000 documents in 8 files
    python -m benchmarks.classify --smoke    # 200 documents

The checkpoint is all-MiniLM-L6-v2's encoder with a 3-label head (random
head weights: the cost is the encoder's), saved with ``save_pretrained``. The
corpus is ``W2-long`` (:mod:`benchmarks.workloads`). Every variant runs in this
process, reads the same Parquet files and writes each document's id, label and
score as Parquet; each first runs a small warm-up input (model loaded, pools
started), then the whole corpus is timed, twice, in interleaved order
(A B C, C B A); steady docs/s is the corpus over the best time.

- ``ours``: ``run_job(folder, from_transformers(path, task="classify"))``,
  default engine (threads in this process), length-sorted token-budget batches.
- ``pipeline``: the careful loop: per file, ``pipeline("text-classification",
  batch_size=64)`` over the file's texts, then ``to_parquet``.
- ``pipeline_sorted``: the same loop with each file's texts sorted by length
  before the pipeline (and the results put back in order): the padding the
  plain loop pays on mixed lengths, removed by hand.
- ``daft``: Daft ``read_parquet`` -> a ``@daft.cls`` batch method calling the
  same pipeline on batches of 64 -> ``write_parquet``.

Writes ``benchmarks/results/classify-cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone

import pandas as pd


def _checkpoint(folder: str) -> str:
    import transformers

    from benchmarks.workloads import minilm_path

    labels = {0: "world", 1: "sports", 2: "business"}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


def ours(path: str, inputs: str, out: str) -> None:
    import dask_batchinfer as dbi

    spec = dbi.from_transformers(path, task="classify")
    dbi.run_job(inputs, spec, output=out, keep=["id"], progress=False, mode="overwrite")


def pipeline(path: str, inputs: str, out: str, cache: dict, by_length: bool = False) -> None:
    import numpy as np
    import transformers

    if "pipe" not in cache:
        cache["pipe"] = transformers.pipeline("text-classification", model=path, device="cpu")
    os.makedirs(out, exist_ok=True)
    for file in sorted(glob.glob(os.path.join(inputs, "*.parquet"))):
        frame = pd.read_parquet(file)
        if by_length:  # longest first, as ours runs; the order restored below
            order = np.argsort(-frame["text"].str.len().to_numpy(), kind="stable")
            frame = frame.iloc[order]
        found = cache["pipe"](frame["text"].tolist(), batch_size=64, truncation=True)
        result = pd.DataFrame({"id": frame["id"], "label": [f["label"] for f in found],
                               "score": [f["score"] for f in found]})  # fmt: skip
        result = result.sort_values("id") if by_length else result
        result.to_parquet(os.path.join(out, os.path.basename(file)), index=False)


def pipeline_sorted(path: str, inputs: str, out: str, cache: dict) -> None:
    pipeline(path, inputs, out, cache, by_length=True)


def daft(path: str, inputs: str, out: str, cache: dict) -> None:
    import daft as daft_

    if "udf" not in cache:

        @daft_.cls
        class Classifier:
            def __init__(self) -> None:
                import transformers

                self.pipe = transformers.pipeline("text-classification", model=path, device="cpu")

            @daft_.method.batch(return_dtype=daft_.DataType.string(), batch_size=64)
            def __call__(self, texts: daft_.Series) -> list[str]:
                found = self.pipe(texts.to_pylist(), batch_size=64, truncation=True)
                return [f["label"] for f in found]

        cache["udf"] = Classifier()
    frame = daft_.read_parquet(os.path.join(inputs, "*.parquet"))
    frame.select("id", cache["udf"](daft_.col("text")).alias("label")).write_parquet(out)


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.workloads import write_long_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    docs, per_file = (200, 100) if args.smoke else (4000, 500)
    work = tempfile.mkdtemp(prefix="bench-classify-")
    path = _checkpoint(os.path.join(work, "model"))
    write_long_text(os.path.join(work, "warm"), 128, 64)
    write_long_text(os.path.join(work, "corpus"), docs, per_file)
    caches: dict[str, dict] = {"pipeline": {}, "pipeline_sorted": {}, "daft": {}}
    runs: dict[str, list[float]] = {"ours": [], "pipeline": [], "pipeline_sorted": [], "daft": []}

    def run(name: str, inputs: str) -> float:
        out = os.path.join(work, f"out-{name}-{len(runs[name])}")
        start = time.perf_counter()
        if name == "ours":
            ours(path, os.path.join(work, inputs), out)
        else:
            globals()[name](path, os.path.join(work, inputs), out, caches[name])
        shutil.rmtree(out, ignore_errors=True)
        return time.perf_counter() - start

    for name in runs:  # warm-up: the model loaded, the engine started
        run(name, "warm")
    for order in (list(runs), list(runs)[::-1]):
        for name in order:
            runs[name].append(run(name, "corpus"))
    rate = {name: docs / min(times) for name, times in runs.items()}
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "docs": docs,
        "seconds": runs,
        "docs_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ours_vs_pipeline": round(rate["ours"] / rate["pipeline"], 2),
        "ours_vs_pipeline_sorted": round(rate["ours"] / rate["pipeline_sorted"], 2),
        "ours_vs_daft": round(rate["ours"] / rate["daft"], 2),
        "cpus": os.cpu_count(),
    }
    shutil.rmtree(work, ignore_errors=True)
    if not args.smoke:
        _write(report)
    print(json.dumps(report, indent=1))
    return report


def _write(report: dict) -> None:
    folder = os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(folder, "classify-cpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    rate = report["docs_per_s"]
    lines = [
        "# Text classification, MiniLM-sized checkpoint, CPU",
        "",
        f"{report['docs']} W2-long documents in files of 500, {report['cpus']} cores, "
        f"{report['when']}; steady docs/s (best of two timed runs after a warm-up, in one "
        f"process; `python -m benchmarks.classify`).",
        "",
        "| variant | docs/s | vs the careful pipeline loop |",
        "|---|---|---|",
    ]
    names = {"ours": "dask-batchinfer `from_transformers(task='classify')`",
             "pipeline": "careful loop: `pipeline(batch_size=64)` per file",
             "pipeline_sorted": "the same loop, each file's texts sorted by length first",
             "daft": "Daft `daft.cls` UDF calling the same pipeline"}  # fmt: skip
    for key, label in names.items():
        lines.append(f"| {label} | {rate[key]} | {rate[key] / rate['pipeline']:.2f}x |")
    with open(os.path.join(folder, "classify-cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
