"""Write a benchmark report: JSON, a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import os


def _f(value, digits=0, suffix=""):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def markdown(report: dict) -> str:
    lines = [
        f"Benchmark ({report['mode']} sizes, {report['reps']} interleaved repetitions, medians; "
        f"{report['cpus']} CPUs; {report['date']}). Ray Data: {report['ray']}."
        + (
            f" {report['jobs']} variant processes at a time: not timings, a check that the code"
            " runs."
            if report.get("jobs", 1) > 1
            else ""
        ),
        "",
        "| workload | rows | ours rows/s | L0 rows/s | L1 rows/s | Ray rows/s | naive rows/s "
        "| ours/L0 | ours/L1 | ours/Ray steady | ours/Ray cold | cold s ours / L1 / Ray "
        "| start-up s | first commit s | peak PSS MB (growth) | loads | max abs diff |",
        "|" + "---|" * 17,
    ]
    for name, w in report["workloads"].items():
        hi = w["sizes"][-1]
        hi_key = str(hi) if str(hi) in w["ours"]["cold_seconds"] else hi
        r = w.get("ratios", {})
        ray = w.get("ray")
        pss = w["ours"]["peak_pss_mb"]
        lo_key = str(w["sizes"][0]) if str(w["sizes"][0]) in pss else w["sizes"][0]
        colds = " / ".join(
            _f(w[v]["cold_seconds"][hi_key], 1) if v in w else "n/a" for v in ("ours", "l1", "ray")
        )
        lines.append(
            f"| {name} | {' → '.join(f'{n:,}' for n in w['sizes'])} "
            f"| {_f(w['ours']['steady_rows_per_second'])} | {_f(w['l0']['rows_per_second'])} "
            f"| {_f(w['l1']['steady_rows_per_second'])} "
            f"| {_f(ray['steady_rows_per_second']) if ray else 'n/a'} "
            f"| {_f(w['naive']['rows_per_second'])} "
            f"| {_f(r.get('ours_vs_l0'), 2)} | {_f(r.get('ours_vs_l1_steady'), 2)} "
            f"| {_f(r.get('ours_vs_ray_steady'), 2)} | {_f(r.get('ours_vs_ray_cold'), 2)} "
            f"| {colds} | {_f(w['ours']['startup_seconds'], 2)} "
            f"| {_f(w['ours']['first_commit_seconds'], 2)} "
            f"| {_f(pss[lo_key])} → {_f(pss[hi_key])} ({_f(r.get('memory_growth'), 2)}x) "
            f"| {_f(w['ours']['model_loads'])} "
            f"| {w.get('correctness', {}).get('max_abs_diff', 'n/a'):.2g} |"
        )
    s = report["small_files"]
    lines += [
        "",
        f"Small files: {s['rows']:,} rows in {s['files']:,} files took {s['seconds_many']:.1f} s "
        f"versus {s['seconds_few']:.1f} s in large files: slowdown {s['slowdown']:.2f}x. "
        f"Importing torch takes {report['torch_import_seconds']:.2f} s in a fresh process.",
    ]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["workloads"])
    series = [
        ("L0 (limit)", lambda w: w["l0"]["rows_per_second"]),
        ("ours", lambda w: w["ours"]["steady_rows_per_second"]),
        ("L1 hand loop", lambda w: w["l1"]["steady_rows_per_second"]),
        ("Ray Data", lambda w: w["ray"]["steady_rows_per_second"] if "ray" in w else 0),
    ]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        w = report["workloads"][name]
        values = [f(w) for _, f in series]
        ax.bar([label for label, _ in series], values, color=["grey", "C0", "C1", "C2"])
        ax.set_title(name)
        ax.set_ylabel("rows/s (steady)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, folder: str) -> None:
    mode = report["mode"]
    with open(os.path.join(folder, f"{mode}.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(folder, f"{mode}.md"), "w") as f:
        f.write(markdown(report))
    chart(report, os.path.join(folder, f"{mode}.png"))
    print(markdown(report))


_NAMES = {"ours": "dask-batchinfer", "l1rg": "hand loop (row groups)", "ray": "Ray Data",
          "daft": "Daft"}  # fmt: skip


def inputs_markdown(report: dict) -> str:
    """The inputs suite (input layout and column projection) as Markdown."""
    lay, proj = report["layouts"], report["projection"]
    lo, hi = (str(n) for n in (lay["sizes"][0], lay["sizes"][-1]))
    load = " / ".join(
        f"{report[k][0]:.1f}"
        for k in ("load_average_at_start", "load_average_at_end")
        if k in report
    )
    lines = [
        f"Inputs benchmark ({report['mode']} sizes, {report['reps']} interleaved repetitions, "
        f"medians; {report['cpus']} CPUs; {report['date']}; checkout {report.get('commit')}, "
        f"dask_batchinfer/ last changed in {report.get('package_commit')}; "
        f"load average at start / end {load}). Versions: "
        + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
        + ".",
        "",
        f"W1-h256 (64 float32 columns + id, MLP hidden 256, batch 8192) on the same rows as "
        f"{lay['files']} files (one row group each) or as one file of "
        f"{lay['row_group_rows']:,}-row row groups. Cold seconds (process start to exit) and "
        "peak PSS of the process tree (MB).",
        "",
        "| system | rows | many files s | one file s | one/many time | many files MB "
        "| one file MB | one/many memory |",
        "|" + "---|" * 8,
    ]
    for variant, by in lay["variants"].items():
        for n in (lo, hi):
            many, one = by["many_files"][n], by["one_file"][n]
            lines.append(
                f"| {_NAMES.get(variant, variant)} | {int(n):,} | {_f(many['cold_seconds'], 1)} "
                f"| {_f(one['cold_seconds'], 1)} "
                f"| {_f(one['cold_seconds'] / many['cold_seconds'], 2)} "
                f"| {_f(many['peak_pss_mb'])} | {_f(one['peak_pss_mb'])} "
                f"| {_f(one['peak_pss_mb'] / many['peak_pss_mb'], 2)} |"
            )
    r = lay["ratios"]
    lines += ["", "dask-batchinfer against each peer on the one-file layout "
              "(ours / peer: above 1, ours takes longer or uses more memory):", ""]  # fmt: skip
    for peer in ("daft", "ray", "l1rg"):
        key = f"ours_vs_{peer}_one_file"
        if key in r:
            lines.append(
                f"- vs {_NAMES[peer]}: time "
                + ", ".join(f"{_f(r[key][n]['time'], 2)}x at {int(n):,} rows" for n in (lo, hi))
                + "; memory "
                + ", ".join(f"{_f(r[key][n]['memory'], 2)}x at {int(n):,}" for n in (lo, hi))
            )
    if "ours_memory_hi_vs_lo" in r:
        m = r["ours_memory_hi_vs_lo"]
        lines.append(
            f"- dask-batchinfer peak memory at {int(hi):,} / {int(lo):,} rows: "
            f"{_f(m['many_files'], 2)}x on many files, {_f(m['one_file'], 2)}x on one file"
        )
    diffs = [v["max_abs_diff"] for v in lay.get("correctness", {}).values()]
    if diffs:
        same = all(v["same_ids"] for v in lay["correctness"].values())
        worst = max((d for d in diffs if d is not None), default=float("nan"))
        off = [
            k
            for k, v in lay["correctness"].items()
            if not v["same_ids"] or v["max_abs_diff"] > 1e-5
        ]
        lines.append(
            f"- outputs at {int(hi):,} rows against the hand loop: same ids {same}, "
            f"max abs diff {worst:.2g}" + (f" (off: {', '.join(off)})" if off else "")
        )
    lines += [
        "",
        f"Column projection: dask-batchinfer on {proj['rows']:,} rows in {proj['files']} files, "
        f"the model reading {proj['read_columns']} columns of a table of "
        f"{proj['columns']['wide']} float32 columns versus one of {proj['columns']['narrow']}: "
        f"{_f(proj['wide']['cold_seconds'], 1)} s versus "
        f"{_f(proj['narrow']['cold_seconds'], 1)} s, "
        f"time ratio {_f(proj['time_ratio'], 2)}x (target <= 1.2x); peak PSS "
        f"{_f(proj['wide']['peak_pss_mb'])} MB versus {_f(proj['narrow']['peak_pss_mb'])} MB "
        f"({_f(proj['memory_ratio'], 2)}x).",
    ]
    if report.get("jobs", 1) > 1:
        lines += ["", f"{report['jobs']} variant processes at a time: not timings, a code check."]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    return "\n".join(lines) + "\n"


def write_inputs_report(report: dict, folder: str) -> None:
    """``inputs.json`` and ``inputs.md`` (``inputs-smoke.*`` for smoke sizes) in ``folder``."""
    name = "inputs" if report["mode"] == "default" else f"inputs-{report['mode']}"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write(inputs_markdown(report))
    print(inputs_markdown(report))
