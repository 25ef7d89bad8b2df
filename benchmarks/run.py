"""The benchmark suite: every workload against the limit, a hand loop and Ray Data.

    python -m benchmarks.run            # default sizes (about 20 minutes on 2 cores)
    python -m benchmarks.run --smoke    # tiny sizes, one repetition: checks the code runs
    python -m benchmarks.run --full     # the sizes of the issue (hours on 2 cores)
    python -m benchmarks.run --smoke --jobs 2   # 2 variant processes at a time (code check only)
    python -m benchmarks.run --suite inputs [--smoke]   # input layout and column projection
    python -m benchmarks.run --suite scale [--smoke]    # per-partition costs (benchmarks.scale,
                                                        # benchmarks.footers)

Each variant runs in its own process (``benchmarks/variant.py``), timed from
process start to committed output, with the process tree's PSS sampled every
0.2 s. Variants are interleaved (A B A B ..., order flipped every repetition)
and medians reported. Steady-state rows/s is the slope between the two input
sizes, so start-up costs cancel. Results go to ``benchmarks/results/``.
``--jobs N`` runs up to N variant processes at once: quicker, but they compete
for the CPUs, so the numbers mean nothing (a check that the code runs, as in
the test suite); it needs ``--reps 1``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, ".data")
RESULTS = os.path.join(HERE, "results")

SIZES = {
    "smoke": {"W1-h256": (4_000, 8_000), "W1-h1024": (4_000, 8_000), "W2-minilm": (60, 120),
              "W3-cnn": (200, 400)},
    "default": {"W1-h256": (500_000, 2_000_000), "W1-h1024": (500_000, 2_000_000),
                "W2-minilm": (1_000, 4_000), "W3-cnn": (5_000, 20_000)},
    "full": {"W1-h256": (1_000_000, 4_000_000, 16_000_000),
             "W1-h1024": (1_000_000, 4_000_000, 16_000_000),
             "W2-minilm": (50_000, 200_000), "W3-cnn": (20_000, 50_000)},
}  # fmt: skip
ROWS_PER_FILE = {"smoke": {"W1": 2_000, "W2": 30, "W3": 100}}


def _pss_tree(pid: int) -> int:
    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in processes:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_variant(variant: str, workload: str, input_dir: str, output_dir: str) -> dict:
    """Run one variant in a fresh process; return its JSON plus peak PSS (bytes)."""
    shutil.rmtree(output_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1",
           "RAY_DEDUP_LOGS": "0"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.variant", variant, workload, input_dir, output_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _pss_tree(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} on {workload} failed:\n{stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :]) | {"peak_pss": peak}


def prepare(workload: str, rows: int, rows_per_file: int) -> str:
    from benchmarks.workloads import WORKLOADS

    key = "W2long" if workload == "W2-long" else workload.split("-")[0]  # data, not model
    folder = os.path.join(DATA, f"{key}-{rows}-{rows_per_file}")
    if not os.path.exists(os.path.join(folder, "_READY")):
        shutil.rmtree(folder, ignore_errors=True)
        WORKLOADS[workload].write(folder, rows, rows_per_file)
        open(os.path.join(folder, "_READY"), "w").close()
    return folder


def _correctness(workload: str, ours_dir: str, l0_prefix: str) -> dict:
    import pandas as pd

    expected = np.load(l0_prefix + ".npy")
    ids = np.load(l0_prefix + ".ids.npy")
    back = pd.read_parquet(ours_dir)
    back = back.set_index("id").loc[ids]
    column = [c for c in back.columns if c not in ("id",)][0]
    got = (
        np.stack(back[column].to_numpy())
        if back[column].dtype == object
        else back[column].to_numpy()
    )
    diff = np.abs(got.reshape(expected.shape) - expected)
    return {"same_ids": bool(len(back) == len(ids)), "max_abs_diff": float(np.max(diff))}


class Runner:
    """Runs variants in the order started, up to ``jobs`` processes at a time."""

    def __init__(self, jobs: int = 1) -> None:
        self.pool = ThreadPoolExecutor(max_workers=jobs)

    def start(self, label: str, variant: str, workload: str, input_dir: str,
              output_dir: str) -> Future:  # fmt: skip
        def go() -> dict:
            print(f"  {label}", flush=True)
            return run_variant(variant, workload, input_dir, output_dir)

        return self.pool.submit(go)


def bench_workload(workload: str, mode: str, reps: int, variants: list[str],
                   runner: Runner | None = None) -> dict:  # fmt: skip
    from benchmarks.workloads import WORKLOADS

    runner = runner or Runner()
    sizes = SIZES[mode][workload]
    per_file = ROWS_PER_FILE.get(mode, {}).get(workload[:2], WORKLOADS[workload].rows_per_file)
    inputs = {n: prepare(workload, n, per_file) for n in sizes}
    scratch = os.path.join(DATA, "out")
    lo, hi = sizes[0], sizes[-1]

    def start(variant: str, n: int, out: str, rep: int = 0) -> Future:
        label = f"{workload} {variant} rows={n} rep={rep + 1}"
        return runner.start(label, variant, workload, inputs[n], os.path.join(scratch, out))

    started: dict[str, dict[int, list[Future]]] = {v: {n: [] for n in sizes} for v in variants}
    for rep in range(reps):
        order = variants if rep % 2 == 0 else variants[::-1]
        for variant in order:
            for n in sizes:
                started[variant][n].append(start(variant, n, f"{variant}-{n}", rep))
    limit_runs = [start("l0", hi, f"l0-{hi}", rep) for rep in range(reps)]
    naive_run = start("naive", lo, "naive")
    runs = {v: {n: [f.result() for f in fs] for n, fs in by.items()} for v, by in started.items()}
    limit = {hi: [f.result() for f in limit_runs]}
    naive = naive_run.result()

    def med(values):
        return statistics.median(values)

    summary: dict = {"workload": workload, "sizes": list(sizes), "rows_per_file": per_file}
    for variant, by_size in runs.items():
        cold = {n: med([r["cold_seconds"] for r in rs]) for n, rs in by_size.items()}
        summary[variant] = {
            "cold_seconds": cold,
            "steady_rows_per_second": (hi - lo) / max(cold[hi] - cold[lo], 1e-9),
            "peak_pss_mb": {
                n: med([r["peak_pss"] for r in rs]) / 2**20 for n, rs in by_size.items()
            },
            "model_loads": med([r.get("model_loads", 0) for r in by_size[lo]]),
            "first_commit_seconds": med([r.get("first_commit_seconds") or 0 for r in by_size[lo]]),
            "startup_seconds": med([r.get("startup_seconds") or 0 for r in by_size[lo]]),
            "import_seconds": med([r.get("import_seconds") or 0 for r in by_size[lo]]),
        }
    summary["l0"] = {
        "rows_per_second": med([hi / r["compute_seconds"] for r in limit[hi]]),
        "best": {k: limit[hi][0][k] for k in ("best_threads", "best_batch_size")},
    }
    summary["naive"] = {"rows_per_second": 1 / naive["per_row_seconds"]}
    if "ours" in runs:
        ours = summary["ours"]
        summary["ratios"] = {
            "ours_vs_l0": ours["steady_rows_per_second"] / summary["l0"]["rows_per_second"],
            "ours_vs_naive": ours["steady_rows_per_second"] / summary["naive"]["rows_per_second"],
        }
        for peer in ("l1", "ray"):
            if peer in summary:
                summary["ratios"][f"ours_vs_{peer}_steady"] = (
                    ours["steady_rows_per_second"] / summary[peer]["steady_rows_per_second"]
                )
                summary["ratios"][f"ours_vs_{peer}_cold"] = (
                    summary[peer]["cold_seconds"][hi] / ours["cold_seconds"][hi]
                )
        pss = ours["peak_pss_mb"]
        summary["ratios"]["memory_growth"] = pss[hi] / pss[lo]
        # the output of the last timed run at the largest size (no extra run)
        summary["correctness"] = _correctness(workload, os.path.join(scratch, f"ours-{hi}"),
                                              os.path.join(scratch, f"l0-{hi}"))  # fmt: skip
    return summary


def small_files(mode: str, reps: int, runner: Runner | None = None) -> dict:
    """W1-h256 on many tiny files versus the same rows in ~60k-row files."""
    runner = runner or Runner()
    rows, tiny = (8_000, 80) if mode == "smoke" else (1_000_000, 1_000)
    big = 2_000 if mode == "smoke" else 60_000
    many, few = prepare("W1-h256", rows, tiny), prepare("W1-h256", rows, big)
    scratch = os.path.join(DATA, "out")
    started: dict[str, list[Future]] = {"many": [], "few": []}
    for rep in range(reps):
        for name, folder in (("few", few), ("many", many)):
            label = f"small files: W1-h256 ours {name} rep={rep + 1}"
            out = f"{scratch}/small-{name}"
            started[name].append(runner.start(label, "ours", "W1-h256", folder, out))
    times = {name: [f.result()["cold_seconds"] for f in fs] for name, fs in started.items()}
    few_s, many_s = statistics.median(times["few"]), statistics.median(times["many"])
    return {"rows": rows, "files": rows // tiny, "seconds_many": many_s, "seconds_few": few_s,
            "slowdown": many_s / few_s}  # fmt: skip


INPUT_SIZES = {"smoke": (4_000, 16_000), "default": (1_000_000, 4_000_000)}
ROW_GROUP_ROWS = {"smoke": 1_000, "default": 65_536}
INPUT_FILES = 16
WIDE_FEATURES = 512
PROJECTION_ROWS = {"smoke": 4_000, "default": 1_000_000}


def prepare_layout(rows: int, *, files: int = 1, row_group_rows: int | None = None,
                   n_features: int = 64) -> str:  # fmt: skip
    from benchmarks.workloads import write_tabular_layout

    name = f"layout-{rows}-{files}files-rg{row_group_rows or 0}-{n_features}cols"
    folder = os.path.join(DATA, name)
    if not os.path.exists(os.path.join(folder, "_READY")):
        shutil.rmtree(folder, ignore_errors=True)
        write_tabular_layout(folder, rows, files=files, row_group_rows=row_group_rows,
                             n_features=n_features)  # fmt: skip
        open(os.path.join(folder, "_READY"), "w").close()
    return folder


def _outputs(folder: str):
    """A variant's output as a Series of model outputs indexed by id."""
    import pyarrow.dataset as ds

    table = ds.dataset(folder, format="parquet").to_table()
    frame = table.to_pandas()
    value = [c for c in frame.columns if c != "id"][0]
    return frame.set_index("id")[value].sort_index()


