"""The client's peak memory when it resumes a job of many partitions.

    python -m benchmarks.resume_memory                  # 100,000 partitions
    python -m benchmarks.resume_memory --partitions 10000

One job of N 10-row partitions (1,000 row groups a file, a null model) on a
cluster started with the ``dask`` command line, then, each run in a fresh
process against the same output: a re-run of the finished job (it reads every
marker and the manifest, then stops), and a resume after ``_SUCCESS`` and half
the markers were deleted (it reads the other half and runs the rest). Each
reports its peak RSS and the RSS before its job (after a 4-partition
warm-up). Results: ``benchmarks/results/resume-rss.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

from benchmarks.scale import _cluster, _write_input, null_batch

RUNS = ("job", "finished re-run", "resume of half")


def _one(source: str, output: str, address: str, partitions: int) -> dict:
    """One run of the job, in this process: its peak RSS."""
    import dask
    from distributed import Client

    import dask_batchinfer as dbi

    spec = dbi.from_callable(null_batch, input_columns=["x"], outputs={"y": "float32"})
    config = {"batchinfer.partition-size": "10 rows", "batchinfer.min-partitions": partitions}
    warm = tempfile.mkdtemp(prefix="bench-resume-warm-")
    with Client(address) as client, dask.config.set(config):
        dbi.run_job(_write_input(warm, "rowgroups", 4, 10), spec,
                    output=os.path.join(warm, "out"), client=client, progress=False)  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        result = dbi.run_job(source, spec, output=output, client=client, progress=False)
        wall = time.perf_counter() - start
    shutil.rmtree(warm, ignore_errors=True)
    return {
        "partitions_run": result.partitions_run,
        "partitions_skipped": result.partitions_skipped,
        "wall_s": round(wall, 1),
        "rss_before_job_mib": round(before / 1024),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=100_000)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        source, output, address, n = args.one
        print(json.dumps(_one(source, output, address, int(n))))
        return {}
    n = args.partitions
    work = tempfile.mkdtemp(prefix="bench-resume-")
    source = _write_input(work, "rowgroups", n, 10, max(1, n // 1000))
    output = os.path.join(work, "out")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    runs = []
    with _cluster(work) as address:
        for name in RUNS:
            if name == "resume of half":
                os.remove(os.path.join(output, "_SUCCESS"))
                markers = sorted(os.listdir(os.path.join(output, "_committed")))
                for marker in markers[::2]:
                    os.remove(os.path.join(output, "_committed", marker))
            command = [sys.executable, "-m", "benchmarks.resume_memory", "--one",
                       source, output, address, str(n)]  # fmt: skip
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
            runs.append({"run": name, "partitions": n, **json.loads(out.stdout.splitlines()[-1])})
            print(json.dumps(runs[-1]), flush=True)
    manifest_mib = round(os.path.getsize(os.path.join(output, "_SUCCESS")) / 2**20, 1)
    shutil.rmtree(work, ignore_errors=True)
    results = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest_mib": manifest_mib,
        "runs": runs,
    }
    _write(results)
    return results


def _write(results: dict) -> None:
    folder = os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(folder, "resume-rss.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = [
        "# The client's memory when it resumes",
        "",
        f"{results['when']}; `python -m benchmarks.resume_memory` on 2 cores: a `dask "
        "scheduler` and one-thread `dask worker`s started with the command line, a null model, "
        "10-row partitions, each run in a fresh process against the same output. "
        f"`_SUCCESS`: {results['manifest_mib']} MiB.",
        "",
        "| run | partitions | run / skipped | wall s | RSS before the job MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['run']} | {r['partitions']:,} | {r['partitions_run']:,} / "
            f"{r['partitions_skipped']:,} | {r['wall_s']} | {r['rss_before_job_mib']} | "
            f"{r['peak_rss_mib']} |"
        )
    with open(os.path.join(folder, "resume-rss.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
