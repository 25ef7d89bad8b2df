"""``output_status()``: what an output folder holds, from its manifest, markers and report."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from dask_batchinfer.io.commit import load_state
from dask_batchinfer.io.fs import read_json, url_to_fs
from dask_batchinfer.io.layout import MANIFEST, REPORT_JSON
from dask_batchinfer.io.lease import describe, is_alive, lease_timeout, read_lease
from dask_batchinfer.report.html import plural

__all__ = ["format_status", "output_status"]


def output_status(output: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summarise a committed or partial output folder without reading its data.

    Returns a dict with ``state``: ``"running"`` (a job holds the folder's lease
    and renews it: see ``lease``), ``"complete"`` (a ``_SUCCESS`` manifest, and
    no failed run after it), ``"partial"`` (committed partitions but no
    manifest, and no job running: one was killed), ``"failed"`` (the last
    run failed; its error is in ``error``) or ``"missing"`` (nothing there);
    plus ``partitions_committed``, ``rows_in``, ``rows_out`` and
    ``rows_quarantined`` summed over the committed partitions, the manifest's
    summary (``manifest``) and the last report's (``last_run``).
    """
    fs, root = url_to_fs(output, storage_options or {})
    state = load_state(fs, root)
    lease = read_lease(fs, root) if state.exists or fs.exists(root) else None
    running = lease is not None and is_alive(lease, lease_timeout())
    if not state.exists and not running:
        return {
            "output": output,
            "state": "missing",
            "partitions_committed": 0,
            "rows_in": 0,
            "rows_out": 0,
            "rows_quarantined": 0,
        }
    markers = list(state.markers.values())
    report = read_json(fs, posixpath.join(root, REPORT_JSON))
    manifest = state.get_manifest()
    summary: dict[str, Any] = {
        "output": output,
        "partitions_committed": len(markers),
        "rows_in": sum(m.rows_in for m in markers),
        "rows_out": sum(m.rows_out for m in markers),
        "rows_quarantined": sum(m.rows_quarantined for m in markers),
    }
    summary["state"] = "running" if running else _state(manifest, report)
    if running and lease is not None:
        summary["lease"] = describe(lease)
    if manifest is not None:
        summary["manifest"] = {
            k: manifest.get(k)
            for k in ("model", "finished", "partitions", "rows_in", "rows_out", "rows_quarantined")
        } | {"files": len(manifest.get("files", [])), "path": posixpath.join(output, MANIFEST)}
    if report is not None:
        summary["last_run"] = {
            k: report.get(k)
            for k in (
                "status",
                "error",
                "started",
                "finished",
                "partitions_run",
                "partitions_skipped",
                "rows_out",
                "wall_seconds",
            )
        }
        if report.get("error"):
            summary["error"] = report["error"]
    return summary


def _state(manifest: dict[str, Any] | None, report: dict[str, Any] | None) -> str:
    """complete, failed or partial, from the manifest and the last report."""
    last_failed = bool(report and report.get("status") == "failed")
    if (
        last_failed
        and manifest
        and report
        and report.get("finished", "") < manifest.get("finished", "")
    ):
        last_failed = False  # the failure came before the last success
    if manifest is not None and not last_failed:
        return "complete"
    return "failed" if last_failed else "partial"


def format_status(summary: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    lines = [f"{summary['output']}: {summary['state'].upper()}"]
    if summary["state"] == "missing":
        return lines[0] + " (no output there)"
    lines.append(
        f"  committed   {plural(summary['partitions_committed'], 'partition')}, "
        f"{summary['rows_in']:,} rows in, {summary['rows_out']:,} out, "
        f"{summary['rows_quarantined']:,} quarantined"
    )
    manifest = summary.get("manifest")
    if manifest:
        lines.append(
            f"  manifest    {manifest['finished']}: model {manifest['model']}, "
            f"{plural(manifest['partitions'], 'partition')}, {plural(manifest['files'], 'file')}"
        )
    last = summary.get("last_run")
    if last:
        lines.append(
            f"  last run    {last['status']} at {last['finished']}: "
            f"{plural(last['partitions_run'], 'partition')} run, {last['partitions_skipped']} "
            f"skipped, "
            f"{(last.get('wall_seconds') or 0):.1f} s"
        )
    if summary.get("lease"):
        lines.append(f"  running     {summary['lease']}")
    if summary.get("error") and summary["state"] not in ("complete", "running"):
        lines.append(f"  error       {summary['error']}")
    return "\n".join(lines)
