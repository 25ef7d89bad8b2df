"""Feed benchmark: the model worker's host time per document, with a null model.

How many documents per second can one GPU worker ever take? A model worker
does host work around every forward pass: it receives the tokenised
partition from the CPU pool, sorts it by length, pads each batch, turns the
outputs into Arrow and writes Parquet. This benchmark replaces the forward
pass with a null model (outputs of the right shape at once: random unit
vectors, made once, as incompressible as real embeddings) and measures
that host work per document, on CPU, with the real ``sentence_encoder``
prepare/collate path::

    python -m benchmarks.feed --docs 100000 --words 78

Every step runs in one process on one thread, partition after partition
(a model worker is its own process: nothing else holds its GIL). Measured in one run:

- ``prepare``: tokenising on the CPU pool (per document; spread over the pool's cores);
- ``transfer``: pickling and unpickling a prepared partition (what crossing
  to the model worker costs on both ends, without the network);
- ``infer``: the model worker's infer stage with the null model (collate,
  sort, pad, batches, outputs to Arrow);
- ``write``: writing the partition's Parquet file (its marker, a few
  hundred bytes per partition, is left out);

and the bound ``1 / (transfer + infer + write)`` in documents per second per
model worker (one task thread). Results: ``benchmarks/results/feed-cpu.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np


def _null_load(max_seq_length: int = 256) -> Any:
    return SimpleNamespace(max_seq_length=max_seq_length)


_OUTPUTS: list[Any] = []


def _null_predict(model: Any, batch: dict[str, Any]) -> Any:
    """Unit vectors of random values, as incompressible as real embeddings, made once."""
    import torch

    rows = len(batch["input_ids"])
    if not _OUTPUTS or len(_OUTPUTS[0]) < rows:
        noise = torch.randn(max(rows, 4096), 384, generator=torch.Generator().manual_seed(0))
        _OUTPUTS[:] = [torch.nn.functional.normalize(noise, dim=1)]
    return _OUTPUTS[0][:rows]


def null_encoder(batch_size: int, token_budget: int) -> Any:
    """``sentence_encoder``'s real prepare and collate around a null forward pass."""
    import dask_batchinfer as dbi

    spec = dbi.sentence_encoder(batch_size=batch_size, token_budget=token_budget)
    return spec.with_options(load=_null_load, load_kwargs={}, predict=_null_predict,
                             name="null-encoder")  # fmt: skip


