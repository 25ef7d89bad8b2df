"""Per-partition costs at many partitions: client CPU, scheduler CPU, worker time, memory (#27).

    python -m benchmarks.scale                       # the cases below, this checkout
    python -m benchmarks.scale --before ../old-tree  # the same cases with another checkout's
                                                     # package too, side by side in one run
    python -m benchmarks.scale --rss                 # client peak memory, 1,000 vs 100,000
    python -m benchmarks.scale --workers 32          # many workers on loopback
    python -m benchmarks.scale --one '{"layout": "files", "partitions": 500}' --profile 25

Each case starts a ``dask scheduler`` and one-thread ``dask worker`` processes
with the ``dask`` command line (the scheduler its own process, as on a real
cluster), runs a null model (``from_callable``: one float per row) over
Parquet input and measures around ``run_job``: wall time, the client
process's CPU (``getrusage``: its threads, the event loop's included) and the
scheduler's, per partition; the workers' busy time per partition by stage
(from the job's own statistics); tasks sent per partition; the client's peak
resident memory. Layouts: ``rowgroups`` (one file of N row groups, a partition
each) and ``files`` (N files, a partition each). Each case runs in a fresh
process (peak memory is per process). Writes ``benchmarks/results/scale-cpu.{json,md}``
(``--rss``: ``scale-rss``, ``--workers``: ``scale-workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed.diagnostics.plugin import SchedulerPlugin

CASES = [
    {"layout": "rowgroups", "partitions": 2000, "rows": 100},
    {"layout": "files", "partitions": 10000, "rows": 100},
]
RSS_CASES = [
    {"layout": "rowgroups", "partitions": 1000, "rows": 10, "files": 1},
    {"layout": "rowgroups", "partitions": 10000, "rows": 10, "files": 10},
    {"layout": "rowgroups", "partitions": 100000, "rows": 10, "files": 100},
]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _scheduler_cpu(dask_scheduler=None) -> float:  # noqa: ANN001 - run_on_scheduler's name
    return _cpu()  # run in the scheduler's process


class TaskCount(SchedulerPlugin):
    """A scheduler plugin: the tasks of partitions received (not placeholders nor loads)."""

    name = "bench-task-count"

    def __init__(self) -> None:
        self.tasks = 0

    def update_graph(self, scheduler, *, keys, tasks, **kwargs) -> None:  # noqa: ANN001
        self.tasks += sum(1 for k in tasks if "-waiting-" not in str(k) and "-load-" not in str(k))


def _tasks_seen(dask_scheduler=None) -> int:  # noqa: ANN001 - run_on_scheduler's name
    return dask_scheduler.plugins["bench-task-count"].tasks


def null_batch(batch: pd.DataFrame) -> np.ndarray:
    return np.zeros(len(batch), dtype=np.float32)


@contextlib.contextmanager
def _cluster(folder: str, workers: int = 2, package: str | None = None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    address = f"tcp://127.0.0.1:{port}"
    # run_on_scheduler imports this module; the workers the package under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package, os.getcwd()) if p)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    local = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    scheduler = [dask, "scheduler", "--port", str(port), "--no-show", *local]
    processes = [subprocess.Popen(scheduler, cwd=folder, **quiet)]
    time.sleep(2)
    os.makedirs(os.path.join(folder, "w"), exist_ok=True)
    worker = [dask, "worker", address, "--nthreads", "1", "--nworkers", str(workers), *local,
              "--memory-limit", "3GiB" if workers <= 4 else "1GiB"]  # fmt: skip
    processes.append(subprocess.Popen(worker, cwd=os.path.join(folder, "w"), **quiet))
    try:
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _write_input(folder: str, layout: str, partitions: int, rows: int, files: int = 1) -> str:
    source = os.path.join(folder, "input")
    os.makedirs(source)
    rng = np.random.default_rng(0)
    if layout == "files":
        for i in range(partitions):
            ids = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
            pq.write_table(pa.table({"id": ids, "x": rng.random(rows)}),
                           os.path.join(source, f"part-{i:06d}.parquet"))  # fmt: skip
        return source
    per_file = partitions // files
    for f in range(files):
        ids = np.arange(f * per_file * rows, (f + 1) * per_file * rows, dtype=np.int64)
        table = pa.table({"id": ids, "x": rng.random(len(ids))})
        pq.write_table(table, os.path.join(source, f"part-{f:04d}.parquet"), row_group_size=rows)
    return source


def measure(case: dict, profile: int = 0) -> dict:
    """One case, in this process: the job's costs per partition."""
    import dask
    from distributed import Client

    import dask_batchinfer as dbi

    n, rows, workers = case["partitions"], case["rows"], case.get("workers", 2)
    work = tempfile.mkdtemp(prefix="bench-scale-")
    source = _write_input(work, case["layout"], n, rows, case.get("files", 1))
    spec = dbi.from_callable(null_batch, input_columns=["x"], outputs={"y": "float32"})
    config = {"batchinfer.partition-size": f"{rows} rows", "batchinfer.min-partitions": n}
    with (
        _cluster(work, workers, case.get("package")) as address,
        Client(address) as client,
        dask.config.set(config),
    ):
        client.wait_for_workers(workers, timeout=300)
        client.register_plugin(TaskCount())
        # warm-up (imports, connections, the model on the workers) on 4 partitions of the
        # same layout: a filtered job over the whole input would plan all of it, and its
        # peak, not the job's, would be measured
        dbi.run_job(_write_input(os.path.join(work, "warm-up"), case["layout"], 4, rows),
                    spec, output=os.path.join(work, "warm"), progress=False)  # fmt: skip
        profiler = cProfile.Profile() if profile else None
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tasks = client.run_on_scheduler(_tasks_seen)
        cpu, scheduler, start = _cpu(), client.run_on_scheduler(_scheduler_cpu), time.time()
        if profiler:
            profiler.enable()
        result = dbi.run_job(source, spec, output=os.path.join(work, "out"), progress=False)
        if profiler:
            profiler.disable()
        wall = time.time() - start
        cpu, scheduler = _cpu() - cpu, client.run_on_scheduler(_scheduler_cpu) - scheduler
        tasks = client.run_on_scheduler(_tasks_seen) - tasks
    assert result.partitions_run == n and result.rows_out == n * rows, result
    stages = result.stage_seconds()
    report = {
        **{k: v for k, v in case.items() if k != "package"},
        "workers": workers,
        "wall_s": round(wall, 2),
        "partitions_per_s": round(n / wall, 1),
        "client_cpu_ms_per_partition": round(cpu / n * 1000, 3),
        "scheduler_cpu_ms_per_partition": round(scheduler / n * 1000, 3),
        "tasks_per_partition": round(tasks / n, 3),
        "worker_ms_per_partition": {k: round(v / n * 1000, 3) for k, v in stages.items()},
        "worker_busy_ms_per_partition": round(sum(stages.values()) / n * 1000, 3),
        "worker_wall_ms_per_partition": round(wall * workers / n * 1000, 3),
        "client_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "client_rss_before_job_mib": round(rss_before / 1024),
        "report_json_kib": round(os.path.getsize(os.path.join(work, "out", "_report.json")) / 1024),
        "result_files_listed": len(result.files),
        "timeline_records": len(result.timeline),
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(profile)
        report["profile"] = text.getvalue()
    shutil.rmtree(work, ignore_errors=True)
    return report


def _run_case(case: dict, profile: int = 0) -> dict:
    """``measure(case)`` in a fresh process (with ``case["package"]`` first on its path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (case.get("package"), os.getcwd()) if p)
    # as a script: its folder, not this checkout, first on the path, so that PYTHONPATH picks
    # the package (its functions travel by value to the scheduler)
    command = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(case)]
    out = subprocess.run(command + (["--profile", str(profile)] if profile else []),
                         env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="TREE", help="also run another checkout's package")
    parser.add_argument("--rss", action="store_true", help="client memory at 1k/10k/100k")
    parser.add_argument("--workers", type=int, default=0, help="many workers: how many")
    parser.add_argument("--partitions", type=int, default=0, help="override the cases' count")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    if args.one:
        report = measure(json.loads(args.one), args.profile)
        print(report.pop("profile", ""), file=sys.stderr)
        print(json.dumps(report))
        return report
    name, cases = "scale-cpu", [dict(c) for c in CASES]
    if args.rss:
        name, cases = "scale-rss", [dict(c) for c in RSS_CASES]
    elif args.workers:
        name = "scale-workers"
        cases = [{"layout": "rowgroups", "partitions": 5000, "rows": 100, "workers": w}
                 for w in (2, args.workers)]  # fmt: skip
    for case in cases:
        case["partitions"] = args.partitions or case["partitions"]
    variants = [("after", None)] + (
        [("before", os.path.abspath(args.before))] if args.before else []
    )
    rows = []
    for case in cases:
        for label, package in variants:
            report = _run_case({**case, "package": package} if package else case)
            rows.append({"code": label, **report})
            print(json.dumps(rows[-1]), flush=True)
    results = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": rows}
    _write(name, results)
    return results


COLUMNS = [
    ("code", "code"),
    ("layout", "layout"),
    ("partitions", "partitions"),
    ("rows", "rows each"),
    ("workers", "workers"),
    ("wall_s", "wall s"),
    ("partitions_per_s", "partitions/s"),
    ("client_cpu_ms_per_partition", "client CPU ms/partition"),
    ("scheduler_cpu_ms_per_partition", "scheduler CPU ms/partition"),
    ("tasks_per_partition", "tasks/partition"),
    ("worker_busy_ms_per_partition", "worker stages ms/partition"),
    ("worker_wall_ms_per_partition", "worker wall ms/partition"),
    ("client_peak_rss_mib", "client peak RSS MiB"),
    ("report_json_kib", "_report.json KiB"),
]


def _write(name: str, results: dict) -> None:
    folder = os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    command = {"scale-cpu": "", "scale-rss": " --rss", "scale-workers": " --workers N"}[name]
    lines = [
        "# Per-partition costs at many partitions",
        "",
        f"{results['when']}; `python -m benchmarks.scale{command}`"
        " on 2 cores: a `dask scheduler` and one-thread `dask worker`s started with the command "
        "line, a null model. `code`: this checkout (after) or `--before` (the package of another "
        "checkout), run side by side. Worker stages: read + preprocess + infer + write per "
        "partition (the null model's infer stage is all overhead); worker wall: wall x workers / "
        "partitions.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for run in results["runs"]:
        lines.append("| " + " | ".join(str(run.get(key, "")) for key, _ in COLUMNS) + " |")
    lines += ["", "Worker stage times (ms per partition):", ""]
    for run in results["runs"]:
        lines.append(f"- {run['code']} {run['layout']} {run['partitions']:,}: "
                     f"{run['worker_ms_per_partition']}")  # fmt: skip
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
