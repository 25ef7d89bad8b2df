"""Where a cold job's time goes: a breakdown from process start to exit.

    python -m benchmarks.profile_startup                 # W1-h256, 1M rows in 16 files
    python -m benchmarks.profile_startup --rows 4000000 --reps 3
    python -m benchmarks.profile_startup --workload W2-minilm --rows 1000
    python -m benchmarks.profile_startup --engine processes   # force an engine
    python -m benchmarks.profile_startup --second-job   # and a second job in the same process

Each repetition runs ``run_job`` in a fresh process, as a user's script does,
and prints when each phase ended, in seconds from the process's start (the
median over repetitions) and how long it took: interpreter start and the
client's imports, the phases ``run_job`` records (``JobResult.phases``: input
listing, output state, cluster start, workers ready, checks, model loaded,
first read, first and last commit, cluster released, manifest, garbage
collection, report), the return to the caller, and interpreter exit (atexit
handlers, e.g. closing a cluster kept for reuse). The hand-written loop
(``benchmarks.variant l1``) runs beside it for the baseline.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(workload_name: str, input_dir: str, output_dir: str, record: str) -> None:
    """The profiled process: import, run the job, note the times."""
    import psutil

    started = psutil.Process().create_time()
    times: dict[str, float] = {"python started": time.time() - started}
    import dask_batchinfer as dbi

    times["dask_batchinfer imported"] = time.time() - started
    from benchmarks.workloads import WORKLOADS

    workload = WORKLOADS[workload_name]
    spec = workload.spec()
    times["torch imported, spec built"] = time.time() - started
    called = time.time() - started
    result = dbi.run_job(input_dir, spec, output=output_dir, keep=[workload.id_column],
                         progress=False)  # fmt: skip
    returned = time.time() - started
    for phase, seconds in result.phases.items():
        times[f"run_job: {phase}"] = called + seconds
    times["run_job returned"] = returned
    if os.environ.get("PROFILE_SECOND_JOB"):  # the same job again, to a new output
        again = dbi.run_job(input_dir, spec, output=output_dir + "-second",
                            keep=[workload.id_column], progress=False)  # fmt: skip
        for phase in ("cluster", "model loaded", "first read started", "report saved"):
            times[f"second job: {phase} (from its call)"] = again.phases[phase]

    def at_exit() -> None:  # runs before the handlers registered earlier (dask's)
        times["interpreter exit began"] = time.time() - started
        with open(record, "w") as f:
            json.dump({"times": times, "rows": result.rows_out}, f)

    atexit.register(at_exit)


def _run(args: list[str], env: dict[str, str]) -> float:
    import psutil

    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    created = psutil.Process(process.pid).create_time()
    _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"{args} failed:\n{err[-3000:]}")
    return time.time() - created


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W1-h256")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--engine", choices=("auto", "threads", "processes"), default=None)
    parser.add_argument("--no-loop", action="store_true", help="leave out the hand loop")
    parser.add_argument("--second-job", action="store_true",
                        help="run the job twice in the process; the second's phases")  # fmt: skip
    args = parser.parse_args(argv)
    from benchmarks import run

    if args.workload.startswith("W1"):
        folder = run.prepare_layout(args.rows, files=args.files)
    else:
        folder = run.prepare(args.workload, args.rows, max(1, args.rows // args.files))
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    if args.engine:
        env["DASK_BATCHINFER__ENGINE"] = args.engine
    if args.second_job:
        env["PROFILE_SECOND_JOB"] = "1"
    profiles, loops = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for rep in range(args.reps):
            record = os.path.join(scratch, f"times-{rep}.json")
            out = os.path.join(scratch, f"out-{rep}")
            total = _run([sys.executable, "-m", "benchmarks.profile_startup", "--child",
                          args.workload, folder, out, record], env)  # fmt: skip
            with open(record) as f:
                profile = json.load(f)
            profile["times"]["process exited"] = total
            profiles.append(profile["times"])
            if not args.no_loop:
                loop = os.path.join(scratch, f"loop-{rep}")
                loops.append(_run([sys.executable, "-m", "benchmarks.variant", "l1",
                                   args.workload, folder, loop], env))  # fmt: skip
    names = list(dict.fromkeys(n for p in profiles for n in p))
    medians = {n: statistics.median(p[n] for p in profiles if n in p) for n in names}
    ordered = sorted(medians.items(), key=lambda item: item[1])
    print(f"{args.workload}, {args.rows:,} rows in {args.files} files, median of {args.reps} "
          f"cold runs (engine: {args.engine or 'default'})")  # fmt: skip
    print(f"{'phase ended':<42} {'at s':>7} {'took s':>7}")
    previous = 0.0
    for name, at in ordered:
        if name.startswith("second job"):
            continue
        print(f"{name:<42} {at:>7.2f} {at - previous:>7.2f}")
        previous = at
    for name, at in ordered:
        if name.startswith("second job"):
            print(f"{name:<56} {at:>7.3f}")
    summary = {"workload": args.workload, "rows": args.rows, "engine": args.engine,
               "phases": dict(ordered)}  # fmt: skip
    if loops:
        summary["hand_loop_seconds"] = statistics.median(loops)
        ratio = medians["process exited"] / summary["hand_loop_seconds"]
        print(f"hand-written loop (benchmarks.variant l1): {summary['hand_loop_seconds']:.2f} s; "
              f"dask-batchinfer / loop: {ratio:.2f}x")  # fmt: skip
    return summary


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:6])
    else:
        main()