def _medians(runs: list[dict]) -> dict:
    return {
        "cold_seconds": statistics.median(r["cold_seconds"] for r in runs),
        "peak_pss_mb": statistics.median(r["peak_pss"] for r in runs) / 2**20,
        "runs": [{"cold_seconds": r["cold_seconds"], "peak_pss_mb": r["peak_pss"] / 2**20,
                  "rows": r["rows"]} for r in runs],
    }  # fmt: skip


def input_layouts(mode: str, reps: int, variants: list[str], runner: Runner) -> dict:
    """W1-h256 on the same rows as 16 files and as one file of many row groups."""
    sizes = INPUT_SIZES[mode]
    row_group = ROW_GROUP_ROWS[mode]
    layouts = {
        (layout, n): prepare_layout(n, **({"files": INPUT_FILES} if layout == "many_files"
                                          else {"row_group_rows": row_group}))
        for n in sizes for layout in ("many_files", "one_file")
    }  # fmt: skip
    scratch = os.path.join(DATA, "out")
    started: dict[tuple[str, str, int], list[Future]] = {}
    for rep in range(reps):  # A B C D, then D C B A: every variant sees both halves of the run
        order = variants if rep % 2 == 0 else variants[::-1]
        for variant in order:
            for (layout, n), folder in layouts.items():
                label = f"inputs: W1-h256 {variant} {layout} rows={n} rep={rep + 1}"
                out = os.path.join(scratch, f"inputs-{variant}-{layout}-{n}")
                future = runner.start(label, variant, "W1-h256", folder, out)
                started.setdefault((variant, layout, n), []).append(future)
    runs = {key: [f.result() for f in fs] for key, fs in started.items()}
    result: dict = {"workload": "W1-h256", "sizes": list(sizes), "files": INPUT_FILES,
                    "row_group_rows": row_group, "variants": {}}  # fmt: skip
    for (variant, layout, n), rs in runs.items():
        if any(r["rows"] != n for r in rs):
            raise RuntimeError(
                f"{variant} on {layout} wrote {[r['rows'] for r in rs]} rows, not {n}"
            )
        by = result["variants"].setdefault(variant, {}).setdefault(layout, {})
        by[str(n)] = _medians(rs)
    # outputs of the last run at the largest size, against the row-group hand loop
    hi = str(sizes[-1])
    correct = {}
    for layout in ("many_files", "one_file"):
        reference = _outputs(os.path.join(scratch, f"inputs-l1rg-{layout}-{hi}"))
        for variant in variants:
            got = _outputs(os.path.join(scratch, f"inputs-{variant}-{layout}-{hi}"))
            same = bool(got.index.equals(reference.index))
            diff = float(np.max(np.abs(got.to_numpy() - reference.to_numpy()))) if same else None
            correct[f"{variant}/{layout}"] = {"same_ids": same, "max_abs_diff": diff}
    result["correctness"] = correct
    result["ratios"] = _layout_ratios(result, sizes)
    return result


