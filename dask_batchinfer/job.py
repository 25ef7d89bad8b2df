"""``run_job()``: read, preprocess, infer, write partitioned Parquet, commit.

Each input partition becomes two tasks: its read (from the input's own graph)
and one ``process`` task that preprocesses, runs the model and writes and
commits the partition's output file(s) from the worker. Only a bounded window
of partitions is in flight at once, so memory stays flat however large the
input; nothing but small per-partition statistics returns to the client.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
from dask.optimization import cull

from dask_batchinfer import _config
from dask_batchinfer.cache import get_model, model_stats
from dask_batchinfer.cluster import connect
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.parquet import STAGING, output_schema, write_partition
from dask_batchinfer.io.read import read_parquet_files
from dask_batchinfer.model import ModelSpec
from dask_batchinfer.predict import Preprocess, check_keep, check_spec, infer_partition, output_meta
from dask_batchinfer.report import JobResult

__all__ = ["run_job"]

MANIFEST = "_SUCCESS"


def _open_source(source: Any, storage_options: Mapping[str, Any]):
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        return source, None
    if isinstance(source, (str, os.PathLike)):
        return read_parquet_files(os.fspath(source), storage_options)
    raise InputError(
        f"source must be a dask DataFrame or a Parquet path (local or s3://), got "
        f"{type(source).__name__}"
    )


def _check_partition_on(
    partition_on: Sequence[str] | str | None, columns: Sequence[str], model: ModelSpec
) -> tuple[str, ...]:
    if partition_on is None:
        return ()
    if isinstance(partition_on, str):
        partition_on = [partition_on]
    missing = [c for c in partition_on if c not in columns and c not in model.outputs]
    if missing:
        raise InputError(
            f"partition_on={list(partition_on)!r}: column(s) {missing} are neither input "
            f"columns ({list(columns)}) nor model outputs ({list(model.outputs)})"
        )
    return tuple(partition_on)


def _warm_up(client: Any, model: ModelSpec) -> None:
    """Load the model on every worker in parallel before any input is read."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    futures = [
        client.submit(
            _load_model,
            model,
            workers=[w],
            allow_other_workers=False,
            pure=False,
            key=f"batchinfer-load-{uuid.uuid4().hex[:8]}",
        )
        for w in workers
    ]
    client.gather(futures)


def _load_model(model: ModelSpec) -> None:
    get_model(model)


