"""``run_job()``: read, preprocess, infer, write partitioned Parquet, commit.

Each input partition to run becomes two tasks: its read (from the input's own
graph) and one ``process`` task that preprocesses, runs the model, writes its
file(s) and commits the partition's marker from the worker. Only a bounded
window of partitions is in flight at once, so memory stays flat however large
the input; nothing but small per-partition statistics returns to the client.

Partitions already committed with the same fingerprint are skipped (resume,
incremental runs); see :mod:`dask_batchinfer.io.commit` for the protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
from dask.base import tokenize
from dask.optimization import cull

from dask_batchinfer import _config, secrets, trace
from dask_batchinfer.batching import BatchStats
from dask_batchinfer.cache import model_stats
from dask_batchinfer.cluster import Pools, connect, detect_pools
from dask_batchinfer.errors import BadRowsError, InputError
from dask_batchinfer.fingerprint import code_token, partition_slug
from dask_batchinfer.io.commit import (
    MANIFEST,
    STAGING,
    OutputState,
    Partition,
    collect_garbage,
    ensure_dir,
    load_state,
    write_bytes,
    write_json,
    write_marker,
)
from dask_batchinfer.io.parquet import output_schema, write_errors, write_partition
from dask_batchinfer.io.read import READ_TIMES, InputFile, read_parquet_files
from dask_batchinfer.io.retry import RetryStats, retry
from dask_batchinfer.model import ModelSpec
from dask_batchinfer.plugins import ModelWarmup
from dask_batchinfer.predict import (
    Prepared,
    Preprocess,
    check_inputs,
    check_keep,
    check_spec,
    infer_features,
    output_meta,
    preprocess_partition,
)
from dask_batchinfer.progress import make_progress, resolve_mode
from dask_batchinfer.report import JobResult

__all__ = ["MODES", "run_job", "save_report"]

logger = logging.getLogger(__name__)

MODES = ("resume", "overwrite", "error")
REPORT_JSON = "_report.json"
REPORT_HTML = "_report.html"


def _open_source(source: Any, storage_options: Mapping[str, Any], task_options: Mapping[str, Any]):
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        return source, None
    if isinstance(source, (str, os.PathLike)):
        return read_parquet_files(os.fspath(source), storage_options, task_options=task_options)
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


def _check_not_nested(source: Any, output: str, storage_options: Mapping[str, Any]) -> None:
    """Refuse an output inside the input, or an input inside the output."""
    if not isinstance(source, (str, os.PathLike)):
        return
    in_fs, in_root = fsspec.core.url_to_fs(os.fspath(source), **storage_options)
    out_fs, out_root = fsspec.core.url_to_fs(output, **storage_options)
    if in_fs.protocol != out_fs.protocol:
        return
    a, b = in_root.rstrip("/") + "/", out_root.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise InputError(
            f"output {output!r} and input {os.fspath(source)!r} overlap; the job deletes stale "
            f"files under its output, so write to a folder outside the input"
        )


def _partitions(
    ddf: Any, groups: list[list[InputFile]] | None, job_token: str, generation: str
) -> list[Partition]:
    if groups is not None:
        partitions = []
        for i, group in enumerate(groups):
            first, last = group[0], group[-1]
            slug = partition_slug(first.relpath)
            source = first.path
            if len(group) > 1:
                slug = f"{slug}--{partition_slug(last.relpath)}"
                source = f"{first.path} .. {last.path} ({len(group)} files)"
            identity = [(f.relpath, f.size, f.version) for f in group]
            partitions.append(Partition(i, slug, source, tokenize(identity, job_token), generation))
        return partitions
    return [
        Partition(
            number=i,
            slug=f"{i:05d}",
            source=None,
            fingerprint=tokenize(key, job_token),
            generation=generation,
        )
        for i, key in enumerate(ddf.__dask_keys__())
    ]


def _warm_up(client: Any, model: ModelSpec, pools: Pools) -> None:
    """Load the model on every model worker in parallel, before any input is read.

    A worker plugin, so workers that join later load the model on arrival.
    """
    plugin = ModelWarmup(model, resource=pools.model)
    try:
        client.register_plugin(plugin)
    except BaseException:
        client.unregister_worker_plugin(plugin.name)
        raise


def _preprocess_stage(
    frame: pd.DataFrame,
    *,
    partition: Partition,
    preprocess: Preprocess | None,
    keep: tuple[str, ...],
    job: str,
    on_error: str = "raise",
) -> Prepared:
    """The CPU stage: preprocess one partition."""
    read = frame.attrs.get(READ_TIMES)
    if read:
        where = {"worker": read[2]} if len(read) > 2 and read[2] else {}
        trace.record(job, "read", partition.number, read[0], end=read[1], rows=len(frame), **where)
    start = time.time()
    prepared = preprocess_partition(
        frame,
        preprocess=preprocess,
        keep=keep,
        number=partition.number,
        source=partition.source,
        on_error=on_error,
    )
    trace.record(job, "preprocess", partition.number, start, rows=len(frame))
    prepared.read_seconds = read[1] - read[0] if read else 0.0
    prepared.preprocess_seconds = time.time() - start
    return prepared


def _infer_stage(
    prepared: Prepared,
    *,
    partition: Partition,
    model: ModelSpec,
    partition_on: tuple[str, ...],
    schema: pa.Schema,
    output: str,
    storage_options: Mapping[str, Any],
    job: str,
    on_error: str = "raise",
) -> dict[str, Any]:
    """The model stage: infer, write and commit one partition; return its statistics."""
    from distributed import get_worker

    rows_in = prepared.rows_in
    start = time.time()
    batch_stats = BatchStats()
    result, bad = infer_features(
        prepared.features,
        prepared.kept,
        model=model,
        number=partition.number,
        source=partition.source,
        stats=batch_stats,
        on_error=on_error,
        positions=prepared.positions,
    )
    if len(prepared.bad):
        bad = pd.concat([prepared.bad, bad]) if len(bad) else prepared.bad
    trace.record(job, "infer", partition.number, start, rows=len(result))
    inferred = time.time()
    fs, root = fsspec.core.url_to_fs(output, **secrets.resolve(storage_options))
    retries = RetryStats()
    files = write_partition(
        result,
        fs=fs,
        root=root,
        stem=partition.stem,
        schema=schema,
        partition_on=partition_on,
        stats=retries,
    )
    errors = write_errors(bad, fs=fs, root=root, stem=partition.stem, stats=retries)
    write_marker(fs, root, partition, files=files, rows_in=rows_in, errors=errors, stats=retries)
    trace.record(job, "write", partition.number, inferred, files=len(files))
    return {
        "slug": partition.slug,
        "partition": partition.number,
        "rows_in": rows_in,
        "rows_out": len(result),
        "files": files,
        "errors": [path for path, _ in errors],
        "rows_quarantined": len(bad),
        "worker": get_worker().address,
        "read_seconds": prepared.read_seconds,
        "preprocess_seconds": prepared.preprocess_seconds,
        "infer_seconds": inferred - start,
        "write_seconds": time.time() - inferred,
        "retries": retries.retries,
        "batch": dataclasses.asdict(batch_stats),
    }


def _process_partition(
    frame: pd.DataFrame,
    *,
    partition: Partition,
    preprocess: Preprocess | None,
    keep: tuple[str, ...],
    job: str,
    **infer_options: Any,
) -> dict[str, Any]:
    """Both stages in one task, for a single-pool cluster (no transfer between them)."""
    prepared = _preprocess_stage(
        frame,
        partition=partition,
        preprocess=preprocess,
        keep=keep,
        job=job,
        on_error=infer_options.get("on_error", "raise"),
    )
    return _infer_stage(prepared, partition=partition, job=job, **infer_options)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _redacting(function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BaseException as err:
            secrets.redact_exception(err)
            raise

    return wrapper


@_redacting
def run_job(
    source: Any,
    model: ModelSpec,
    *,
    output: str,
    preprocess: Preprocess | None = None,
    keep: Sequence[str] | str | None = None,
    partition_on: Sequence[str] | str | None = None,
    mode: str = "resume",
    client: Any = None,
    pools: Mapping[str, str] | bool | None = None,
    on_error: str = "raise",
    max_bad_rows: int | float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | str | None = None,
) -> JobResult:
    """Run a batch inference job and write the results as partitioned Parquet, exactly once.

    Parameters
    ----------
    source : dask.dataframe.DataFrame or str
        The input: a Dask DataFrame, or a Parquet file or folder (local path or
        ``s3://bucket/prefix``), read as one partition per file.
    model : ModelSpec
        The model recipe, loaded once per worker process.
    output : str
        Folder to write to (local path or ``s3://``). Each input partition
        becomes ``part-<name>-<id>.parquet`` (inside hive folders with
        ``partition_on``) plus a marker in ``_committed/``; ``_SUCCESS`` is
        written when all are committed. See the README's "Output layout".
    preprocess : callable, optional
        ``preprocess(partition) -> DataFrame``, run on the workers before the model.
    keep : list of str, optional
        Input columns written beside the predictions (ids, keys).
    partition_on : list of str, optional
        Columns (input or output) to split the output into hive folders
        (``country=FR/``). Input columns named here are kept automatically.
    mode : {"resume", "overwrite", "error"}, default "resume"
        ``"resume"`` skips partitions already committed with the same
        fingerprint (input file, model, preprocessing, columns, package
        version) and runs the rest; a finished job returns at once, writing
        nothing. ``"overwrite"`` recomputes every partition under new file
        names: the previous dataset stays complete until the new ``_SUCCESS``
        is written, then its files are deleted. ``"error"`` refuses an output
        folder that exists and is not empty.
    client : distributed.Client or str, optional
        The cluster to use, or a scheduler address. Default: the current
        client if there is one, else a :func:`local_cluster` for this job.
    pools : mapping or bool, optional
        Which workers do what. Default: when workers carry the resources
        ``batchinfer.pools.preprocess`` and ``batchinfer.pools.model``
        ("preprocess", "model"), reading and preprocessing run only on the
        first pool and inference and writing only on the second, with the
        CPU stage at most ``prefetch-per-model-thread`` x model threads
        partitions ahead; without such resources every worker does both.
        ``{"preprocess": NAME, "model": NAME}`` names other resources (both
        pools must exist); ``False`` ignores resources.
    on_error : {"raise", "quarantine"}, default "raise"
        What a row the model fails on does. ``"raise"`` fails the job with a
        :class:`PartitionError` naming the file, the partition, the row and
        its ``keep`` ids, and the cause. ``"quarantine"`` finds the failing
        rows by halving the failing batch, writes them with their ``keep``
        columns, ``row``, ``error_type`` and ``error`` to
        ``_errors/<partition>.parquet`` beside the output, and goes on. Rows
        out + rows quarantined = rows in.
    max_bad_rows : int or float, optional
        With quarantine: fail with :class:`BadRowsError` (no ``_SUCCESS``)
        once more rows than this (a count), or more than this fraction of the
        rows in (a float below 1, checked at the end), were quarantined.
    storage_options : dict, optional
        fsspec options for the input and output (e.g. ``endpoint_url``).
        Credentials in them (``key``, ``secret``, ``token``, ...) reach the
        workers once, through a worker plugin, and never travel in the task
        graph (see :mod:`dask_batchinfer.secrets`); better still, leave them
        to the workers' environment or AWS profiles.
    progress : bool or {"bar", "log"}, optional
        Show progress: partitions committed of total, rows/s, ETA and time
        per stage. Default (``batchinfer.progress: auto``): a widget in
        Jupyter, a bar in a terminal, a log line every 10% elsewhere (CI
        logs); ``False`` for none.

    Returns
    -------
    JobResult
        Rows in and out, partitions run/skipped/invalidated, retries, wall
        time split by phase and stage, model load time per worker, rows per
        second, the stage timeline. In a notebook it renders as an HTML
        report; ``result.plot()`` draws the timeline. The same report is
        saved beside the output as ``_report.json`` and ``_report.html``
        (also for a failed job, whose exception carries it as ``err.result``).

    Raises
    ------
    InputError
        Before any task runs, for a bad argument or missing column.
    ModelLoadError
        When the model cannot load on a worker, before any input is read.
    PartitionError
        When a partition fails; committed partitions stay (a re-run resumes),
        ``_SUCCESS`` is not written.

    Examples
    --------
    >>> result = dbi.run_job("s3://shop/features/", spec, output="s3://shop/scores/",
    ...                      keep=["user_id"])  # doctest: +SKIP
    >>> result.partitions_run, result.partitions_skipped  # doctest: +SKIP
    (1, 364)
    """
    from dask_batchinfer import __version__

    wall_start = time.perf_counter()
    started = _now()
    model = check_spec(model)
    if mode not in MODES:
        raise InputError(f"mode={mode!r}: expected one of {MODES}")
    if on_error not in ("raise", "quarantine"):
        raise InputError(f"on_error={on_error!r}: expected 'raise' or 'quarantine'")
    if max_bad_rows is not None and (
        isinstance(max_bad_rows, bool) or not isinstance(max_bad_rows, (int, float))
        or max_bad_rows < 0 or (isinstance(max_bad_rows, float) and max_bad_rows >= 1)
    ):  # fmt: skip
        raise InputError(
            f"max_bad_rows={max_bad_rows!r}: expected a count (int >= 0) or a fraction "
            f"(float in [0, 1))"
        )
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise InputError(f"output must be a local path or URL, got {output!r}")
    output = os.fspath(output)
    progress = resolve_mode(progress)  # validated before anything runs
    storage_options = dict(storage_options or {})
    # Credentials reach the workers once, in a plugin; tasks carry a reference.
    public_options, secret_options = secrets.split(storage_options)
    secrets.remember(secret_options)
    credentials = secrets.new_reference() if secret_options else None
    task_options = public_options | ({secrets.REFERENCE: credentials} if credentials else {})
    _check_not_nested(source, output, storage_options)
    ddf, groups = _open_source(source, storage_options, task_options)
    keep = check_keep(keep, list(ddf.columns))
    partition_on = _check_partition_on(partition_on, list(ddf.columns), model)
    keep = keep + tuple(c for c in partition_on if c in ddf.columns and c not in keep)
    check_inputs(model, ddf._meta, preprocess)
    schema = output_schema(output_meta(ddf._meta, model, keep))
    fs, root = fsspec.core.url_to_fs(output, **storage_options)
    root = root.rstrip("/")
    state = load_state(fs, root)
    if mode == "error" and state.exists:
        raise InputError(
            f"output {output!r} exists and is not empty (mode='error'); choose another "
            f"folder, or pass mode='resume' or mode='overwrite'"
        )

    ddf = ddf.optimize()
    job_token = tokenize(
        model.token, code_token(preprocess), keep, partition_on, schema.to_string(), __version__
    )
    generation = uuid.uuid4().hex if mode == "overwrite" else ""
    partitions = _partitions(ddf, groups, job_token, generation)
    job_fingerprint = tokenize([p.fingerprint for p in partitions])

    if mode == "resume" and _finished(state, job_fingerprint):
        manifest = state.manifest or {}
        listed = {f["path"] for f in manifest.get("files", [])}
        if state.files - listed or set(state.markers) - {p.slug for p in partitions}:
            # a later run died after committing files of its own: back to the manifest
            collect_garbage(fs, root, keep_files=listed, keep_slugs={p.slug for p in partitions},
                            state=state, keep_errors=set(manifest.get("errors", [])))  # fmt: skip
        return _result_from_manifest(state, output, model, wall_start)

    done: dict[str, dict[str, Any]] = {}
    invalidated = 0
    for p in partitions:
        marker = state.committed(p) if mode == "resume" else None
        if marker is not None:
            done[p.slug] = marker
        elif p.slug in state.markers:
            invalidated += 1
    todo = [p for p in partitions if p.slug not in done]

    stats: list[dict[str, Any]] = []
    run = _RunInfo(job=uuid.uuid4().hex[:12])
    build = functools.partial(
        _build_result, output=output, model=model, mode=mode, partitions=partitions, done=done,
        todo=todo, invalidated=invalidated, started=started, wall_start=wall_start,
        stats=stats, run=run,
    )  # fmt: skip
    if todo:
        _check_writable(fs, root, output)
        connect_start = time.perf_counter()
        try:
            with (
                connect(client) as c,
                _credentials(c, credentials, secret_options),
                _tidy_on_failure(fs, root),
            ):
                run.cluster_seconds = time.perf_counter() - connect_start
                run.dashboard_link = str(getattr(c, "dashboard_link", "") or "")
                pool = detect_pools(c, pools)
                _warm_up(c, model, pool)
                run.startup = time.perf_counter() - wall_start
                bar = make_progress(progress, total=len(todo), job=run.job,
                                    dashboard_link=run.dashboard_link)  # fmt: skip
                try:
                    _run_partitions(
                        c,
                        ddf,
                        todo,
                        pools=pool,
                        job=run.job,
                        preprocess=preprocess,
                        keep=keep,
                        infer_options={
                            "model": model,
                            "partition_on": partition_on,
                            "schema": schema,
                            "output": output,
                            "storage_options": task_options,
                            "on_error": on_error,
                        },
                        bad_rows_allowed=(
                            max_bad_rows - sum(m.get("rows_quarantined", 0) for m in done.values())
                            if isinstance(max_bad_rows, int)
                            else None
                        ),
                        stats=stats,
                        progress=bar,
                    )
                finally:
                    bar.close()
                    _gather_run_info(c, model, run)
        except Exception as err:
            _fail(err, build(), fs, root)
            raise
    result = build()
    if (
        isinstance(max_bad_rows, float)
        and result.rows_in
        and result.rows_quarantined / result.rows_in > max_bad_rows
    ):
        too_many = BadRowsError(
            f"{result.rows_quarantined} of {result.rows_in} rows quarantined "
            f"({result.rows_quarantined / result.rows_in:.2%}), more than "
            f"max_bad_rows={max_bad_rows:.2%}; see {output}/_errors/ for the rows and their errors"
        )
        _fail(too_many, result, fs, root)
        raise too_many
    manifest_retries = RetryStats()
    result.finished = _now()
    write_json(
        fs,
        root,
        MANIFEST,
        {
            "version": __version__,
            "job_fingerprint": job_fingerprint,
            "model": model.name,
            "model_token": model.token,
            "preprocess_token": code_token(preprocess),
            "input": [
                {"slug": p.slug, "source": p.source, "fingerprint": p.fingerprint}
                for p in partitions
            ],
            "started": result.started,
            "finished": result.finished,
            **result.summary(),
        }
        | {"files": result.files, "errors": result.error_files},
        manifest_retries,
    )
    result.retries += manifest_retries.retries
    result.files_removed = collect_garbage(
        fs,
        root,
        keep_files={f["path"] for f in result.files},
        keep_slugs={p.slug for p in partitions},
        state=state,
        keep_errors=set(result.error_files),
    )
    result.wall_seconds = time.perf_counter() - wall_start
    report_retries = RetryStats()
    save_report(fs, root, result, report_retries)
    result.retries += report_retries.retries  # after the fact: the saved report has one less
    return result


def _fail(err: BaseException, result: JobResult, fs: Any, root: str) -> None:
    """Mark ``result`` failed, save its report beside the output, attach it to ``err``."""
    result.status = "failed"
    result.error = secrets.redact(f"{type(err).__name__}: {err}")
    result.finished = _now()
    try:
        save_report(fs, root, result)
    except Exception:  # noqa: BLE001 - the job's own error matters more
        logger.warning("could not save the report of the failed job", exc_info=True)
    try:
        err.result = result  # type: ignore[attr-defined]
    except AttributeError:
        pass


def save_report(fs: Any, root: str, result: JobResult, stats: RetryStats | None = None) -> None:
    """Write ``_report.json`` and ``_report.html`` beside the output (atomically).

    Both start with ``_`` so that Parquet readers of the folder skip them.
    """
    write_json(fs, root, REPORT_JSON, result.to_json(), stats)
    write_bytes(fs, root, REPORT_HTML, result.to_html().encode(), stats)
    _drop_empty_staging(fs, root)


@contextlib.contextmanager
def _credentials(client: Any, name: str | None, secret: Mapping[str, Any]) -> Iterator[None]:
    if name is None:
        yield
        return
    secrets.register(client, name, secret)
    try:
        yield
    finally:
        secrets.unregister(client, name)


@contextlib.contextmanager
def _tidy_on_failure(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[None]:
    """When the job fails, remove ``_staging/`` if nothing is left in it (local disk).

    Committed partitions stay (a re-run resumes from them); a straggling task
    that still writes keeps the folder, and the next run's clean-up removes it.
    """
    try:
        yield
    except BaseException:
        _drop_empty_staging(fs, root)
        raise


def _drop_empty_staging(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Remove ``_staging/`` on local disk when it is empty (object stores have no folders)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        try:
            os.rmdir(posixpath.join(root, STAGING))
        except OSError:
            pass


def _check_writable(fs: fsspec.AbstractFileSystem, root: str, output: str) -> None:
    """Write and delete a probe, so a wrong bucket or missing permission fails before any work."""
    probe = posixpath.join(root, STAGING, f"probe-{uuid.uuid4().hex}")

    def put() -> None:
        ensure_dir(fs, posixpath.dirname(probe))
        fs.pipe_file(probe, b"")

    retry(put, what=f"writing to output {output!r} ({probe})")
    retry(lambda: fs.rm(probe), what=f"removing {probe}")


def _finished(state: OutputState, job_fingerprint: str) -> bool:
    manifest = state.manifest
    if not manifest or manifest.get("job_fingerprint") != job_fingerprint:
        return False
    return all(f["path"] in state.files for f in manifest.get("files", []))


@dataclasses.dataclass
class _RunInfo:
    """What the run part of a job measured, for its JobResult."""

    job: str
    startup: float = 0.0
    cluster_seconds: float = 0.0
    dashboard_link: str = ""
    loads: dict[str, Any] = dataclasses.field(default_factory=dict)
    timeline: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _gather_run_info(c: Any, model: ModelSpec, run: _RunInfo) -> None:
    """Model loads and the stage timeline from the workers (best effort after a failure)."""
    try:
        run.loads = model_stats(c, model)
        run.timeline = [
            {k: r.get(k) for k in ("stage", "partition", "worker", "start", "end", "rows")}
            for r in trace.collect(c, run.job)
        ]
    except Exception:  # noqa: BLE001 - a dead cluster must not hide the job's own error
        logger.debug("could not gather model stats or the timeline", exc_info=True)


def _build_result(
    *,
    output: str,
    model: ModelSpec,
    mode: str,
    partitions: list[Partition],
    done: dict[str, dict[str, Any]],
    todo: list[Partition],
    invalidated: int,
    started: str,
    wall_start: float,
    stats: list[dict[str, Any]],
    run: _RunInfo,
) -> JobResult:
    committed = [
        {
            "slug": slug,
            **{k: m[k] for k in ("rows_in", "rows_out")},
            "files": m["files"],
            "errors": m.get("errors", []),
            "rows_quarantined": m.get("rows_quarantined", 0),
        }
        for slug, m in done.items()
    ] + [
        {
            "slug": s["slug"],
            "rows_in": s["rows_in"],
            "rows_out": s["rows_out"],
            "files": [{"path": path, "rows": rows} for path, rows in s["files"]],
            "errors": s["errors"],
            "rows_quarantined": s["rows_quarantined"],
        }
        for s in stats
    ]
    number = {p.slug: p.number for p in partitions}
    committed.sort(key=lambda c: number[c["slug"]])
    file_list = [
        {"path": f["path"], "rows": f["rows"], "partition": c["slug"]}
        for c in committed
        for f in c["files"]
    ]
    result = JobResult(
        output=output,
        model=model.name or "",
        mode=mode,
        partitions=len(partitions),
        partitions_run=len(stats),
        partitions_skipped=len(done),
        partitions_invalidated=invalidated,
        rows_in=sum(c["rows_in"] for c in committed),
        rows_out=sum(c["rows_out"] for c in committed),
        rows_quarantined=sum(c["rows_quarantined"] for c in committed),
        error_files=[path for c in committed for path in c["errors"]],
        wall_seconds=0.0,
        model_load_seconds={w: s["load_seconds"] for w, s in run.loads.items() if s},
        model_loads={w: s["loads"] for w, s in run.loads.items() if s},
        files=file_list,
        infer_seconds=sum(s["infer_seconds"] for s in stats),
        write_seconds=sum(s["write_seconds"] for s in stats),
        retries=sum(s["retries"] for s in stats),
        started=started,
        job=run.job,
        startup_seconds=run.startup,
        first_commit_seconds=(min(s["done"] for s in stats) - wall_start) if stats else 0.0,
        oom_events=sum(s["batch"]["oom_events"] for s in stats),
        batch_size={s["worker"]: s["batch"]["batch_size"] for s in stats},
        tokens=sum(s["batch"]["tokens"] for s in stats),
        padded_tokens=sum(s["batch"]["padded_tokens"] for s in stats),
        padded_tokens_unsorted=sum(s["batch"]["padded_tokens_unsorted"] for s in stats),
        rows_truncated=sum(s["batch"]["truncated"] for s in stats),
        cluster_seconds=run.cluster_seconds,
        read_seconds=sum(s["read_seconds"] for s in stats),
        preprocess_seconds=sum(s["preprocess_seconds"] for s in stats),
        dashboard_link=run.dashboard_link,
        timeline=run.timeline,
    )
    result.wall_seconds = time.perf_counter() - wall_start
    return result


def _result_from_manifest(
    state: OutputState, output: str, model: ModelSpec, wall_start: float
) -> JobResult:
    manifest = state.manifest or {}
    return JobResult(
        output=output,
        model=model.name or "",
        mode="resume",
        partitions=len(manifest.get("input", [])),
        partitions_run=0,
        partitions_skipped=len(manifest.get("input", [])),
        partitions_invalidated=0,
        rows_in=int(manifest.get("rows_in", 0)),
        rows_out=int(manifest.get("rows_out", 0)),
        wall_seconds=time.perf_counter() - wall_start,
        model_load_seconds={},
        model_loads={},
        files=list(manifest.get("files", [])),
        started=manifest.get("started", ""),
        finished=manifest.get("finished", ""),
    )


def _run_partitions(
    c: Any,
    ddf: Any,
    todo: list[Partition],
    *,
    pools: Pools,
    job: str,
    preprocess: Preprocess | None,
    keep: tuple[str, ...],
    infer_options: dict[str, Any],
    bad_rows_allowed: int | None = None,
    stats: list[dict[str, Any]] | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Submit ``todo`` through a bounded window; return each partition's statistics.

    Stops with :class:`BadRowsError` once more than ``bad_rows_allowed`` rows
    were quarantined.

    On a mixed cluster each partition is a read and a preprocess task on the
    CPU pool and an infer-and-write task on the model pool (restricted with
    ``resources=`` at submit time, since graph-time annotations are dropped);
    otherwise one task does both stages.
    """
    from distributed import as_completed

    graph = dict(ddf.__dask_graph__())
    keys = ddf.__dask_keys__()
    if pools.mixed:
        prefetch = int(_config.get("prefetch-per-model-thread")) * pools.model_threads
        window = pools.model_threads + prefetch
    else:
        window = max(2, int(_config.get("inflight-per-thread")) * pools.total_threads)
    pending = as_completed(loop=c.loop)
    queue = iter(todo)
    stats = [] if stats is None else stats

    def submit_next() -> None:
        partition = next(queue, None)
        if partition is None:
            return
        key = keys[partition.number]
        cpu = {pools.preprocess: 1} if pools.mixed else None
        read = c.get(cull(graph, [key])[0], [key], sync=False, resources=cpu)[0]
        name = f"batchinfer-{job}-{partition.number}"
        if pools.mixed:
            prepared = c.submit(
                _preprocess_stage, read, partition=partition, preprocess=preprocess, keep=keep,
                job=job, resources=cpu, key=f"preprocess-{name}",
                on_error=infer_options.get("on_error", "raise"),
            )  # fmt: skip
            done = c.submit(
                _infer_stage, prepared, partition=partition, job=job,
                resources={pools.model: 1}, key=f"infer-{name}", **infer_options,
            )  # fmt: skip
        else:
            done = c.submit(
                _process_partition, read, partition=partition, preprocess=preprocess, keep=keep,
                job=job, key=f"process-{name}", **infer_options,
            )  # fmt: skip
        pending.add(done)

    for _ in range(window):
        submit_next()
    quarantined = 0
    for future in pending:
        try:
            stats.append(future.result() | {"done": time.perf_counter()})
            quarantined += stats[-1]["rows_quarantined"]
            if progress is not None:
                progress.update(stats[-1])
            if bad_rows_allowed is not None and quarantined > bad_rows_allowed:
                raise BadRowsError(
                    f"{quarantined} bad rows quarantined so far, more than max_bad_rows allows; "
                    f"see the _errors/ folder of the output for the rows and their errors"
                )
        except BaseException:
            for other in list(pending.futures):
                other.cancel()
            raise
        finally:
            future.release()
        submit_next()
    return stats
