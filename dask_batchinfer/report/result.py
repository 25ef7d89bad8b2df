"""The result of a job: counts, timings and where the output is."""

from __future__ import annotations

import dataclasses
from typing import Any

from dask_batchinfer.report.html import page, plot_result, plural, result_html, worker_labels

__all__ = ["JobResult"]


@dataclasses.dataclass
class JobResult:
    """What :func:`~dask_batchinfer.run_job` did.

    Attributes
    ----------
    output : str
        Where the Parquet dataset was written.
    model : str
        The model's name.
    mode : str
        ``"resume"``, ``"overwrite"`` or ``"error"``.
    partitions : int
        Input partitions of the job.
    partitions_run, partitions_skipped : int
        Partitions computed by this call, and those already committed with
        the same fingerprint (resume).
    partitions_invalidated : int
        Partitions committed by an earlier run whose fingerprint changed
        (new model, preprocessing or input file) and were computed again.
    rows_in, rows_out : int
        Rows read and rows written (all committed partitions, this run's and earlier ones).
    rows_computed : int
        Rows this run read and ran through the model (0 when nothing was left to do).
    wall_seconds : float
        From the call to the committed manifest, cluster start included.
    model_load_seconds : dict of str to float
        Model load time on each worker that ran a partition of this run (also
        those an adaptive cluster retired since).
    model_loads : dict of str to int
        How many times each worker loaded the model (1 is the goal).
    files : list of dict
        Committed files: ``{"path", "rows", "partition"}``, paths relative to
        ``output``: the first 1,000 (the ``_SUCCESS`` manifest lists them all).
    files_total : int
        Committed files, all of them.
    infer_seconds, write_seconds : float
        Summed over partitions: time in inference, and in writing + committing.
    retries : int
        Storage calls retried after a transient error (S3 5xx, resets).
    files_removed : int
        Stale data files deleted after the commit (earlier runs' leftovers).
    rows_quarantined : int
        Rows set aside by ``on_error="quarantine"``; rows_out + rows_quarantined = rows_in.
    error_files : list of str
        Where they are (``_errors/...parquet``, relative to ``output``; the first 1,000).
    startup_seconds : float
        From the call until the model was loaded on every model worker
        (cluster start included).
    first_commit_seconds : float
        From the call until the first partition was committed.
    job : str
        The job's id (in its task keys on the dashboard).
    oom_events : int
        Batches that ran out of GPU memory and were split and retried.
    batch_size : dict of str to int
        Rows per batch in the end on each worker (smaller than the spec's
        after out-of-memory recovery).
    status : {"succeeded", "failed"}
        A failed job's partial result is attached to the exception as
        ``err.result`` (and saved as ``_report.json`` / ``_report.html``).
    error : str
        Why it failed.
    cluster_seconds : float
        Time to start or connect to the cluster (part of ``startup_seconds``).
    read_seconds, preprocess_seconds : float
        Summed over partitions: reading input files (Parquet sources), and
        running ``preprocess``.
    dashboard_link : str
        The Dask dashboard of the cluster that ran the job.
    timeline : list of dict
        One record per stage run of the partitions this run committed:
        ``stage`` (read, preprocess, infer, write), ``partition``, ``worker``,
        ``start``, ``end`` (epoch seconds), ``rows``; of at most 2,000
        partitions, spread evenly over the input (``timeline_partitions``).
    timeline_partitions : int
        Partitions in ``timeline``.
    rows_truncated : int
        Rows longer than the model reads (e.g. texts past the encoder's
        ``max_seq_length``), truncated by the model; counted, not failed.
    model_turn_seconds : float
        Of ``infer_seconds``, the time inside the model's turn (forward
        passes and the copies to and from the device, which take turns on a
        GPU); the rest is host work beside it (padding batches, outputs to Arrow).
    tokens, padded_tokens, padded_tokens_unsorted : int
        With token-budget batching: real tokens, tokens as batched (with
        padding), and as batched in input order without sorting.
    phases : dict of str to float
        Seconds from the call to the end of each phase of the job, in order:
        ``input listed``, ``output state read``, ``cluster``, ``workers ready``,
        ``checked``, ``model loaded``, ``first read started``, ``first commit``,
        ``last commit``, ``cluster released``, ``manifest``, ``garbage
        collected``, ``report saved`` (those the run went through).
    """

    output: str
    model: str
    mode: str
    partitions: int
    partitions_run: int
    partitions_skipped: int
    partitions_invalidated: int
    rows_in: int
    rows_out: int
    wall_seconds: float
    model_load_seconds: dict[str, float]
    model_loads: dict[str, int]
    files: list[dict[str, Any]]
    infer_seconds: float = 0.0
    model_turn_seconds: float = 0.0
    write_seconds: float = 0.0
    retries: int = 0
    files_removed: int = 0
    rows_quarantined: int = 0
    error_files: list[str] = dataclasses.field(default_factory=list)
    job: str = ""
    startup_seconds: float = 0.0
    first_commit_seconds: float = 0.0
    oom_events: int = 0
    batch_size: dict[str, int] = dataclasses.field(default_factory=dict)
    tokens: int = 0
    padded_tokens: int = 0
    padded_tokens_unsorted: int = 0
    rows_truncated: int = 0
    started: str = ""
    finished: str = ""
    status: str = "succeeded"
    error: str = ""
    cluster_seconds: float = 0.0
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    dashboard_link: str = ""
    timeline: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)
    phases: dict[str, float] = dataclasses.field(default_factory=dict, repr=False)
    rows_computed: int = 0
    files_total: int = 0
    timeline_partitions: int = 0

    @property
    def padding_fraction(self) -> float | None:
        """Share of padding in the tokens the model saw (token-budget batching), else None."""
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else None

    @property
    def padding_fraction_unsorted(self) -> float | None:
        """The same, had rows been batched in input order without sorting."""
        if not self.padded_tokens_unsorted:
            return None
        return 1 - self.tokens / self.padded_tokens_unsorted

    @property
    def rows_per_second(self) -> float:
        """Rows this run computed per second of wall time (0.0 when it computed none)."""
        if not self.rows_computed:
            return 0.0
        return self.rows_computed / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a plain dict (JSON-ready)."""
        return {
            "output": self.output,
            "model": self.model,
            "mode": self.mode,
            "partitions": self.partitions,
            "partitions_run": self.partitions_run,
            "partitions_skipped": self.partitions_skipped,
            "partitions_invalidated": self.partitions_invalidated,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_quarantined": self.rows_quarantined,
            "rows_truncated": self.rows_truncated,
            "rows_computed": self.rows_computed,
            "wall_seconds": round(self.wall_seconds, 3),
            "startup_seconds": round(self.startup_seconds, 3),
            "first_commit_seconds": round(self.first_commit_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "model_load_seconds": {w: round(s, 3) for w, s in self.model_load_seconds.items()},
            "model_loads": dict(self.model_loads),
            "files": self.files_total,
            "files_total": self.files_total,
            "retries": self.retries,
            "files_removed": self.files_removed,
            "oom_events": self.oom_events,
            "batch_size": dict(self.batch_size),
            "padding_fraction": _round(self.padding_fraction),
            "padding_fraction_unsorted": _round(self.padding_fraction_unsorted),
            "status": self.status,
            "error": self.error,
            "cluster_seconds": round(self.cluster_seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds().items()},
            "model_turn_seconds": round(self.model_turn_seconds, 3),
        }

    def stage_seconds(self) -> dict[str, float]:
        """Busy time per stage, summed over partitions (worker thread-seconds)."""
        return {
            "read": self.read_seconds,
            "preprocess": self.preprocess_seconds,
            "infer": self.infer_seconds,
            "write": self.write_seconds,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready: the summary, the file list and the timeline."""
        return self.summary() | {
            "started": self.started,
            "finished": self.finished,
            "dashboard_link": self.dashboard_link,
            "files": self.files,
            "error_files": self.error_files,
            "timeline": self.timeline,
            "timeline_partitions": self.timeline_partitions,
            "phases": self.phases,
        }

    def _repr_html_(self) -> str:
        return result_html(self.to_json())

    def to_html(self) -> str:
        """A self-contained HTML page of the report (no scripts, no external files; no
        dashboard link, which is gone once the cluster is)."""
        return page(f"dask-batchinfer: {self.model}", result_html(self.to_json(), saved=True))

    def plot(self, path: str | None = None) -> Any:
        """Draw the per-worker timeline of partitions and the time per stage (matplotlib).

        Returns the figure; with ``path``, also saves it there (PNG, SVG, ...).
        """
        return plot_result(self.to_json(), path)

    def __str__(self) -> str:
        labels = worker_labels(list(self.model_load_seconds))
        loads = ", ".join(
            f"{labels[worker]} {seconds:.2f}s"
            for worker, seconds in sorted(self.model_load_seconds.items())
        )
        head = f"dask-batchinfer job: {self.model}"
        if self.status != "succeeded":
            head += f"  [{self.status.upper()}: {self.error}]"
        return "\n".join(
            [
                head,
                f"  output      {self.output}",
                f"  partitions  {self.partitions}: {self.partitions_run} run, "
                f"{self.partitions_skipped} skipped (already committed), "
                f"{self.partitions_invalidated} invalidated; {plural(self.files_total, 'file')}",
                f"  rows        {self.rows_in:,} in, {self.rows_out:,} out"
                + (
                    f", {self.rows_quarantined:,} quarantined in _errors/"
                    if self.rows_quarantined
                    else ""
                ),
                self._wall_line(),
                f"  model load  {loads or 'n/a (nothing to run)'}",
                "  stages      "
                + ", ".join(f"{k} {v:.2f}s" for k, v in self.stage_seconds().items())
                + " (summed over partitions)",
                f"  storage     {self.retries} retries, {self.files_removed} stale files removed",
                *self._batching_lines(),
            ]
        )

    def _wall_line(self) -> str:
        wall = f"  wall time   {self.wall_seconds:.2f} s"
        if not self.partitions_run:
            done = plural(self.partitions_skipped, "partition")
            return f"{wall}; nothing to do: {done} already committed"
        rate = f"{self.rows_per_second:,.0f} rows/s over {self.rows_computed:,} rows computed"
        return f"{wall}  ({rate})"

    def _batching_lines(self) -> list[str]:
        lines = []
        if self.oom_events:
            sizes = sorted(set(self.batch_size.values()))
            lines.append(
                f"  GPU memory  {self.oom_events} out-of-memory splits; batch size now {sizes}"
            )
        if self.rows_truncated:
            lines.append(
                f"  truncated   {self.rows_truncated:,} rows longer than the model's limit "
                f"were truncated"
            )
        if self.padding_fraction is not None:
            lines.append(
                f"  padding     {self.padding_fraction:.1%} of tokens with length-sorted batches "
                f"({self.padding_fraction_unsorted:.1%} unsorted)"
            )
        return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
