"""Per-partition costs at many partitions: client CPU, scheduler CPU, wall (#27).

    python -m benchmarks.scale                 # 2,000 partitions of 100 rows
    python -m benchmarks.scale --partitions 500 --profile 25

A scheduler and 2 single-thread workers started with the ``dask`` command line
(so the scheduler is its own process, as on a real cluster), a null model
(``from_callable``: one float per row), one Parquet file of ``partitions``
row groups of 100 rows read as one partition per row group. Measured around
``run_job``: wall time, the client process's CPU (``getrusage``) and the
scheduler's, per partition; with ``--profile N`` the client's cProfile, its N
most expensive functions by own time. Writes
``benchmarks/results/scale-cpu.{json,md}``.
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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _scheduler_cpu(dask_scheduler=None) -> float:  # noqa: ANN001 - run_on_scheduler's name
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def null_batch(batch: pd.DataFrame) -> np.ndarray:
    return np.zeros(len(batch), dtype=np.float32)


@contextlib.contextmanager
def _cluster(folder: str, workers: int = 2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    address = f"tcp://127.0.0.1:{port}"
    processes = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
                "--no-show",
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    ]  # run_on_scheduler imports this module
    time.sleep(2)
    for i in range(workers):
        os.makedirs(os.path.join(folder, f"w{i}"), exist_ok=True)
        processes.append(subprocess.Popen(
            [dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
             "--dashboard-address", "127.0.0.1:0", "--memory-limit", "3GiB"],
            cwd=os.path.join(folder, f"w{i}"), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.getcwd()}))  # fmt: skip
    try:
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def main(argv: list[str] | None = None) -> dict:
    import dask
    from distributed import Client

    import dask_batchinfer as dbi

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=2000)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    n, rows = args.partitions, 100
    work = tempfile.mkdtemp(prefix="bench-scale-")
    ids = np.arange(n * rows, dtype=np.int64)
    table = pa.table({"id": ids, "x": np.random.default_rng(0).random(n * rows)})
    pq.write_table(table, os.path.join(work, "input.parquet"), row_group_size=rows)
    spec = dbi.from_callable(null_batch, input_columns=["x"], outputs={"y": "float32"})
    with _cluster(work) as address, Client(address) as client:
        client.wait_for_workers(2, timeout=60)
        with dask.config.set({"batchinfer.partition-size": f"{rows} rows", "batchinfer.adaptive-lookahead": int(os.environ.get("LOOKAHEAD", 1000)), "batchinfer.inflight-per-thread": int(os.environ.get("INFLIGHT", 2))}):
            source = os.path.join(work, "input.parquet")
            dbi.run_job(source, spec, output=os.path.join(work, "warm"), progress=False,
                        filters=[("id", "<", rows * 4)])  # fmt: skip
            profiler = cProfile.Profile() if args.profile else None
            cpu, scheduler, start = _cpu(), client.run_on_scheduler(_scheduler_cpu), time.time()
            if profiler:
                profiler.enable()
            result = dbi.run_job(source, spec, output=os.path.join(work, "out"), progress=False)
            if profiler:
                profiler.disable()
            wall = time.time() - start
            cpu, scheduler = _cpu() - cpu, client.run_on_scheduler(_scheduler_cpu) - scheduler
    assert result.partitions_run == n, result
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "partitions": n,
        "rows_per_partition": rows,
        "wall_s": round(wall, 2),
        "partitions_per_s": round(n / wall, 1),
        "client_cpu_ms_per_partition": round(cpu / n * 1000, 2),
        "scheduler_cpu_ms_per_partition": round(scheduler / n * 1000, 2),
        "profiled": bool(args.profile),
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
        report["profile"] = text.getvalue()
    shutil.rmtree(work, ignore_errors=True)
    _write(report)
    print(json.dumps({k: v for k, v in report.items() if k != "profile"}, indent=1))
    print(report.get("profile", ""))
    return report


def _write(report: dict) -> None:
    folder = os.path.join(os.path.dirname(__file__), "results")
    name = "scale-cpu-profile" if report["profiled"] else "scale-cpu"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [
        "# Per-partition costs at many partitions",
        "",
        f"{report['partitions']:,} partitions of {report['rows_per_partition']} rows (row groups "
        f"of one file), a null model, a `dask scheduler` and 2 one-thread `dask worker`s "
        f"on 2 cores; {report['when']}; `python -m benchmarks.scale`"
        + (" (under cProfile: the client's times are inflated)" if report["profiled"] else "")
        + ".",
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall | {report['wall_s']} s ({report['partitions_per_s']} partitions/s) |",
        f"| client CPU per partition | {report['client_cpu_ms_per_partition']} ms |",
        f"| scheduler CPU per partition | {report['scheduler_cpu_ms_per_partition']} ms |",
    ]
    if report.get("profile"):
        lines += ["", "```", report["profile"].strip(), "```"]
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