def _layout_ratios(result: dict, sizes: tuple[int, ...]) -> dict:
    v = result["variants"]
    lo, hi = str(sizes[0]), str(sizes[-1])
    ratios: dict = {"one_vs_many_files": {}}
    for variant, by in v.items():
        ratios["one_vs_many_files"][variant] = {
            n: {"time": by["one_file"][n]["cold_seconds"] / by["many_files"][n]["cold_seconds"],
                "memory": by["one_file"][n]["peak_pss_mb"] / by["many_files"][n]["peak_pss_mb"]}
            for n in (lo, hi)
        }  # fmt: skip
    if "ours" in v:
        ours = v["ours"]["one_file"]
        for peer in ("daft", "ray", "l1rg"):
            if peer in v:  # above 1: ours takes longer (uses more memory) than the peer
                ratios[f"ours_vs_{peer}_one_file"] = {
                    n: {"time": ours[n]["cold_seconds"] / v[peer]["one_file"][n]["cold_seconds"],
                        "memory": ours[n]["peak_pss_mb"] / v[peer]["one_file"][n]["peak_pss_mb"]}
                    for n in (lo, hi)
                }  # fmt: skip
        ratios["ours_memory_hi_vs_lo"] = {
            layout: v["ours"][layout][hi]["peak_pss_mb"] / v["ours"][layout][lo]["peak_pss_mb"]
            for layout in ("many_files", "one_file")
        }
    return ratios


