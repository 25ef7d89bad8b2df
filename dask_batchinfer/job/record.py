"""Build a job's :class:`~dask_batchinfer.JobResult`, the same way on every path.

The counts come from the markers of every committed partition (those done
before and those this run committed), so a run that finds the job finished
reports what the job did: rows in = rows out + rows quarantined, always.
The timeline and the model loads come from the statistics of the partitions
this run committed, which each task brought back: nothing is asked of the
workers at the end, when the workers an adaptive cluster retired are gone.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from dask_batchinfer import secrets
from dask_batchinfer.io.commit import (
    MANIFEST_HEAD,
    Committer,
    Marker,
    OutputState,
    manifest_digest,
)
from dask_batchinfer.io.retry import RetryStats
from dask_batchinfer.job.tally import Tally, count_marker
from dask_batchinfer.job.worklist import Worklist
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.report.result import JobResult
from dask_batchinfer.version import __version__

__all__ = [
    "RunInfo",
    "FILES_SHOWN",
    "build_result",
    "committed",
    "fail",
    "kept",
    "manifest",
    "now",
    "save_report",
    "with_phases",
]

logger = logging.getLogger(__name__)

#: Files the result and its report list (the manifest, ``_SUCCESS``, lists them all).
FILES_SHOWN = 1000


def now() -> str:
    """The time now, as the reports write it (UTC, ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunInfo:
    """What the run part of a job measured, for its JobResult."""

    job: str
    started: str = dataclasses.field(default_factory=now)
    wall_start: float = dataclasses.field(default_factory=time.perf_counter)
    startup: float = 0.0
    cluster_seconds: float = 0.0
    dashboard_link: str = ""
    #: Bytes of the input files (None: not known, e.g. a dask DataFrame source).
    input_bytes: int | None = None
    #: When each phase of the job ended (``time.perf_counter()``), in order.
    marks: dict[str, float] = dataclasses.field(default_factory=dict)

    def mark(self, phase: str) -> None:
        """Note that ``phase`` just ended."""
        self.marks[phase] = time.perf_counter()

    def listed(self, input_bytes: int | None) -> None:
        """Note that the input is listed: when, and the bytes of its files (None: unknown)."""
        self.input_bytes = input_bytes
        self.mark("input listed")

    def phases(self) -> dict[str, float]:
        """Seconds from the job's start to the end of each phase so far."""
        return {name: round(t - self.wall_start, 4) for name, t in self.marks.items()}


def committed(work: Worklist, tally: Tally, errors_only: bool = False) -> Iterator[Marker]:
    """The markers of every committed partition (done before and this run), in input
    order, read one at a time (this run's from the client's disk); ``errors_only``: only
    those that list files of quarantined rows."""
    done = work.done
    before = sorted(n for n, m in done.items() if m.errors or not errors_only)
    spool = tally.markers
    now = (n for n in spool.numbers() if spool.has_errors(n) or not errors_only)
    for n in heapq.merge(before, now):
        marker = done[n] if n in done else spool.get(n)
        if marker is not None:
            yield marker


def kept(work: Worklist, tally: Tally, state: OutputState) -> tuple[set[str], set[str]]:
    """The data files and the files of quarantined rows that the output held before this run
    and a committed partition lists: what clean-up keeps of them (it deletes only what was
    there before; a new output needs no pass over the markers)."""
    files: set[str] = set()
    errors: set[str] = set()
    if state.files or state.error_files:
        for m in committed(work, tally):
            files.update(path for path, _ in m.files if path in state.files)
            errors.update(path for path, _ in m.errors if path in state.error_files)
    return files, errors


def _counts(work: Worklist, tally: Tally) -> dict[str, int]:
    """What every committed partition's marker adds up to (see ``Tally.counts``)."""
    counts = dict(tally.counts)
    for m in work.done.values():
        count_marker(counts, m)
    return counts


def build_result(
    *,
    output: str,
    mode: str,
    model: ModelSpec,
    work: Worklist,
    tally: Tally,
    run: RunInfo,
) -> JobResult:
    """The result of a job from its work, this run's tally and measurements."""
    counts, sums = _counts(work, tally), tally.sums
    result = JobResult(
        output=output,
        model=model.name or "",
        mode=mode,
        partitions=len(work.partitions),
        partitions_run=tally.partitions,
        partitions_skipped=len(work.done),
        partitions_invalidated=work.invalidated,
        rows_in=counts.get("rows_in", 0),
        rows_out=counts.get("rows_out", 0),
        rows_quarantined=counts.get("rows_quarantined", 0),
        rows_truncated=counts.get("rows_truncated", 0),
        rows_computed=tally.rows_computed,
        error_files=list(itertools.islice(_errors(committed(work, tally, True)), FILES_SHOWN)),
        files=list(itertools.islice(_files(committed(work, tally)), FILES_SHOWN)),
        files_total=counts.get("files", 0),
        wall_seconds=0.0,
        model_load_seconds={w: s.load_seconds for w, s in tally.loads.items()},
        model_loads={w: s.loads for w, s in tally.loads.items()},
        started=run.started,
        job=run.job,
        startup_seconds=run.startup,
        cluster_seconds=run.cluster_seconds,
        dashboard_link=run.dashboard_link,
        timeline=tally.timeline(),
        timeline_partitions=tally.timeline_partitions,
        first_commit_seconds=(tally.first_commit or run.wall_start) - run.wall_start,
        read_seconds=sums.get("read_seconds", 0.0),
        preprocess_seconds=sums.get("preprocess_seconds", 0.0),
        infer_seconds=sums.get("infer_seconds", 0.0),
        model_turn_seconds=sums.get("turn_seconds", 0.0),
        write_seconds=sums.get("write_seconds", 0.0),
        retries=int(sums.get("retries", 0)),
        oom_events=int(sums.get("oom_events", 0)),
        batch_size=dict(tally.batch_size),
        tokens=int(sums.get("tokens", 0)),
        padded_tokens=int(sums.get("padded_tokens", 0)),
        padded_tokens_unsorted=int(sums.get("padded_tokens_unsorted", 0)),
    )
    result.wall_seconds = time.perf_counter() - run.wall_start
    result.phases = _phases(run, tally)
    return result


def _files(markers: Iterable[Marker]) -> Iterator[dict[str, Any]]:
    """Every committed data file: ``{"path", "rows", "partition"}``."""
    for m in markers:
        for path, rows in m.files:
            yield {"path": path, "rows": rows, "partition": m.slug}


def _errors(markers: Iterable[Marker]) -> Iterator[str]:
    """Every file of quarantined rows."""
    for m in markers:
        for path, _ in m.errors:
            yield path


def _phases(run: RunInfo, tally: Tally) -> dict[str, float]:
    """The run's phases, with the first read's start and the first and last commits."""
    phases = {}
    offset = time.time() - time.perf_counter()  # the timeline is in epoch seconds
    if tally.first_read is not None:
        phases["first read started"] = round(tally.first_read - offset - run.wall_start, 4)
    if tally.first_commit is not None and tally.last_commit is not None:
        phases["first commit"] = round(tally.first_commit - run.wall_start, 4)
        phases["last commit"] = round(tally.last_commit - run.wall_start, 4)
    return with_phases(phases, run)


def with_phases(phases: dict[str, float], run: RunInfo) -> dict[str, float]:
    """``phases`` and the run's phases so far, in the order they ended."""
    return dict(sorted({**phases, **run.phases()}.items(), key=lambda item: item[1]))


def manifest(
    result: JobResult,
    work: Worklist,
    tally: Tally,
    model: ModelSpec,
    preprocess_token: str,
) -> Iterator[str]:
    """The ``_SUCCESS`` manifest of a finished job (every input partition, every file) as
    JSON text in pieces: made one partition at a time, never whole in memory (at 100,000
    partitions it is about 23 MB of text, 150 MB as Python objects)."""
    head = {
        "version": __version__,
        "job_fingerprint": work.job_fingerprint,
        "model": model.name,
        "model_token": model.token,
        "preprocess_token": preprocess_token,
        "started": result.started,
        "finished": result.finished,
        "files_digest": manifest_digest(committed(work, tally)),  # checked by a re-run
        **result.summary(),
    }
    for name in ("files", "errors", "input"):
        head.pop(name, None)
    # what a re-run reads (MANIFEST_HEAD) first, whatever the length of the rest
    head = {**{name: head.pop(name) for name in MANIFEST_HEAD}, **dict(sorted(head.items()))}
    yield json.dumps(head, indent=1)[:-2]  # without "\n}": more follows
    lists = {
        "errors": _errors(committed(work, tally, errors_only=True)),
        "files": _files(committed(work, tally)),
        "input": (
            {"slug": p.slug, "source": p.source, "fingerprint": p.fingerprint}
            for p in work.partitions
        ),
    }
    for name, items in lists.items():
        yield f',\n "{name}": ['
        for i, item in enumerate(items):
            yield ("\n  " if i == 0 else ",\n  ") + json.dumps(item, sort_keys=True)
        yield "\n ]"
    yield "\n}\n"


def save_report(committer: Committer, result: JobResult, stats: RetryStats | None = None) -> None:
    """Write the report beside the output (``_report.json``, ``_report.html``)."""
    committer.save_report(result.to_json(), result.to_html(), stats)


def fail(err: BaseException, result: JobResult, committer: Committer) -> None:
    """Mark ``result`` failed, save its report beside the output, attach it to ``err``."""
    result.status = "failed"
    result.error = secrets.redact(f"{type(err).__name__}: {err}")
    result.finished = now()
    try:
        save_report(committer, result)
    except Exception as save_error:  # noqa: BLE001 - the job's own error matters more
        where = _save_locally(result)
        note = (
            f"the report could not be saved beside the output ({type(save_error).__name__}: "
            f"{save_error}); it is at {where}"
        )
        logger.warning("%s", note)
        err.add_note(note)
    try:
        err.result = result  # type: ignore[attr-defined]
    except AttributeError:
        pass


def _save_locally(result: JobResult) -> str:
    """Write a failed job's report to the local temporary folder; its path."""
    folder = os.path.join(tempfile.gettempdir(), "dask-batchinfer-reports")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{result.job or 'job'}-report.json")
    with open(path, "w") as f:
        json.dump(result.to_json(), f, indent=1, sort_keys=True, default=str)
    with open(path[: -len(".json")] + ".html", "w") as f:
        f.write(result.to_html())
    return path
