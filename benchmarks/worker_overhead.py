"""A partition's fixed cost on the worker, beyond its read (#27): the stages of a null model.

    python -m benchmarks.worker_overhead

1,000 partitions of 100 rows (row groups of one file) through ``process_task``
in this process, one thread, no cluster: the read task's time and each
stage's (``preprocess``, ``infer``, ``write`` with its marker) per partition,
after 50 partitions of warm-up. With a null model (one float per row) every
stage is overhead; the read is the work. Prints one line and writes
``benchmarks/results/worker-overhead.json``.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.optimization import cull

import dask_batchinfer as dbi
from dask_batchinfer.io.commit import Partition
from dask_batchinfer.job.options import JobOptions
from dask_batchinfer.job.prepare import prepare
from dask_batchinfer.pipeline import stages

STAGES = ("preprocess_stage", "infer_stage", "write_stage")


def null(batch: pd.DataFrame) -> np.ndarray:
    return np.zeros(len(batch), np.float32)


def main(partitions: int = 1000, warm: int = 50) -> dict:
    spec = dbi.from_callable(null, input_columns=["x"], outputs={"y": "float32"})
    folder = tempfile.mkdtemp(prefix="bench-overhead-")
    table = pa.table({"id": np.arange(partitions * 100), "x": np.random.random(partitions * 100)})
    pq.write_table(table, os.path.join(folder, "in.parquet"), row_group_size=100)
    with dask.config.set({"batchinfer.partition-size": "100 rows"}):
        options = JobOptions.build(output=os.path.join(folder, "out"))
        job = prepare(os.path.join(folder, "in.parquet"), spec, None, options)
        ddf = job.ddf.optimize()
    settings = job.settings("overhead")
    os.makedirs(os.path.join(folder, "out"), exist_ok=True)  # as the client does
    graph, keys = dict(ddf.__dask_graph__()), ddf.__dask_keys__()
    spent: collections.Counter = collections.Counter()
    for name in STAGES:
        setattr(stages, name, _timed(getattr(stages, name), name, spent))
    read = 0.0
    start = 0.0
    for i, key in enumerate(keys):
        if i == warm:
            spent.clear()
            read, start = 0.0, time.perf_counter()
        began = time.perf_counter()
        frame = cull(graph, [key])[0][key]()  # the read task, as the worker runs it
        read += time.perf_counter() - began
        stages.process_task(frame, Partition(i, f"p{i}", None, "fp"), settings)
    n = partitions - warm
    total = (time.perf_counter() - start) / n * 1e3
    report = {
        "partitions": n,
        "rows": 100,
        "read_task_ms": round(read / n * 1e3, 3),
        "stages_ms": {name: round(spent[name] / n * 1e3, 3) for name in STAGES},
        "total_ms": round(total, 3),
        "overhead_ms": round(total - read / n * 1e3, 3),
    }
    print(json.dumps(report))
    results = os.path.join(os.path.dirname(__file__), "results", "worker-overhead.json")
    with open(results, "w") as f:
        json.dump(report, f, indent=1)
    return report


def _timed(function, name: str, spent: collections.Counter):  # noqa: ANN001, ANN202
    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - began

    return timed


if __name__ == "__main__":
    main()