def _timed(step: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = step(*args, **kwargs)
    return out, time.perf_counter() - start


def _prepare(spec: Any, frame: Any) -> Any:
    """The CPU pool's step: tokenise a partition."""
    from dask_batchinfer.pipeline.preprocess import preprocess_partition

    return preprocess_partition(frame, keep=("id",), model=spec)


def _infer(spec: Any, prepared: Any) -> Any:
    """The model worker's infer stage on a prepared partition: its output frame."""
    from dask_batchinfer.pipeline.infer import infer_features

    result, _ = infer_features(prepared.features, prepared.kept, model=spec, prepared=True)
    return result


def _write_output(result: Any, out: str, stem: str, schema: Any) -> None:
    """The model worker's write: the partition's Parquet file."""
    import fsspec

    from dask_batchinfer.io.parquet import write_partition

    write_partition(result, fs=fsspec.filesystem("file"), root=out, stem=stem, schema=schema)


def measure(spec: Any, folder: str, out: str) -> tuple[dict[str, float], int, int]:
    """Every partition through each step in turn, in this process, on one thread.

    Returns seconds per step (summed), the prepared partitions' pickled bytes
    and the documents. The first partition warms up and is not counted.
    """
    import pandas as pd
    import pyarrow as pa

    os.makedirs(out, exist_ok=True)
    seconds = dict.fromkeys(("prepare", "transfer", "infer", "write"), 0.0)
    size = docs = 0
    names = sorted(os.listdir(folder))
    for i, name in enumerate([names[0], *names]):  # the first run of the first file warms up
        frame = pd.read_parquet(os.path.join(folder, name))  # reading is not timed
        prepared, prepare = _timed(_prepare, spec, frame)
        data, dump = _timed(pickle.dumps, prepared, protocol=5)
        prepared, load = _timed(pickle.loads, data)
        result, infer = _timed(_infer, spec, prepared)
        schema = pa.Schema.from_pandas(result, preserve_index=False)  # not timed, as before
        _, write = _timed(_write_output, result, out, f"part-{i}", schema)
        if i:
            for step, took in zip(seconds, (prepare, dump + load, infer, write), strict=True):
                seconds[step] += took
            size, docs = size + len(data), docs + len(frame)
    return seconds, size, docs


def two_threads(spec: Any, folder: str, out: str) -> tuple[float, int]:
    """The model worker's steps on two task threads (its default on a GPU): wall seconds, docs.

    Partitions are tokenised first (the CPU pool's work, not timed); the two
    threads then each take a partition, unpickle it, infer and write.
    """
    import concurrent.futures

    import pandas as pd
    import pyarrow as pa

    os.makedirs(out, exist_ok=True)
    shipped = [pickle.dumps(_prepare(spec, pd.read_parquet(os.path.join(folder, name))),
                            protocol=5) for name in sorted(os.listdir(folder))]  # fmt: skip

    def model_worker(i: int) -> int:
        result = _infer(spec, pickle.loads(shipped[i]))
        _write_output(result, out, f"two-{i}", pa.Schema.from_pandas(result, preserve_index=False))
        return len(result)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        docs = sum(pool.map(model_worker, range(len(shipped))))
    return time.perf_counter() - start, docs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=78, help="words per document (~tokens - 2)")
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--token-budget", type=int, default=65536)
    parser.add_argument("--out", default="benchmarks/results/feed-cpu", help="path stem")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.workloads import write_text

    torch.set_num_threads(1)  # a model worker's task thread
    spec = null_encoder(args.batch_size, args.token_budget)
    with tempfile.TemporaryDirectory() as work:
        write_text(f"{work}/in", args.docs, args.rows_per_file, mean=math.log(args.words),
                   sigma=0.0)  # fmt: skip
        seconds, size, n = measure(spec, f"{work}/in", f"{work}/out")
        wall, two_docs = two_threads(spec, f"{work}/in", f"{work}/two")
        tokens = _tokens_per_doc(spec, f"{work}/in")
    per_doc = {step: took / n for step, took in seconds.items()}
    host = per_doc["transfer"] + per_doc["infer"] + per_doc["write"]
    report = {
        "docs": n,
        "tokens_per_doc": tokens,
        "partition_rows": args.rows_per_file,
        "batch_size": args.batch_size,
        "token_budget": args.token_budget,
        "prepared_bytes_per_doc": size / n,
        "microseconds_per_doc": {k: v * 1e6 for k, v in per_doc.items()},
        "model_worker_host_us_per_doc": host * 1e6,
        "docs_per_second_bound": 1 / host,
        "two_threads_us_per_doc": wall / two_docs * 1e6,
        "two_threads_docs_per_second": two_docs / wall,
        "cpu_count": os.cpu_count(),
    }
    _write(report, args.out)
    return report


def _tokens_per_doc(spec: Any, folder: str) -> float:
    import pandas as pd

    frame = pd.read_parquet(os.path.join(folder, sorted(os.listdir(folder))[0]))
    return float(spec.prepare_inputs(frame)["tokens"].mean())


def _write(report: dict, stem: str) -> None:
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(f"{stem}.json", "w") as f:
        json.dump(report, f, indent=1)
    us = report["microseconds_per_doc"]
    lines = [
        "# Feed benchmark: the model worker's host time per document (null model)",
        "",
        f"`python -m benchmarks.feed --docs {report['docs']}`: {report['docs']:,} documents "
        f"of {report['tokens_per_doc']:.0f} tokens, partitions of "
        f"{report['partition_rows']:,}, batches of up to {report['batch_size']} rows / "
        f"{report['token_budget']:,} tokens, {report['cpu_count']} cores.",
        "",
        "| step | where | microseconds per document |",
        "|---|---|---|",
        f"| tokenise (prepare) | CPU pool | {us['prepare']:.2f} |",
        f"| pickle + unpickle the prepared partition | both ends of the transfer | "
        f"{us['transfer']:.2f} |",
        f"| infer stage, null model (collate, sort, pad, outputs) | model worker | "
        f"{us['infer']:.2f} |",
        f"| write (Parquet file) | model worker | {us['write']:.2f} |",
        f"| **model worker host time** | | **{report['model_worker_host_us_per_doc']:.2f}** |",
        "",
        f"Bound: {report['docs_per_second_bound']:,.0f} documents/s per model worker thread; "
        f"prepared partition {report['prepared_bytes_per_doc']:.0f} bytes per document.",
        "",
        f"Two task threads (the model worker's default on a GPU; one writes while the other "
        f"infers): {report['two_threads_us_per_doc']:.2f} us per document wall, "
        f"{report['two_threads_docs_per_second']:,.0f} documents/s.",
    ]
    with open(f"{stem}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