def column_projection(mode: str, reps: int, runner: Runner) -> dict:
    """dask-batchinfer on a 512-column table whose model reads 64 columns, versus 64 columns."""
    rows = PROJECTION_ROWS[mode]
    tables = {
        "narrow": prepare_layout(rows, files=INPUT_FILES),
        "wide": prepare_layout(rows, files=INPUT_FILES, n_features=WIDE_FEATURES),
    }
    scratch = os.path.join(DATA, "out")
    started: dict[str, list[Future]] = {"narrow": [], "wide": []}
    for rep in range(reps):
        order = ("narrow", "wide") if rep % 2 == 0 else ("wide", "narrow")
        for name in order:
            label = f"projection: W1-h256 ours {name} rows={rows} rep={rep + 1}"
            out = os.path.join(scratch, f"projection-{name}")
            started[name].append(runner.start(label, "ours", "W1-h256", tables[name], out))
    runs = {name: _medians([f.result() for f in fs]) for name, fs in started.items()}
    return {
        "rows": rows, "files": INPUT_FILES, "columns": {"narrow": 64, "wide": WIDE_FEATURES},
        "read_columns": 64, **runs,
        "time_ratio": runs["wide"]["cold_seconds"] / runs["narrow"]["cold_seconds"],
        "memory_ratio": runs["wide"]["peak_pss_mb"] / runs["narrow"]["peak_pss_mb"],
    }  # fmt: skip


def cold_summary(runs: dict, variants: list[str], lo: int, hi: int, rate: str) -> dict:
    """Per variant and size, the medians of cold seconds and peak PSS (MB) and the runs'
    cold seconds; ``rate``: the steady rows per second between the two sizes (the slope).

    ``runs`` maps ``(variant, size)`` to the runs' results (:func:`run_variant`'s dicts).
    """
    results: dict[str, dict] = {}
    for variant in variants:
        results[variant] = {}
        for n in (lo, hi):
            rs = runs[(variant, n)]
            assert all(r["rows"] == n for r in rs), (variant, n, [r["rows"] for r in rs])
            results[variant][str(n)] = {
                "cold_seconds": statistics.median(r["cold_seconds"] for r in rs),
                "peak_pss_mb": statistics.median(r["peak_pss"] for r in rs) / 2**20,
                "runs": [r["cold_seconds"] for r in rs],
            }
        cold = results[variant]
        slope = cold[str(hi)]["cold_seconds"] - cold[str(lo)]["cold_seconds"]
        results[variant][rate] = (hi - lo) / slope if slope > 0 else None
    return results


