"""One benchmark variant in its own process; prints one JSON line.

    python -m benchmarks.variant VARIANT WORKLOAD INPUT OUTPUT

Variants:

- ``ours``: ``dask_batchinfer.run_job`` with its default local cluster.
- ``l1``: a careful single-process loop (pyarrow read, numpy, torch, pyarrow write);
  for text (``hand_loop="encode"``) sentence-transformers ``encode(texts,
  batch_size=64)`` per file, which sorts the file's texts by length.
- ``l1_input_order``: the loop in batches of the spec's size in input order (for
  text, the naive loop; the same as ``l1`` for the other workloads).
- ``l0``: the limit: the same model on all rows already in memory as one
  contiguous tensor, best batch size and thread count (loading is not timed).
- ``naive``: one row per call on a 1,000-row sample, extrapolated.
- ``ray``: Ray Data ``read_parquet`` -> ``map_batches`` with an actor pool -> ``write_parquet``.
- ``l1rg``: the hand loop a row group at a time (each file's row groups in turn,
  one output file per row group): bounded memory whatever the file sizes.
- ``daft``: Daft ``read_parquet`` -> a ``@daft.cls`` batch method running the
  torch model -> ``write_parquet``, with Daft's default (native, local) runner.

The image suite's variants (workload ``W3-png``) are in ``benchmarks/images.py``.

Times are seconds from this process's start (``cold``), so imports, cluster
start and model load count, as a user waiting for the output sees them.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import psutil

STARTED = psutil.Process().create_time()


def _since_start() -> float:
    return time.time() - STARTED


def _files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.parquet")))


def ours(workload, input_dir: str, output_dir: str) -> dict:
    import dask_batchinfer as dbi

    imported = _since_start()
    result = dbi.run_job(input_dir, workload.spec(), output=output_dir, keep=[workload.id_column])
    return {
        "rows": result.rows_out,
        "import_seconds": imported,
        "startup_seconds": result.startup_seconds,
        "first_commit_seconds": result.first_commit_seconds,
        "model_loads": sum(result.model_loads.values()),
        "model_workers": len(result.model_loads),
    }


def _table(workload, frame, outputs):
    import numpy as np
    import pyarrow as pa

    from benchmarks.workloads import fixed_size_lists

    outputs = np.asarray(outputs)
    columns = {workload.id_column: pa.array(frame[workload.id_column].to_numpy())}
    if outputs.ndim == 1:
        columns["out"] = pa.array(outputs)
    else:
        columns["out"] = fixed_size_lists(outputs)
    return pa.table(columns)


def _hand_loop_setup(workload, output_dir: str):
    """What both hand loops do first: all cores' threads for torch, the model, the folder."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(output_dir, exist_ok=True)
    return workload.model()


