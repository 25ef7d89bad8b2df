"""HTML and plots of job reports and plans: self-contained, no scripts, no network.

Everything here renders the JSON form of a report (``JobResult.to_json()``,
the saved ``_report.json``) or of a plan (``Plan.summary()``), so a saved
report renders the same as a live one. Numbers sit in ``<td data-key="...">``
cells so that tools (and tests) can read them back from the HTML.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "page",
    "plan_html",
    "plot_result",
    "plural",
    "result_html",
    "timeline_svg",
    "worker_labels",
]

STAGES = ("read", "preprocess", "infer", "write")
COLORS = {"read": "#8da0cb", "preprocess": "#66c2a5", "infer": "#fc8d62", "write": "#e78ac3"}
_STYLE = (
    "font-family:system-ui,sans-serif;font-size:13px;border-collapse:collapse;margin:4px 0 10px 0"
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _rows(rows: Iterable[tuple[str, str, Any]]) -> str:
    cells = []
    for key, label, value in rows:
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(value, float):
            shown = f"{value:,.2f}"
        cells.append(
            f'<tr><th style="text-align:left;padding:2px 12px 2px 0;font-weight:600">{_e(label)}'
            f'</th><td data-key="{_e(key)}" style="text-align:right;padding:2px 6px">'
            f"{_e(shown)}</td></tr>"
        )
    return f'<table style="{_STYLE}">{"".join(cells)}</table>'


def _section(title: str, body: str) -> str:
    return (
        f'<section style="margin:6px 0"><h4 style="margin:0 0 4px 0;font-size:13px">'
        f"{_e(title)}</h4>{body}</section>"
    )


def result_html(report: Mapping[str, Any], saved: bool = False) -> str:
    """The job report (``JobResult.to_json()``) as an HTML fragment (a notebook cell's output).

    ``saved``: for the ``_report.html`` file, read after the job: without the
    dashboard link, which ends with the cluster.
    """
    ok = report["status"] == "succeeded"
    colour = "#1a7f37" if ok else "#cf222e"
    head = (
        f'<div style="font-family:system-ui,sans-serif"><div style="font-size:15px">'
        f"<b>dask-batchinfer job</b> · {_e(report['model'])} · "
        f'<span data-key="status" style="color:{colour};font-weight:600">{_e(report["status"])}'
        f"</span></div>"
    )
    if not ok:
        head += (
            f'<pre data-key="error" style="white-space:pre-wrap;color:{colour}">'
            f"{_e(report['error'])}</pre>"
        )
    grid = (
        '<div style="display:flex;gap:28px;flex-wrap:wrap">'
        + _section("Counts", _counts(report))
        + _section("Wall time", _wall(report))
        + _section("Busy time per stage (summed over partitions)", _stages(report))
        + (
            _section("Model load per worker", _loads(report))
            if report["model_load_seconds"]
            else ""
        )
        + "</div>"
    )
    svg = timeline_svg(report.get("timeline", []))
    return (
        head
        + _where(report, with_link=not saved)
        + grid
        + (_section(_timeline_title(report), svg) if svg else "")
        + "</div>"
    )


def _counts(report: Mapping[str, Any]) -> str:
    labels = {
        "partitions": "partitions",
        "partitions_run": "run now",
        "partitions_skipped": "skipped (already committed)",
        "partitions_invalidated": "invalidated (changed)",
        "rows_in": "rows in",
        "rows_out": "rows out",
        "rows_quarantined": "rows quarantined (_errors/)",
        "rows_truncated": "rows truncated (too long)",
    }
    return _rows((key, label, report[key]) for key, label in labels.items())


def _wall(report: Mapping[str, Any]) -> str:
    wall, startup = report["wall_seconds"], report["startup_seconds"]
    rows = [
        ("wall_seconds", "wall time, s", float(wall)),
        ("cluster_seconds", "cluster start, s", float(report["cluster_seconds"])),
        *_startup(report),
        ("processing_seconds", "read, infer, write, commit, s", max(0.0, wall - startup)),
    ]
    if report.get("partitions_run"):
        rows.append(
            (
                "rows_per_second",
                "rows/s (rows computed / wall time)",
                float(report["rows_per_second"]),
            )
        )
    else:
        rows.append(
            (
                "nothing_to_do",
                "nothing to do",
                f"{plural(report['partitions_skipped'], 'partition')} already committed",
            )
        )
    return _rows(rows)


def _startup(report: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """Start-up after the cluster, by phase: the workers' first tasks (worker processes
    import the package and torch there) are not the model's load."""
    phases = report.get("phases") or {}
    names = ("cluster", "workers ready", "checked", "model loaded")
    if not all(name in phases for name in names):  # a report saved by an older version
        return [
            (
                "model_load_wall_seconds",
                "workers, checks and model load, s",
                max(0.0, report["startup_seconds"] - report["cluster_seconds"]),
            )
        ]
    cluster, ready, checked, loaded = (float(phases[name]) for name in names)
    return [
        ("workers_ready_seconds", "waiting for workers, s", max(0.0, ready - cluster)),
        ("checks_seconds", "first tasks: imports and checks, s", max(0.0, checked - ready)),
        ("model_load_wall_seconds", "model loaded on every worker, s", max(0.0, loaded - checked)),
    ]