def interleaved(runner: Runner, reps: int, variants: list[str], folders: dict[int, str],
                workload: str, name: str, unit: str) -> dict:  # fmt: skip
    """Every variant on every folder ``reps`` times, in the order A B C, then C B A (every
    variant sees both halves of the run); each run writes ``out/<name>-<variant>-<size>``.

    Returns the runs' results by ``(variant, size)`` once all are done; the runner's pool
    is shut down either way (after a failed run, the runs not yet started never start).
    """
    started: dict[tuple[str, int], list[Future]] = {}
    try:
        for rep in range(reps):
            for variant in variants if rep % 2 == 0 else variants[::-1]:
                for n, folder in folders.items():
                    label = f"{name}: {variant} {unit}={n} rep={rep + 1}"
                    out = os.path.join(DATA, "out", f"{name}-{variant}-{n}")
                    started.setdefault((variant, n), []).append(
                        runner.start(label, variant, workload, folder, out))  # fmt: skip
        return {key: [f.result() for f in futures] for key, futures in started.items()}
    finally:
        runner.pool.shutdown(cancel_futures=True)


def _git_commit(*paths: str) -> str | None:
    """The checkout's commit, or the last one that changed ``paths``."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h", "--", *paths],
                             check=True, capture_output=True, text=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def inputs_suite(mode: str, reps: int, args: argparse.Namespace, runner: Runner) -> dict:
    variants = ["ours", "l1rg"]
    for peer in ("ray", "daft"):
        skipped = peer in args.skip or (peer == "ray" and args.no_ray)
        if importlib.util.find_spec(peer) is not None and not skipped:
            variants.append(peer)
    report = {
        "suite": "inputs", "mode": mode, "reps": reps, "jobs": args.jobs, "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(), "package_commit": _git_commit("dask_batchinfer"),
        "variants": variants,
        "load_average_at_start": os.getloadavg(),
        "versions": _versions(variants),
    }  # fmt: skip
    os.makedirs(args.results, exist_ok=True)
    try:
        print("input layouts ...", flush=True)
        report["layouts"] = input_layouts(mode, reps, variants, runner)
        with open(os.path.join(args.results, f"inputs-{mode}.partial.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)  # survives an interrupted run
        print("column projection ...", flush=True)
        report["projection"] = column_projection(mode, reps, runner)
    finally:
        runner.pool.shutdown(cancel_futures=True)
    report["load_average_at_end"] = os.getloadavg()
    if args.note:
        report["note"] = args.note
    from benchmarks.report import write_inputs_report

    write_inputs_report(report, args.results)
    return report


def _versions(variants: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = {"ours": "dask", "l1rg": "torch", "ray": "ray", "daft": "daft"}
    found = {}
    for name in ["pyarrow", *(names[v] for v in variants)]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def torch_import_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="mode")
    parser.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--workloads", nargs="+", default=list(SIZES["default"]))
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--suite",
        choices=("default", "inputs", "scale"),
        default="default",
        help="inputs: input layout (many files / one file) and column projection; scale: "
        "client and scheduler CPU per partition, footers parsed once",
    )
    parser.add_argument("--skip", nargs="+", default=[], choices=("ray", "daft"),
                        help="peers to leave out of the inputs suite")  # fmt: skip
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--note", help="a note for the inputs suite's report")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="variant processes at a time (timings then mean nothing)",
    )
    args = parser.parse_args(argv)
    mode = args.mode or "default"
    reps = args.reps or (1 if mode == "smoke" else 3)
    if args.jobs < 1 or (args.jobs > 1 and reps != 1):
        parser.error("--jobs: 1, or more with one repetition (--smoke or --reps 1)")
    runner = Runner(args.jobs)
    if args.suite == "inputs":
        return inputs_suite(mode, reps, args, runner)
    if args.suite == "scale":
        from benchmarks import footers, scale

        partitions = "200" if mode == "smoke" else "2000"
        return {"scale": scale.main(["--partitions", partitions]), "footers": footers.main()}
    variants = ["ours", "l1"]
    has_ray = importlib.util.find_spec("ray") is not None
    if has_ray and not args.no_ray:
        variants.append("ray")
    report = {
        "mode": mode, "reps": reps, "jobs": args.jobs, "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ray": "measured" if "ray" in variants else "skipped (not installed, or --no-ray)",
        "torch_import_seconds": torch_import_seconds(),
        "workloads": {},
    }  # fmt: skip
    os.makedirs(args.results, exist_ok=True)
    try:
        for workload in args.workloads:
            print(f"{workload} ...", flush=True)
            report["workloads"][workload] = bench_workload(workload, mode, reps, variants, runner)
            with open(os.path.join(args.results, f"{mode}.partial.json"), "w") as f:
                json.dump(report, f, indent=1, default=str)  # survives an interrupted run
        report["small_files"] = small_files(mode, reps, runner)
    finally:  # after a failed run, the runs not yet started never start
        runner.pool.shutdown(cancel_futures=True)
    from benchmarks.report import write_report

    write_report(report, args.results)
    return report


if __name__ == "__main__":
    main()