def _predict_write(workload, model, frame, batch_size: int, path: str) -> None:
    """The hand loops' step: the model over ``frame`` in batches, one Parquet file."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    inputs = workload.to_inputs(frame)
    outs = []
    for start in range(0, len(frame), batch_size):
        out = workload.forward(model, inputs[start : start + batch_size])
        outs.append(out.numpy() if isinstance(out, torch.Tensor) else out)
    pq.write_table(_table(workload, frame, np.concatenate(outs)), path)


def l1(workload, input_dir: str, output_dir: str) -> dict:
    if workload.hand_loop == "encode":
        return _l1_encode(workload, input_dir, output_dir)
    return l1_input_order(workload, input_dir, output_dir)


def _l1_encode(workload, input_dir: str, output_dir: str) -> dict:
    """What a careful engineer writes with sentence-transformers: encode per file."""
    import pyarrow.parquet as pq

    model = _hand_loop_setup(workload, output_dir)
    rows = 0
    first = None
    for i, path in enumerate(_files(input_dir)):
        frame = pq.read_table(path).to_pandas()
        vectors = model.encode(frame["text"].tolist(), batch_size=64, convert_to_numpy=True,
                               normalize_embeddings=True, show_progress_bar=False)  # fmt: skip
        pq.write_table(_table(workload, frame, vectors),
                       os.path.join(output_dir, f"part-{i:05d}.parquet"))  # fmt: skip
        rows += len(frame)
        first = first or _since_start()
    return {"rows": rows, "first_commit_seconds": first, "model_loads": 1}


def l1_input_order(workload, input_dir: str, output_dir: str) -> dict:
    import pyarrow.parquet as pq
    import torch

    batch_size = workload.spec().batch_size  # the same batch size as ours
    model = _hand_loop_setup(workload, output_dir)
    rows = 0
    first = None
    with torch.inference_mode():
        for i, path in enumerate(_files(input_dir)):
            frame = pq.read_table(path).to_pandas()
            _predict_write(workload, model, frame, batch_size,
                           os.path.join(output_dir, f"part-{i:05d}.parquet"))  # fmt: skip
            rows += len(frame)
            first = first or _since_start()
    return {"rows": rows, "first_commit_seconds": first, "model_loads": 1}


def _load_all(workload, input_dir: str):
    import pandas as pd
    import pyarrow.parquet as pq

    return pd.concat([pq.read_table(p).to_pandas() for p in _files(input_dir)], ignore_index=True)


def l0(workload, input_dir: str, output_dir: str) -> dict:
    import numpy as np
    import torch

    frame = _load_all(workload, input_dir)
    inputs = workload.to_inputs(frame)
    model = workload.model()
    best = {}
    text = isinstance(inputs, list)
    if text:  # the limit batches texts of similar length together (least padding)
        order = np.argsort([len(t) for t in inputs], kind="stable")
        frame = frame.iloc[order].reset_index(drop=True)
        inputs = [inputs[i] for i in order]
    images = not text and inputs.dim() == 4
    sizes = (64, 256) if text else (256, 1024) if images else (4096, 16384)
    thread_counts = [os.cpu_count() or 1] if text else sorted({1, os.cpu_count() or 1})
    with torch.inference_mode():
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch_size in sizes:
                workload.forward(model, inputs[:batch_size])  # warm-up
                start = time.perf_counter()
                outs = [workload.forward(model, inputs[i : i + batch_size])
                        for i in range(0, len(frame), batch_size)]  # fmt: skip
                best[(threads, batch_size)] = time.perf_counter() - start
    threads, batch_size = min(best, key=best.get)
    out = np.concatenate([o.numpy() if isinstance(o, torch.Tensor) else o for o in outs])
    np.save(os.path.join(output_dir + ".npy"), out)
    np.save(os.path.join(output_dir + ".ids.npy"), frame[workload.id_column].to_numpy())
    return {
        "rows": len(frame),
        "compute_seconds": best[(threads, batch_size)],
        "best_threads": threads,
        "best_batch_size": batch_size,
    }


def naive(workload, input_dir: str, output_dir: str, sample: int = 1000) -> dict:
    import pyarrow.parquet as pq
    import torch

    frame = pq.read_table(_files(input_dir)[0]).to_pandas().iloc[:sample]
    model = workload.model()
    inputs = workload.to_inputs(frame)
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(len(frame)):
            workload.forward(model, inputs[i : i + 1])
        seconds = time.perf_counter() - start
    return {"rows": len(frame), "compute_seconds": seconds, "per_row_seconds": seconds / len(frame)}


def ray(workload, input_dir: str, output_dir: str) -> dict:
    import numpy as np
    import ray as ray_
    import torch

    ray_.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    imported = _since_start()

    class Predictor:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.model = workload.model()

        def __call__(self, batch):
            import pandas as pd

            frame = pd.DataFrame(batch) if not isinstance(batch, pd.DataFrame) else batch
            with torch.inference_mode():
                out = workload.forward(self.model, workload.to_inputs(frame))
            out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
            return {workload.id_column: frame[workload.id_column].to_numpy(),
                    "out": out if out.ndim == 1 else list(out)}  # fmt: skip

    dataset = ray_.data.read_parquet(input_dir)
    predictions = dataset.map_batches(
        Predictor, batch_size=4096 if workload.rows_per_file > 10_000 else 256,
        batch_format="pandas", concurrency=os.cpu_count() or 1,
        num_cpus=0.5,  # whole-CPU actors on every core would starve the read tasks (deadlock)
    )  # fmt: skip
    predictions.write_parquet(output_dir)
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(p).num_rows for p in glob.glob(f"{output_dir}/*.parquet"))
    ray_.shutdown()
    return {"rows": rows, "import_seconds": imported, "model_loads": os.cpu_count()}


def l1rg(workload, input_dir: str, output_dir: str) -> dict:
    import pyarrow.parquet as pq
    import torch

    batch_size = workload.spec().batch_size
    columns = [workload.id_column, *workload.spec().input_columns]
    model = _hand_loop_setup(workload, output_dir)
    rows = 0
    first = None
    with torch.inference_mode():
        for i, path in enumerate(_files(input_dir)):
            source = pq.ParquetFile(path)
            for group in range(source.num_row_groups):
                frame = source.read_row_group(group, columns=columns).to_pandas()
                name = f"part-{i:05d}-{group:05d}.parquet"
                _predict_write(workload, model, frame, batch_size, os.path.join(output_dir, name))
                rows += len(frame)
                first = first or _since_start()
    return {"rows": rows, "first_commit_seconds": first, "model_loads": 1}


def daft(workload, input_dir: str, output_dir: str) -> dict:
    import daft as daft_
    import numpy as np
    import torch

    imported = _since_start()
    features = list(workload.spec().input_columns)

    @daft_.cls
    class Scorer:
        def __init__(self) -> None:
            self.model = workload.model()

        @daft_.method.batch(return_dtype=daft_.DataType.float32(),
                            batch_size=workload.spec().batch_size)  # fmt: skip
        def __call__(self, *columns: daft_.Series) -> np.ndarray:
            x = np.column_stack([c.to_arrow().to_numpy(zero_copy_only=False) for c in columns])
            with torch.inference_mode():
                return self.model(torch.from_numpy(x)).numpy()

    @daft_.cls
    class Encoder:  # text: the careful loop's encode(batch_size=64) inside Daft's UDF
        def __init__(self) -> None:
            self.model = workload.model()

        @daft_.method.batch(return_dtype=daft_.DataType.fixed_size_list(
            daft_.DataType.float32(), 384), batch_size=64)  # fmt: skip
        def __call__(self, texts: daft_.Series) -> np.ndarray:
            return self.model.encode(texts.to_pylist(), batch_size=64, convert_to_numpy=True,
                                     normalize_embeddings=True,
                                     show_progress_bar=False)  # fmt: skip

    udf = Encoder() if workload.hand_loop == "encode" else Scorer()
    frame = daft_.read_parquet(os.path.join(input_dir, "*.parquet"))
    frame = frame.select(workload.id_column, udf(*[daft_.col(c) for c in features]).alias("out"))
    written = frame.write_parquet(output_dir).to_pydict()
    import pyarrow.parquet as pq

    paths = written.get("path") or glob.glob(f"{output_dir}/**/*.parquet", recursive=True)
    rows = sum(pq.read_metadata(p).num_rows for p in paths)
    return {"rows": rows, "import_seconds": imported, "model_loads": None}


def main() -> None:
    variant, workload_name, input_dir, output_dir = sys.argv[1:5]
    if workload_name == "W3-png":  # the image suite: benchmarks/images.py
        from benchmarks.images import VARIANTS

        result = VARIANTS[variant](input_dir, output_dir)
    else:
        from benchmarks.workloads import WORKLOADS

        result = globals()[variant](WORKLOADS[workload_name], input_dir, output_dir)
    result["cold_seconds"] = _since_start()
    print("RESULT " + json.dumps(result), flush=True)
    if variant == "daft":
        # Daft 0.6.14's native threads can abort interpreter shutdown ("Fatal Python
        # error: PyGILState_Release ... finalizing") after the output is written:
        # leave without finalizing, as the time to here is what is measured
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