def _stages(report: Mapping[str, Any]) -> str:
    busy = report["stage_seconds"]
    total = sum(busy.values()) or 1.0
    return _rows(
        (f"{stage}_seconds", f"{stage}, s ({seconds / total:.0%})", float(seconds))
        for stage, seconds in busy.items()
    )


def _loads(report: Mapping[str, Any]) -> str:
    return _rows(
        (
            f"load:{worker}",
            f"{worker} ({report['model_loads'].get(worker, 0)} load)",
            float(seconds),
        )
        for worker, seconds in sorted(report["model_load_seconds"].items())
    )


def _where(report: Mapping[str, Any], with_link: bool = True) -> str:
    files = report.get("files_total", len(report.get("files") or ()))
    link = report.get("dashboard_link") if with_link else None
    return (
        f'<div>output <code data-key="output">{_e(report["output"])}</code>'
        + (f" · {plural(files, 'file')}" if files else "")
        + (f' · dashboard <a href="{_e(link)}">{_e(link)}</a>' if link else "")
        + "</div>"
    )


def _timeline_title(report: Mapping[str, Any]) -> str:
    shown, run = report.get("timeline_partitions", 0), report.get("partitions_run", 0)
    if not shown or shown >= run:
        return "Timeline (one bar per partition and stage)"
    sample = f"{shown:,} of {run:,} partitions, evenly spread"
    return f"Timeline (one bar per partition and stage; {sample})"


def plural(count: int, word: str) -> str:
    """``"1 file"``, ``"2 files"``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def worker_labels(workers: Sequence[str]) -> dict[str, str]:
    """Short, unambiguous names for worker addresses: ``127.0.0.1:40123`` for
    ``tcp://127.0.0.1:40123``, ``in-process 4`` for ``inproc://192.0.2.2/19988/4``,
    a long host name cut at its start; ``None`` is the client."""
    labels = {}
    for worker in workers:
        scheme, _, rest = worker.partition("://")
        if not rest:
            label = "client" if worker == "None" else worker
        elif scheme == "inproc":
            label = f"in-process {rest.rsplit('/', 1)[-1]}"
        else:
            label = rest if len(rest) <= 24 else "…" + rest[-23:]
        labels[worker] = label
    if len(set(labels.values())) < len(labels):  # cut names that collide: the whole address
        labels = {w: w for w in workers}
    return labels


def timeline_svg(records: Sequence[dict[str, Any]], width: int = 720) -> str:
    """An SVG of stage intervals per worker (one lane each), or "" without records."""
    records = [r for r in records if r.get("stage") in COLORS]
    if not records:
        return ""
    workers = sorted({str(r.get("worker")) for r in records})
    start = min(r["start"] for r in records)
    span = max(max(r["end"] for r in records) - start, 1e-6)
    lane, left = 22, 160
    height = lane * len(workers) + 30
    scale = (width - left - 10) / span
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="system-ui,sans-serif" font-size="11">'
    ]
    labels = worker_labels(workers)
    for i, worker in enumerate(workers):
        parts.append(
            f'<text x="4" y="{i * lane + 15}" data-worker="{_e(worker)}">'
            f"<title>{_e(worker)}</title>{_e(labels[worker])}</text>"
        )
    for r in records:
        i = workers.index(str(r.get("worker")))
        x = left + (r["start"] - start) * scale
        w = max((r["end"] - r["start"]) * scale, 0.5)
        parts.append(
            f'<rect x="{x:.1f}" y="{i * lane + 3}" width="{w:.1f}" height="{lane - 6}" '
            f'fill="{COLORS[r["stage"]]}" data-stage="{_e(r["stage"])}" '
            f'data-partition="{_e(r.get("partition"))}"><title>{_e(r["stage"])} partition '
            f"{_e(r.get('partition'))}: {r['end'] - r['start']:.3f} s</title></rect>"
        )
    y = lane * len(workers) + 20
    for j, stage in enumerate(STAGES):
        parts.append(
            f'<rect x="{left + j * 90}" y="{y - 9}" width="10" height="10" '
            f'fill="{COLORS[stage]}"/><text x="{left + j * 90 + 14}" y="{y}">'
            f"{stage}</text>"
        )
    shown = f"{span:.1f}" if span >= 1 else f"{span:.2f}"
    parts.append(f'<text x="{width - 10}" y="{y}" text-anchor="end">{shown} s</text></svg>')
    return "".join(parts)


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title></head>'
        f'<body style="margin:16px">{body}</body></html>'
    )


def plot_result(report: Mapping[str, Any], path: str | None = None) -> Any:
    """A matplotlib figure of a report: per-worker timeline and busy time per stage."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is in the notebook extra
        raise ImportError(
            "JobResult.plot() needs matplotlib: pip install 'dask-batchinfer[notebook]'"
        ) from err
    fig, (timeline, bars) = plt.subplots(
        1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]}
    )
    plt.close(fig)  # shown once, as the cell's value: not again by the inline backend
    records = [r for r in report.get("timeline", []) if r.get("stage") in COLORS]
    workers = sorted({str(r.get("worker")) for r in records})
    start = min((r["start"] for r in records), default=0.0)
    for stage in STAGES:
        for i, worker in enumerate(workers):
            spans = [
                (r["start"] - start, r["end"] - r["start"])
                for r in records
                if r["stage"] == stage and str(r.get("worker")) == worker
            ]
            if spans:
                timeline.broken_barh(
                    spans, (i - 0.4, 0.8), color=COLORS[stage], label=stage if i == 0 else None
                )
    labels = worker_labels(workers)
    timeline.set_yticks(range(len(workers)), [labels[w] for w in workers])
    timeline.set_xlabel("seconds since the first stage started")
    timeline.set_title(f"{report['model']}: partitions per worker")
    if records:  # below the axes, never over the bars
        timeline.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=len(STAGES),
            fontsize=8,
            frameon=False,
        )
    busy = report["stage_seconds"]
    names = list(busy)[::-1]  # horizontal bars: stage names on the y axis, read top-down
    bars.barh(names, [busy[n] for n in names], color=[COLORS[n] for n in names])
    bars.set_xlabel("seconds (summed over partitions)")
    bars.set_title("busy time per stage")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _batch_note(batch: int, size: int, best: int) -> str:
    notes = [note for note, b in (("the spec's", size), ("recommended", best)) if b == batch]
    return f" ({', '.join(notes)})" if notes else ""


