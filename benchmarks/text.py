"""The text suite: corpus embeddings (all-MiniLM-L6-v2) against the careful hand loop.

    python -m benchmarks.text            # 1,000 and 4,000 documents, 2 repetitions
    python -m benchmarks.text --smoke    # 60 and 120 documents, one repetition

The corpus is ``W2-long`` (:mod:`benchmarks.workloads`): log-normal lengths,
mean about 60 words, up to 400, in files of 500 documents. Every system embeds
the same texts with the same model (bundled MiniLM, fp32, CPU) and writes each
document's id and its normalised 384-float vector as Parquet:

- ``ours``: ``run_job(folder, sentence_encoder(batch_size=128))`` with its
  default engine (token-budget batches: texts sorted by length).
- ``l1``: the careful loop: per file, ``SentenceTransformer.encode(texts,
  batch_size=64)`` (which sorts the file's texts by length), torch with all cores.
- ``l1_input_order``: batches of 128 texts in input order (the naive loop).
- ``daft``: Daft ``read_parquet`` -> a ``@daft.cls`` batch method calling
  ``encode(batch_size=64)`` on batches of 64 -> ``write_parquet``.
- ``ray``: Ray Data ``map_batches`` (actor pool, batches of 256, ``encode``).

Each run is a fresh process, timed from process start to exit, with the process
tree's PSS sampled; variants are interleaved (A B C, then C B A) and medians
reported. Steady docs/s is the slope between the two sizes. Results go to
``benchmarks/results/text-<mode>.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from datetime import datetime, timezone

import numpy as np

SIZES = {"smoke": (60, 120), "default": (1_000, 4_000)}
PER_FILE = {"smoke": 30, "default": 500}
WORKLOAD = "W2-long"
LABELS = {
    "ours": "dask-batchinfer",
    "l1": "careful loop (encode per file, batch 64)",
    "l1_input_order": "input-order loop (batch 128)",
    "daft": "Daft (daft.cls + encode, batch 64)",
    "ray": "Ray Data (map_batches + encode)",
}


def _vectors(folder: str) -> np.ndarray:
    """A variant's output as an (n, 384) array in id order."""
    from benchmarks import run

    return np.stack(run._outputs(folder).to_numpy()).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    from benchmarks import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                        default="default")  # fmt: skip
    parser.add_argument("--reps", type=int)
    parser.add_argument("--skip", nargs="+", default=[], choices=("ray", "daft"))
    parser.add_argument("--variants", nargs="+", choices=tuple(LABELS),
                        help="run only these (default: all installed)")  # fmt: skip
    parser.add_argument("--results", default=run.RESULTS)
    parser.add_argument("--note", help="a line for the report")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.mode == "smoke" else 2)
    variants = ["ours", "l1", "l1_input_order"]
    variants += [p for p in ("daft", "ray")
                 if p not in args.skip and importlib.util.find_spec(p) is not None]  # fmt: skip
    variants = args.variants or variants
    folders = {n: run.prepare(WORKLOAD, n, PER_FILE[args.mode]) for n in SIZES[args.mode]}
    runs = run.interleaved(run.Runner(), reps, variants, folders, WORKLOAD, "text", "docs")
    report = _report(args, reps, variants, runs, os.path.join(run.DATA, "out"))
    _write(report, args.results)
    return report


def _report(args: argparse.Namespace, reps: int, variants: list[str], runs: dict,
            scratch: str) -> dict:  # fmt: skip
    from benchmarks import run

    lo, hi = SIZES[args.mode]
    results = run.cold_summary(runs, variants, lo, hi, "steady_docs_per_s")
    reference = _vectors(os.path.join(scratch, f"text-l1-{hi}"))  # the careful loop's last run
    diffs = {v: float(np.max(np.abs(_vectors(os.path.join(scratch, f"text-{v}-{hi}")) - reference)))
             for v in variants if v != "l1"}  # fmt: skip
    return {
        "suite": "text", "mode": args.mode, "reps": reps, "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": run._git_commit(), "load_average_at_end": os.getloadavg(),
        "sizes": [lo, hi], "docs_per_file": PER_FILE[args.mode], "variants": results,
        "max_abs_diff_vs_l1": diffs, "note": args.note,
    }  # fmt: skip


def _write(report: dict, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    name = f"text-{report['mode']}"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    lo, hi = report["sizes"]
    v = report["variants"]
    lines = [
        f"Text suite ({report['mode']}, {report['reps']} interleaved repetitions, medians; "
        f"{report['cpus']} CPUs; {report['date']}; checkout {report['commit']}; load average "
        f"at end {report['load_average_at_end'][0]:.1f}).",
        "",
        f"{WORKLOAD}: log-normal lengths (mean about 60 words, up to 400), "
        f"{report['docs_per_file']} documents a file, all-MiniLM-L6-v2 (fp32, CPU), id + "
        f"384 floats written as Parquet. Cold: process start to exit.",
        "",
        f"| system | {lo:,} docs s | {hi:,} docs s | steady docs/s | peak MB at {hi:,} |",
        "|---|---|---|---|---|",
    ]
    for variant, r in v.items():
        steady = r["steady_docs_per_s"]
        lines.append(
            f"| {LABELS[variant]} | {r[str(lo)]['cold_seconds']:.1f} | "
            f"{r[str(hi)]['cold_seconds']:.1f} | {f'{steady:.1f}' if steady else '-'} | "
            f"{r[str(hi)]['peak_pss_mb']:,.0f} |"
        )
    lines.append("")
    ours = v.get("ours")
    for peer in v:
        if peer == "ours" or ours is None:
            continue
        cold = v[peer][str(hi)]["cold_seconds"] / ours[str(hi)]["cold_seconds"]
        s_ours, s_peer = ours["steady_docs_per_s"], v[peer]["steady_docs_per_s"]
        steady = f"{s_ours / s_peer:.2f}x" if s_ours and s_peer else "-"
        lines.append(f"- dask-batchinfer against {LABELS[peer]}: {steady} its docs/s steady, "
                     f"{cold:.2f}x faster cold at {hi:,} docs")  # fmt: skip
    diffs = ", ".join(f"{LABELS[k]} {d:.1e}" for k, d in report["max_abs_diff_vs_l1"].items())
    lines.append(f"- outputs against the careful loop (max abs difference): {diffs}")
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
