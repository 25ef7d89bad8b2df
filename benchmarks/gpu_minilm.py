"""GPU benchmark: all-MiniLM-L6-v2 embeddings through run_job versus the in-process limit.

Run on a GPU machine (see ``scripts/gpu_check.sh``)::

    python benchmarks/gpu_minilm.py --model PATH --docs 200000 --out results.json

Measured in one run, side by side:

- ``limit``: the same model in this process, texts already in memory, best of
  several batch sizes (``SentenceTransformer.encode``), after a warm-up.
- ``jobs``: ``run_job`` on a ``LocalCUDACluster`` (one worker per GPU) from
  Parquet files to committed Parquet, warm (model already loaded: the job is
  run once to warm up, then again with ``mode="overwrite"``), with GPU
  utilisation sampled through NVML every 100 ms; once per ``--threads`` value
  (task threads per GPU worker: more threads read, tokenise and write while
  another partition's forward pass holds the GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time


def _sample_utilisation(stop: threading.Event, samples: list[int]) -> None:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    while not stop.is_set():
        samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        time.sleep(0.1)


def limit(model_path: str, texts: list[str]) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cuda")
    model.encode(texts[:2048], batch_size=256)
    best = {}
    for batch_size in (128, 256, 512, 1024):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        torch.cuda.synchronize()
        best[batch_size] = len(texts) / (time.perf_counter() - start)
    del model
    torch.cuda.empty_cache()
    size = max(best, key=best.get)
    return {"rows_per_second": best[size], "batch_size": size, "all": best}


def job(model_path: str, corpus, workdir: str, files: int, threads: int) -> dict:
    import numpy as np
    from distributed import Client

    import dask_batchinfer as dbi

    if not os.path.isdir(f"{workdir}/in"):
        os.makedirs(f"{workdir}/in")
        for i, part in enumerate(np.array_split(np.arange(len(corpus)), files)):
            corpus.iloc[part].to_parquet(f"{workdir}/in/docs-{i:04d}.parquet", index=False)
    spec = dbi.sentence_encoder(model_path, batch_size=1024, token_budget=65536)
    with dbi.local_cluster(kind="gpu", threads_per_worker=threads,
                           silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:  # fmt: skip
        cold_start = time.perf_counter()
        cold = dbi.run_job(f"{workdir}/in", spec, output=f"{workdir}/out-{threads}",
                           keep=["doc_id"], client=client)  # fmt: skip
        cold_seconds = time.perf_counter() - cold_start
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_utilisation, args=(stop, samples))
        sampler.start()
        warm = dbi.run_job(f"{workdir}/in", spec, output=f"{workdir}/out-{threads}",
                           keep=["doc_id"], mode="overwrite", client=client)  # fmt: skip
        stop.set()
        sampler.join()
    return {
        "cold_wall_seconds": cold_seconds,
        "cold_model_load_seconds": cold.model_load_seconds,
        "warm_wall_seconds": warm.wall_seconds,
        "rows_per_second": warm.rows_out / warm.wall_seconds,
        "gpu_utilisation_mean": statistics.mean(samples) if samples else None,
        "gpu_utilisation_median": statistics.median(samples) if samples else None,
        "padding_fraction": warm.padding_fraction,
        "padding_fraction_unsorted": warm.padding_fraction_unsorted,
        "rows": warm.rows_out,
        "threads_per_worker": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="sentence-transformers model folder")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--threads", default="1,4",
                        help="task threads per GPU worker, one job per value (comma-separated)")
    parser.add_argument("--out", help="write the JSON result here too")
    args = parser.parse_args()

    from dask_batchinfer.demo import make_corpus

    corpus = make_corpus(args.docs, seed=0)
    result = {"docs": args.docs, "limit": limit(args.model, corpus["text"].tolist())}
    with tempfile.TemporaryDirectory() as workdir:
        result["jobs"] = [job(args.model, corpus, workdir, args.files, int(t))
                          for t in args.threads.split(",")]  # fmt: skip
    best = result["limit"]["rows_per_second"]
    result["ratio_to_limit"] = {j["threads_per_worker"]: j["rows_per_second"] / best
                                for j in result["jobs"]}  # fmt: skip
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
