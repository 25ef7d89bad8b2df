"""``run_job()``: read, preprocess, infer, write partitioned Parquet, commit, exactly once.

The whole job on one screen: check the options (:mod:`~dask_batchinfer.job.options`)
and open the input (:mod:`~dask_batchinfer.job.prepare`), take the output's
lease and list what is done (:mod:`~dask_batchinfer.job.worklist`), run what is
left (:mod:`~dask_batchinfer.job.executor`), then commit
(:mod:`~dask_batchinfer.io.commit`) and report (:mod:`~dask_batchinfer.job.record`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from dask_batchinfer import secrets
from dask_batchinfer.cluster.engine import choose_engine, connect, dashboard_link
from dask_batchinfer.cluster.local import check_cluster
from dask_batchinfer.errors import BadRowsError
from dask_batchinfer.fingerprint import code_token
from dask_batchinfer.io.commit import Committer
from dask_batchinfer.io.lease import Lease
from dask_batchinfer.io.retry import RetryStats
from dask_batchinfer.job.demand import Demand
from dask_batchinfer.job.executor import Executor, window_size
from dask_batchinfer.job.options import JobOptions, given_options
from dask_batchinfer.job.prepare import PreparedJob, prepare
from dask_batchinfer.job.record import (
    RunInfo,
    build_result,
    fail,
    kept,
    manifest,
    now,
    save_report,
    with_phases,
)
from dask_batchinfer.job.tally import Tally
from dask_batchinfer.job.worklist import Worklist, partitions_of, worklist
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.report.progress import make_progress
from dask_batchinfer.report.result import JobResult

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
        logs, cron) on the logger ``dask_batchinfer.progress``: through the
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
    options = JobOptions.build(**given_options(locals()))
    run = RunInfo(job=uuid.uuid4().hex[:12])
    job = prepare(source, model, preprocess, options)
    run.listed(job.input_bytes)
    committer = Committer(options.output_url(), options.storage_options)
    with committer.lease(run.job) as lease:  # one job per output; before reading its state
        committer.load()
        run.mark("output state read")
        ddf = job.ddf.optimize()
        generation = uuid.uuid4().hex if options.mode == "overwrite" else ""
        keys = ddf.__dask_keys__() if job.groups is None else None  # files name a path's
        partitions = partitions_of(keys, job.groups, job.token(), generation)
        work = worklist(partitions, committer.state, options.mode, options.output_url())
        job = dataclasses.replace(job, ddf=ddf)
        return _JobRun(job, run, committer, lease, work).run()


class _JobRun:
    """One run of a prepared job under its output's lease: execute what the worklist
    says is left, then commit."""

    def __init__(
        self, job: PreparedJob, run: RunInfo, committer: Committer, lease: Lease, work: Worklist
    ) -> None:
        self.job, self.options, self.run_info = job, job.options, run
        self.committer, self.lease, self.work = committer, lease, work
        self.settings = job.settings(run.job)
        self.tally = Tally()

    def result(self) -> JobResult:
        return build_result(
            output=self.options.output_url(),
            mode=self.options.mode,
            model=self.job.model,
            work=self.work,
            run=self.run_info,
            tally=self.tally,
        )

    def run(self) -> JobResult:
        try:
            return self._run()
        finally:
            self.tally.markers.close()  # the result holds what it needs of them

    def _run(self) -> JobResult:
        if self.work.finished:  # nothing to run; undo what a later run that died left behind
            result = self.result()
            files, errors = kept(self.work, self.tally, self.committer.state)
            result.files_removed = self.committer.restore_manifest(self.work.known, files, errors)
            return result
        if self.work.todo:
            try:
                self.execute()
                self.lease.check()
            except Exception as err:
                fail(err, self.result(), self.committer)
                raise
        result = self.result()
        self.lease.check()  # never write a manifest over a folder another job took over
        self.commit(result)
        return result

    def execute(self) -> None:
        """Run the worklist's partitions on the cluster; the tally gets each committed one's."""
        run, options, todo = self.run_info, self.options, self.work.todo
        self.committer.check_writable()
        self.tally.markers.open()
        connect_start = time.perf_counter()
        engine = choose_engine(run.input_bytes)
        with (
            connect(options.client, engine) as c,
            self.committer.tidy_on_failure(),
            # before waiting for a first worker: adapt(minimum=0) starts one for pending work
            Demand(c, run.job, len(todo), options.adaptive_lookahead) as demand,
        ):
            run.cluster_seconds = time.perf_counter() - connect_start
            run.mark("cluster")
            run.dashboard_link = dashboard_link(c)
            check_cluster(c, options.no_workers_timeout)
            run.mark("workers ready")
            with self.job.on_cluster(c, run.job, self.settings, run.mark) as pools:
                run.mark("model loaded")
                run.startup = time.perf_counter() - run.wall_start
                bar = make_progress(
                    options.progress,
                    total=len(todo),
                    job=run.job,
                    dashboard_link=run.dashboard_link,
                )
                try:
                    Executor(
                        c,
                        self.job.ddf,
                        pools,
                        self.settings,
                        demand=demand,
                        progress=bar,
                        window=functools.partial(window_size, options=options),
                        bad_rows_allowed=options.bad_rows_allowed(self.work.quarantined_before()),
                        tally=self.tally,
                        timeout=options.partition_timeout,
                        heartbeat=options.heartbeat_seconds,
                        no_workers=options.no_workers_timeout,
                    ).run(todo)
                finally:
                    bar.close()
        run.mark("cluster released")

    def commit(self, result: JobResult) -> None:
        """Check the bad-row fraction, write ``_SUCCESS``, delete stale files, save the report."""
        options, committer, run = self.options, self.committer, self.run_info
        if options.too_many_bad_rows(result.rows_in, result.rows_quarantined):
            too_many = BadRowsError(
                f"{result.rows_quarantined} of {result.rows_in} rows quarantined "
                f"({result.rows_quarantined / result.rows_in:.2%}), more than "
                f"max_bad_rows={options.max_bad_rows:.2%}; see {options.output}/_errors/ for "
                f"the rows and their errors"
            )
            fail(too_many, result, committer)
            raise too_many
        retries = RetryStats()
        result.finished = now()
        committer.write_manifest(
            manifest(
                result,
                work=self.work,
                tally=self.tally,
                model=self.job.model,
                preprocess_token=code_token(self.job.preprocess),
            ),
            retries,
        )
        run.mark("manifest")
        result.retries += retries.retries
        files, errors = kept(self.work, self.tally, committer.state)
        result.files_removed = committer.collect_garbage(files, self.work.known, errors)
        run.mark("garbage collected")
        result.wall_seconds = time.perf_counter() - run.wall_start
        report_retries = RetryStats()
        save_report(committer, result, report_retries)
        result.retries += report_retries.retries  # after the fact: the saved report has one less
        run.mark("report saved")
        result.phases = with_phases(result.phases, run)
