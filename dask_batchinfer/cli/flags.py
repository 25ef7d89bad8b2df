"""The options of the ``dask-batchinfer`` command, in argument groups.

Choices come from where they are defined (:data:`dask_batchinfer.job.options.JOB_MODES`,
:data:`~dask_batchinfer.job.options.ON_ERROR`, :data:`dask_batchinfer.cluster.local.KINDS`,
:data:`dask_batchinfer.report.progress.PROGRESS_MODES`), so the command cannot drift from the API.
"""

from __future__ import annotations

import argparse
from typing import Any

from dask_batchinfer.cli.jobfile import json_list, json_object
from dask_batchinfer.cluster.local import KINDS as CLUSTER_KINDS
from dask_batchinfer.io.read import FINGERPRINTS, FORMATS
from dask_batchinfer.job.options import JOB_MODES, ON_ERROR
from dask_batchinfer.report.progress import PROGRESS_MODES

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``dask-batchinfer`` parser: ``run``, ``status`` and ``demo``."""
    parser = argparse.ArgumentParser(
        prog="dask-batchinfer",
        description="Offline batch inference on Dask: Parquet in, partitioned Parquet out.",
        epilog="Exit codes: 0 success, 1 job failed, 2 usage error, 3 too many bad rows, "
        "4 (status) output partial or last run failed, 5 another job holds the output.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a batch inference job",
        description="Read Parquet input, run a model on every row, write partitioned Parquet.",
    )
    io = run.add_argument_group("input and output")
    _io_arguments(io)
    _reading_arguments(io)
    job = run.add_argument_group("job")
    _job_arguments(job)
    _timeout_argument(job)
    _cluster_arguments(run.add_argument_group("cluster"))
    _display_arguments(run.add_argument_group("display"))
    status = commands.add_parser(
        "status",
        help="summarise an output folder (complete, partial, failed) from its manifest",
        description="Read an output's manifest, markers and last report; print a summary. "
        "Exit code 0 when complete, 4 when partial or the last run failed, 5 while a job "
        "is running on it, 2 when missing.",
    )
    status.add_argument("output", metavar="OUTPUT", help="the output folder (local or s3://)")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.add_argument("--storage-options", type=json_object, metavar="JSON",
                        help="fsspec options, as for run")  # fmt: skip

    _demo_parser(commands)
    return parser


def _io_arguments(group: Any) -> None:
    group.add_argument(
        "--input",
        metavar="PATH",
        help="Parquet file or folder (hive folders such as date=2026-11-29/ are columns), CSV "
        "or JSON Lines files (.csv, .jsonl, .csv.gz ...), or a glob of files read as rows "
        "(path, size, bytes); local or s3://bucket/prefix",
    )
    group.add_argument(
        "--output",
        metavar="PATH",
        help="output folder, local or s3://; gets part-<input>-<id>.parquet files, a _SUCCESS "
        "manifest and a _report.json/_report.html",
    )
    group.add_argument(
        "--model",
        metavar="MODULE:ATTR",
        help="a dask_batchinfer.ModelSpec, or a function returning one, e.g. mypkg.models:ranker",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="rows per model call (overrides the spec's batch_size)",
    )
    group.add_argument(
        "--preprocess",
        metavar="MODULE:ATTR",
        help="function DataFrame -> DataFrame run on each partition before the model",
    )
    group.add_argument(
        "--keep",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="input columns to write beside the predictions, e.g. ids",
    )
    group.add_argument(
        "--partition-on",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="write hive folders by these columns, e.g. country=FR/",
    )


def _reading_arguments(group: Any) -> None:
    group.add_argument(
        "--format",
        choices=FORMATS,
        help="how to read --input (default: by its name; a folder is Parquet)",
    )
    group.add_argument(
        "--columns",
        nargs="+",
        metavar="COLUMN",
        help="input columns --preprocess needs (default: all with --preprocess); without "
        "--preprocess only the model's input columns, --keep and --partition-on are read",
    )
    group.add_argument(
        "--filters",
        type=json_list,
        metavar="JSON",
        help='rows to read, as in dask.dataframe.read_parquet: \'[["date", "==", "2026-11-29"]]\' '
        "(hive folders and row groups that cannot match are not read)",
    )


def _demo_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="embed a built-in corpus with all-MiniLM-L6-v2 (offline)",
        description="Build a corpus of a few thousand sentences, embed it with "
        "all-MiniLM-L6-v2 on a local cluster and write partitioned Parquet.",
    )
    demo.add_argument(
        "--output",
        default="batchinfer-demo-output",
        metavar="DIR",
        help="folder for the demo's input and embeddings "
        "(default: %(default)s; replaced on each run)",
    )
    demo.add_argument(
        "--docs",
        type=int,
        default=4000,
        metavar="N",
        help="sentences in the corpus (default: %(default)s)",
    )
    demo.add_argument(
        "--partitions",
        type=int,
        default=8,
        metavar="N",
        help="input files, hence partitions (default: %(default)s)",
    )
    demo.add_argument(
        "--scheduler", metavar="ADDRESS", help="use an existing Dask cluster instead of a local one"
    )


def _job_arguments(group: Any) -> None:
    group.add_argument(
        "--mode",
        choices=JOB_MODES,
        default="resume",
        help="resume (default): skip partitions already committed with the same inputs, "
        "model and code, run the rest; overwrite: recompute everything, the old output "
        "stays readable until the new one commits; error: refuse an existing output",
    )
    group.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="raise",
        help="raise (default): fail on the first row the model cannot take, naming file, "
        "partition, row and cause; quarantine: write such rows to OUTPUT/_errors/ and go on",
    )
    group.add_argument(
        "--max-bad-rows",
        type=float,
        metavar="N",
        help="with --on-error quarantine: fail (exit code 3) past N bad rows (N >= 1) or past "
        "a fraction N of the rows (N < 1)",
    )
    group.add_argument(
        "--job",
        metavar="FILE",
        help="a TOML or YAML job file holding any of these options (and storage_options); "
        "options given on the command line win",
    )
    group.add_argument(
        "--storage-options",
        type=json_object,
        metavar="JSON",
        help='fsspec options for input and output, e.g. \'{"endpoint_url": "http://..."}\'; '
        "leave credentials to the environment or AWS profiles",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="measure a sample of partitions and print the projected time, the recommended "
        "batch size and the output size; write nothing",
    )


def _timeout_argument(group: Any) -> None:
    group.add_argument(
        "--fingerprint",
        choices=FINGERPRINTS,
        default="metadata",
        help="what identifies an input file for resume: metadata (default: size and mtime, "
        "or the S3 ETag) or content (a digest of its Parquet footer: for tools that keep "
        "mtimes when they rewrite files)",
    )
    group.add_argument(
        "--partition-timeout",
        metavar="SECONDS",
        help="cancel a partition running longer than this and retry it once, then fail the "
        "job naming its file (default: no limit; batchinfer.partition-timeout)",
    )


def _cluster_arguments(group: Any) -> None:
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786; "
        "default: start a local cluster for this job",
    )
    group.add_argument(
        "--cluster",
        choices=CLUSTER_KINDS,
        default="auto",
        help="shape of the local cluster started without --scheduler: auto (the engine "
        "batchinfer.engine chooses: threads in this process for inputs up to "
        "batchinfer.threads-engine-bytes without GPUs, else worker processes, on GPUs when "
        "dask-cuda sees some), cpu, gpu (dask-cuda, one worker per GPU), or mixed (a CPU pool "
        "that reads and preprocesses, a model pool that infers and writes)",
    )
    group.add_argument(
        "--cpu-workers",
        type=int,
        default=1,
        metavar="N",
        help="CPU-pool workers with --cluster mixed",
    )
    group.add_argument(
        "--model-workers",
        type=int,
        metavar="N",
        help="model-pool workers with --cluster mixed (default: one per GPU, else 1)",
    )
    group.add_argument(
        "--upload",
        action="append",
        metavar="PATH",
        help="a local .py module or package folder to ship to the workers for this job "
        "(repeatable), for a cluster that does not have your model's code installed",
    )
    group.add_argument(
        "--pool-resources",
        nargs=2,
        metavar=("PREPROCESS", "MODEL"),
        help="resource names marking the CPU pool and the model pool of the cluster "
        "(default: preprocess model, when workers carry them)",
    )
    group.add_argument(
        "--no-pools",
        action="store_true",
        help="ignore worker resources: every worker runs every stage (pools=False)",
    )


def _display_arguments(group: Any) -> None:
    group.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="auto (default): a bar in a terminal, key=value log lines otherwise (CI, cron)",
    )
    group.add_argument(
        "--json", action="store_true", help="print the result summary as JSON instead of text"
    )
    group.add_argument(
        "--quiet", action="store_true", help="no progress and no log lines; errors only"
    )