def plan_html(plan: Mapping[str, Any]) -> str:
    """A plan (``Plan.summary()``) as an HTML fragment."""
    spread, sampled = plan["uncertainty"], plan["sample_partitions"]
    interval = (
        f"± {spread:.0%} (about 95%, from the spread of {sampled} partitions)"
        if spread is not None
        else "spread unknown (one partition sampled)"
    )
    measured = _rows(
        [
            ("partitions", "partitions in the input", plan["partitions"]),
            ("rows", "rows" + ("" if plan["rows_exact"] else " (estimated)"), plan["rows"]),
            ("sample_partitions", "partitions measured", sampled),
            ("sample_rows", "rows measured", plan["sample_rows"]),
            ("workers", "workers / threads", f"{plan['workers']} / {plan['threads']}"),
            ("cluster_seconds", "cluster start, s", float(plan["cluster_seconds"])),
            ("model_load_seconds", "model load, s", float(plan["model_load_seconds"])),
        ]
    )
    per_row = _rows(
        (f"{k}_us_per_row", f"{k}, µs/row", v * 1e6)
        for k, v in plan["stage_seconds_per_row"].items()
    )
    best, size = plan["recommended_batch_size"], plan["batch_size"]
    sizes = _rows(
        (f"batch:{b}", f"batch {b}{_batch_note(b, size, best)}", f"{r:,.0f} rows/s")
        for b, r in plan["batch_sizes"].items()
    )
    recommended = (
        [
            (
                "recommended_projected_seconds",
                f"at batch {best} (recommended), s",
                float(plan["recommended_projected_seconds"]),
            )
        ]
        if best != size
        else []
    )
    projected = _rows(
        [
            ("projected_seconds", "this cluster, s", float(plan["projected_seconds"])),
            ("projected_total_seconds", "with start-up, s", float(plan["projected_total_seconds"])),
            *recommended,
            *(
                (f"workers:{n}", f"on {n} workers, s", float(seconds))
                for n, seconds in plan["projections"].items()
            ),
            ("output_bytes", "output, bytes", plan["output_bytes"]),
        ]
    )
    return (
        '<div style="font-family:system-ui,sans-serif"><div style="font-size:15px">'
        f"<b>dask-batchinfer plan</b> · uncertainty {_e(interval)}</div>"
        '<div style="display:flex;gap:28px;flex-wrap:wrap">'
        + _section("Measured", measured)
        + _section(f"Busy time per row (batch size {size})", per_row)
        + _section("Batch sizes (inference, one thread)", sizes)
        + _section(f"Projected (batch size {size}, the spec's)", projected)
        + "</div></div>"
    )
