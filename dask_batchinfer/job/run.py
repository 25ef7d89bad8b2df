"""``run_job()``: read, preprocess, infer, write partitioned Parquet, commit, exactly once.

The whole job on one screen: check the options (:mod:`~dask_batchinfer.job.options`),
open the input (:mod:`~dask_batchinfer.io.read`), plan the partitions against
the output (:mod:`~dask_batchinfer.job.worklist`), run what is left
(:mod:`~dask_batchinfer.job.executor`), then commit (:mod:`~dask_batchinfer.io.commit`)
and report (:mod:`~dask_batchinfer.job.record`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dask_batchinfer import secrets
from dask_batchinfer.cluster.engine import choose_engine, connect, dashboard_link
from dask_batchinfer.cluster.local import Pools, check_cluster, detect_pools
from dask_batchinfer.cluster.plugins import credentials, shipped_code, warm_up
from dask_batchinfer.errors import BadRowsError
from dask_batchinfer.fingerprint import code_token
from dask_batchinfer.io.commit import Committer
from dask_batchinfer.io.fs import is_local_url
from dask_batchinfer.io.inputs import input_bytes
from dask_batchinfer.io.lease import Lease
from dask_batchinfer.io.read import open_source
from dask_batchinfer.io.retry import RetryStats
from dask_batchinfer.job.demand import Demand
from dask_batchinfer.job.executor import Executor, window_size
from dask_batchinfer.job.options import JobOptions, check_not_nested
from dask_batchinfer.job.preflight import check_code, check_shared_storage, check_versions
from dask_batchinfer.job.record import (
    RunInfo,
    build_result,
    fail,
    manifest,
    now,
    save_report,
    with_phases,
)
from dask_batchinfer.job.schema import check_spec, job_columns, read_columns
from dask_batchinfer.job.worklist import Worklist, job_token, partitions_of, worklist
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.pipeline.stages import PartitionStats, StageSettings
from dask_batchinfer.report.progress import make_progress
from dask_batchinfer.report.result import JobResult
from dask_batchinfer.worker.packed import Packed

__all__ = ["run_job"]


@secrets.redacting
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
    partition_timeout: float | str | None = None,
    fingerprint: str = "metadata",
    upload: Sequence[str] | str | None = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    format: str | None = None,
) -> JobResult:
    """Run a batch inference job and write the results as partitioned Parquet, exactly once.

    Parameters
    ----------
    source : dask.dataframe.DataFrame or str
        The input: a Dask DataFrame, or a Parquet file or folder (local path or
        ``s3://bucket/prefix``, hive folders such as ``date=2026-11-29/`` are
        columns), read in partitions of ``batchinfer.partition-size``: small
        files grouped, large files split at row-group boundaries.
        CSV and JSON Lines paths too (see ``format``). A Dask DataFrame from
        ``dd.read_parquet`` cannot resume: its partition names change from
        process to process (a warning says so); pass the path.
    model : ModelSpec
        The model recipe, loaded once per worker process.
    output : str
        Folder to write to (``s3://`` or a local path). Each input partition
        becomes ``part-<name>-<id>.parquet`` (inside hive folders with
        ``partition_on``) plus a marker in ``_committed/``; ``_SUCCESS`` is
        written when all are committed. See the user guide's "Output layout". A
        local path is made absolute on the client; on a cluster of other
        machines it must be storage that every worker mounts at the same path
        (checked before any work: :class:`ClusterError` otherwise).
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
        logs, cron) on the logger ``dask_batchinfer.report.progress``: through the
        handlers logging has, or when it has none, on stderr for the job's
        duration. ``False`` for none. While no partition commits for
        ``batchinfer.progress-heartbeat`` (30 s), a heartbeat names the oldest
        partition in flight and its age.
    partition_timeout : float or str, optional
        Seconds (or ``"10 minutes"``) a partition may take from its submission
        to its commit; past it the partition is cancelled and submitted once
        more, then the job fails with :class:`PartitionTimeoutError` naming the
        file. Default ``batchinfer.partition-timeout``: no limit. Set it well
        above the slowest partition you expect (``plan()`` measures them).
    fingerprint : {"metadata", "content"}, default "metadata"
        What identifies an input file's content for resume: its size and
        modification time (local) or ETag (S3), or with ``"content"`` a digest
        of its Parquet footer (schema, row groups, statistics), for tools that
        rewrite files keeping their size and modification time. Two small
        reads per file on the client.
    columns : list of str, optional
        The input columns ``preprocess`` needs. Only the columns the job uses
        are read: the model's ``input_columns`` (without ``preprocess``),
        ``columns``, ``keep`` and ``partition_on``; with ``preprocess`` and no
        ``columns``, every column.
    filters : list, optional
        Rows to read, in pyarrow's DNF form as ``dask.dataframe.read_parquet``
        takes it: ``[("date", "==", "2026-11-29")]`` (AND), or a list of such
        lists (OR). Hive folders and row groups that cannot match are not read.
        Part of the job's fingerprint: another window is another job.
    format : {"parquet", "files", "csv", "tsv", "jsonl"}, optional
        How to read a path ``source``: Parquet (a folder, a ``.parquet`` file or
        a glob of them); ``"csv"``, ``"tsv"`` or ``"jsonl"`` (JSON Lines), each
        file (``.gz``, ``.bz2``, ``.zst`` too) a partition, types inferred from
        the first file; or ``"files"``: each file a row of ``path``, ``size``
        and ``bytes`` (images, documents; decode them in ``preprocess``, e.g.
        :func:`decode_images`). Default: by the path, a glob or file named
        ``.csv``, ``.tsv``, ``.jsonl``, ``.ndjson`` (optionally compressed) is
        read as such, another that is not ``.parquet`` as files, a folder as Parquet.
    upload : list of str, optional
        Local ``.py`` modules and package folders (your model's code) to ship
        to the workers for this job, for a cluster whose workers do not have
        them installed; they are importable there under their own names.
        Before any input is read, every worker is checked to import what the
        model and ``preprocess`` need (:class:`ModelLoadError` names the
        module and the workers otherwise). The scheduler never needs them.

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
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    run = RunInfo(job=uuid.uuid4().hex[:12])
    model = check_spec(model)
    options = JobOptions.build(
        output=output, mode=mode, on_error=on_error, max_bad_rows=max_bad_rows, keep=keep,
        partition_on=partition_on, pools=pools, client=client, progress=progress,
        storage_options=storage_options, partition_timeout=partition_timeout,
        fingerprint=fingerprint, upload=upload, columns=columns, filters=filters, format=format,
    )  # fmt: skip
    check_not_nested(source, options)
    read = read_columns(model, keep=options.keep, partition_on=options.partition_on,
                        columns=options.columns, preprocess=preprocess)  # fmt: skip
    ddf, groups = open_source(source, options.storage_options, options.task_options,
                              options.fingerprint, columns=read, filters=options.filters,
                              format=options.format, on_error=options.on_error)  # fmt: skip
    run.listed(input_bytes(groups))
    shape = job_columns(ddf._meta, model, keep=options.keep, partition_on=options.partition_on,
                        preprocess=preprocess, columns=options.columns)  # fmt: skip
    committer = Committer(options.output, options.storage_options)
    with committer.lease(run.job) as lease:  # one job per output; before reading its state
        committer.load()
        run.mark("output state read")
        ddf = ddf.optimize()
        generation = uuid.uuid4().hex if options.mode == "overwrite" else ""
        work = worklist(partitions_of(ddf.__dask_keys__(), groups,
                                      job_token(model, preprocess, shape,
                                                read=(read, options.filters)),
                                      generation),
                        committer.state, options.mode, options.output)  # fmt: skip
        settings = StageSettings(
            model=model, preprocess=preprocess, keep=shape.keep, on_error=options.on_error,
            job=run.job, output=options.output, storage_options=options.task_options,
            partition_on=shape.partition_on, schema=shape.schema,
        )  # fmt: skip
        local = isinstance(source, (str, os.PathLike)) and is_local_url(os.fspath(source))
        first = groups[0][0].path if groups and local else None  # the workers must see it too
        return _run_plan(ddf, work, settings, options, committer, run, lease, first)


def _run_plan(ddf: Any, work: Worklist, settings: StageSettings, options: JobOptions,
              committer: Committer, run: RunInfo, lease: Lease,
              input_file: str | None = None) -> JobResult:  # fmt: skip
    """Run what the plan says, then commit: the job under its lease."""
    build = functools.partial(build_result, output=options.output, mode=options.mode,
                              model=settings.model, work=work, run=run)  # fmt: skip
    if work.finished:  # nothing to run; undo what a later run that died left behind
        result = build(stats=[])
        result.files_removed = committer.restore_manifest(work.slugs)
        return result
    stats: list[PartitionStats] = []
    if work.todo:
        try:
            _execute(ddf, work, settings, options, committer, run, stats, input_file)
            lease.check()
        except Exception as err:
            fail(err, build(stats=stats), committer)
            raise
    result = build(stats=stats)
    lease.check()  # never write a manifest over a folder another job took over
    _commit(result, work, committer, options, run, manifest=functools.partial(
        manifest, work=work, model=settings.model,
        preprocess_token=code_token(settings.preprocess)))  # fmt: skip
    return result


def _execute(ddf: Any, work: Worklist, settings: StageSettings, options: JobOptions,
             committer: Committer, run: RunInfo, stats: list[PartitionStats],
             input_file: str | None) -> None:  # fmt: skip
    """Run the plan's partitions on the cluster; ``stats`` gets each committed one's."""
    committer.check_writable()
    connect_start = time.perf_counter()
    with (
        connect(options.client, choose_engine(run.input_bytes)) as c,
        credentials(c, options.credentials, options.secret_options),
        committer.tidy_on_failure(),
        # before waiting for a first worker: adapt(minimum=0) starts one for pending work
        Demand(c, run.job, len(work.todo), options.adaptive_lookahead) as demand,
    ):
        run.cluster_seconds = time.perf_counter() - connect_start
        run.mark("cluster")
        run.dashboard_link = dashboard_link(c)
        check_cluster(c, options.no_workers_timeout)
        run.mark("workers ready")
        with _prepared(c, settings, options, run, input_file) as pools:
            run.mark("model loaded")
            run.startup = time.perf_counter() - run.wall_start
            bar = make_progress(options.progress, total=len(work.todo), job=run.job,
                                dashboard_link=run.dashboard_link)  # fmt: skip
            try:
                executor = Executor(
                    c, ddf, pools, settings, window=functools.partial(window_size, options=options),
                    bad_rows_allowed=options.bad_rows_allowed(work.quarantined_before()),
                    progress=bar, stats=stats, timeout=options.partition_timeout,
                    heartbeat=options.heartbeat_seconds, no_workers=options.no_workers_timeout,
                    demand=demand,
                )  # fmt: skip
                executor.run(work.todo)
            finally:
                bar.close()
    run.mark("cluster released")


@contextlib.contextmanager
def _prepared(c: Any, settings: StageSettings, options: JobOptions, run: RunInfo,
              input_file: str | None) -> Iterator[Pools]:  # fmt: skip
    """The cluster made ready for the job, for the block's duration: checked, the user's
    code shipped, the model loaded; the job's worker plugins removed afterwards."""
    check_versions(c)
    with shipped_code(c, list(options.upload), run.job):
        check_code(c, Packed(settings))
        check_shared_storage(c, options.output, input_file)
        pools = detect_pools(c, options.pools)
        run.mark("checked")
        with warm_up(c, settings.model, pools, run.job):
            yield pools


def _commit(result: JobResult, work: Worklist, committer: Committer, options: JobOptions,
            run: RunInfo, manifest: Callable[[JobResult], dict[str, Any]]) -> None:  # fmt: skip
    """Check the bad-row fraction, write ``_SUCCESS``, delete the stale files, save the report."""
    if options.too_many_bad_rows(result.rows_in, result.rows_quarantined):
        too_many = BadRowsError(
            f"{result.rows_quarantined} of {result.rows_in} rows quarantined "
            f"({result.rows_quarantined / result.rows_in:.2%}), more than "
            f"max_bad_rows={options.max_bad_rows:.2%}; see {options.output}/_errors/ for the "
            f"rows and their errors"
        )
        fail(too_many, result, committer)
        raise too_many
    retries = RetryStats()
    result.finished = now()
    committer.write_manifest(manifest(result), retries)
    run.mark("manifest")
    result.retries += retries.retries
    result.files_removed = committer.collect_garbage(
        {f["path"] for f in result.files}, work.slugs, set(result.error_files)
    )
    run.mark("garbage collected")
    result.wall_seconds = time.perf_counter() - run.wall_start
    report_retries = RetryStats()
    save_report(committer, result, report_retries)
    result.retries += report_retries.retries  # after the fact: the saved report has one less
    run.mark("report saved")
    result.phases = with_phases(result.phases, run)