def _process_partition(
    frame: pd.DataFrame,
    *,
    number: int,
    source: str | None,
    model: ModelSpec,
    preprocess: Preprocess | None,
    keep: tuple[str, ...],
    partition_on: tuple[str, ...],
    schema: pa.Schema,
    output: str,
    storage_options: Mapping[str, Any],
) -> dict[str, Any]:
    """Preprocess, infer, write and commit one partition; return its statistics."""
    from distributed import get_worker

    start = time.perf_counter()
    result = infer_partition(
        frame, model=model, preprocess=preprocess, keep=keep, number=number, source=source
    )
    inferred = time.perf_counter()
    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    files = write_partition(
        result, fs=fs, root=root, number=number, schema=schema, partition_on=partition_on
    )
    return {
        "partition": number,
        "rows_in": len(frame),
        "rows_out": len(result),
        "files": files,
        "worker": get_worker().address,
        "infer_seconds": inferred - start,
        "write_seconds": time.perf_counter() - inferred,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_job(
    source: Any,
    model: ModelSpec,
    *,
    output: str,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] | str | None = None,
    partition_on: Sequence[str] | str | None = None,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> JobResult:
    """Run a batch inference job and write the results as partitioned Parquet.

    Parameters
    ----------
    source : dask.dataframe.DataFrame or str
        The input: a Dask DataFrame, or a Parquet file or folder (local path or
        ``s3://bucket/prefix``), read as one partition per file.
    model : ModelSpec
        The model recipe, loaded once per worker process.
    output : str
        Folder to write to (local path or ``s3://``). Each input partition ``i``
        becomes ``part-0000i.parquet`` (inside hive folders with
        ``partition_on``), and ``_SUCCESS`` is written last.
    preprocess : callable, optional
        ``preprocess(partition) -> DataFrame``, run on the workers before the model.
    keep : list of str, optional
        Input columns written beside the predictions (ids, keys).
    partition_on : list of str, optional
        Columns (input or output) to split the output into hive folders
        (``country=FR/``). Input columns named here are kept automatically.
    client : distributed.Client or str, optional
        The cluster to use, or a scheduler address. Default: the current
        client if there is one, else a :func:`local_cluster` for this job.
    storage_options : dict, optional
        fsspec options for the input and output (e.g. ``endpoint_url``).

    Returns
    -------
    JobResult
        Rows in and out, wall time, model load time per worker, rows per second.

    Raises
    ------
    InputError
        Before any task runs, for a bad argument or missing column.
    ModelLoadError
        When the model cannot load on a worker, before any input is read.
    PartitionError
        When a partition fails; partitions committed so far stay, ``_SUCCESS``
        is not written.

    Examples
    --------
    >>> result = dbi.run_job("s3://shop/features/", spec, output="s3://shop/scores/",
    ...                      keep=["user_id"])  # doctest: +SKIP
    >>> result.rows_per_second                   # doctest: +SKIP
    41234.5
    """
    wall_start = time.perf_counter()
    started = _now()
    model = check_spec(model)
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise InputError(f"output must be a local path or URL, got {output!r}")
    output = os.fspath(output)
    storage_options = dict(storage_options or {})
    ddf, sources = _open_source(source, storage_options)
    keep = check_keep(keep, list(ddf.columns))
    partition_on = _check_partition_on(partition_on, list(ddf.columns), model)
    keep = keep + tuple(c for c in partition_on if c in ddf.columns and c not in keep)
    if preprocess is None:
        missing = [c for c in model.input_columns if c not in ddf.columns]
        if missing:
            raise InputError(
                f"model {model.name!r} needs input column(s) {missing}; the input has "
                f"{list(ddf.columns)}. Rename the columns or pass preprocess= to build them"
            )
    schema = output_schema(output_meta(ddf._meta, model, keep))
    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    fs.makedirs(root, exist_ok=True)

    ddf = ddf.optimize()
    graph = dict(ddf.__dask_graph__())
    keys = ddf.__dask_keys__()
    job_id = uuid.uuid4().hex[:8]
    stats: list[dict[str, Any]] = []
    with connect(client) as c:
        from distributed import as_completed

        _warm_up(c, model)
        threads = sum(w["nthreads"] for w in c.scheduler_info(n_workers=-1)["workers"].values())
        window = max(2, int(_config.get("inflight-per-thread")) * threads)
        pending = as_completed(loop=c.loop)
        todo = iter(enumerate(keys))

        def submit_next() -> None:
            item = next(todo, None)
            if item is None:
                return
            number, key = item
            read = c.get(cull(graph, [key])[0], [key], sync=False)[0]
            pending.add(
                c.submit(
                    _process_partition,
                    read,
                    number=number,
                    source=sources[number] if sources else None,
                    model=model,
                    preprocess=preprocess,
                    keep=keep,
                    partition_on=partition_on,
                    schema=schema,
                    output=output,
                    storage_options=storage_options,
                    key=f"batchinfer-process-{job_id}-{number}",
                )
            )

        for _ in range(window):
            submit_next()
        for future in pending:
            try:
                stats.append(future.result())
            except BaseException:
                for other in list(pending.futures):
                    other.cancel()
                raise
            finally:
                future.release()
            submit_next()
        loads = model_stats(c, model)

    files = sorted(
        (
            {"path": path, "rows": rows, "partition": s["partition"]}
            for s in stats
            for path, rows in s["files"]
        ),
        key=lambda f: (f["partition"], f["path"]),
    )
    result = JobResult(
        output=output,
        model=model.name or "",
        partitions=len(keys),
        rows_in=sum(s["rows_in"] for s in stats),
        rows_out=sum(s["rows_out"] for s in stats),
        wall_seconds=0.0,
        model_load_seconds={w: s["load_seconds"] for w, s in loads.items() if s},
        model_loads={w: s["loads"] for w, s in loads.items() if s},
        files=files,
        infer_seconds=sum(s["infer_seconds"] for s in stats),
        write_seconds=sum(s["write_seconds"] for s in stats),
        started=started,
    )
    _write_manifest(fs, root, result, model)
    result.finished = _now()
    result.wall_seconds = time.perf_counter() - wall_start
    return result


def _write_manifest(
    fs: fsspec.AbstractFileSystem, root: str, result: JobResult, model: ModelSpec
) -> None:
    from dask_batchinfer import __version__

    manifest = {
        "version": __version__,
        "model": model.name,
        "model_token": model.token,
        "started": result.started,
        "finished": _now(),
        "partitions": result.partitions,
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "files": result.files,
    }
    fs.makedirs(posixpath.join(root, STAGING), exist_ok=True)
    staged = posixpath.join(root, STAGING, f"{uuid.uuid4().hex}-{MANIFEST}")
    with fs.open(staged, "w") as f:
        json.dump(manifest, f, indent=1)
    fs.mv(staged, posixpath.join(root, MANIFEST))
    try:
        fs.rmdir(posixpath.join(root, STAGING))  # empty once every attempt committed
    except OSError:
        pass  # a straggling attempt still writes there; readers skip "_" folders anyway
