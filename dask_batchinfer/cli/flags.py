"""The options of the ``dask-batchinfer`` command, in argument groups.

A job option's flag is made from its declaration in
:class:`~dask_batchinfer.job.options.JobOptions` (name, help, choices, type);
only what the command adds by itself (``--input``, ``--model``, ``--job``,
the local cluster's shape, output format) is written here. So the command, job
files and ``docs/reference.md`` cannot drift from the API.
"""

from __future__ import annotations

import argparse
from typing import Any

from dask_batchinfer import _config
from dask_batchinfer.cli.jobfile import json_list, json_object
from dask_batchinfer.cluster.local import KINDS as CLUSTER_KINDS
from dask_batchinfer.job.options import Declared, declared
from dask_batchinfer.model.hf import TASKS

__all__ = ["bad_rows", "build_parser", "option_flags"]


def bad_rows(text: str) -> int | float:
    """An argparse type: ``--max-bad-rows`` as a count (N >= 1, whole) or a fraction (N < 1)."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if value < 1:
        return value
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text}: a count must be a whole number")
    return int(value)


#: The parsers a declaration's ``flag["type"]`` may name.
TYPES = {"json_list": json_list, "json_object": json_object, "bad_rows": bad_rows}


def option_flags() -> dict[str, Declared]:
    """Each job option with a flag of its own: ``{"partition_timeout": ..., "client": ...}``."""
    return {d.name: d for d in declared() if d.flag is not None}


def _add_declared(group: Any, name: str) -> None:
    """The flags of the job options declared in group ``name``."""
    for d in declared():
        if d.group == name and d.flag is not None:
            group.add_argument(d.flag_name, help=_help(d), **_settings(d))


def _settings(d: Declared) -> dict[str, Any]:
    settings = {k: v for k, v in d.flag.items() if k != "name"} if d.flag else {}
    settings["dest"] = d.dest
    if isinstance(settings.get("type"), str):
        settings["type"] = TYPES[settings["type"]]
    return settings


def _help(d: Declared) -> str:
    """The declared help, with the default and the configuration key that sets it."""
    if d.config:
        default = f"batchinfer.{d.config}, {_config.get(d.config)}"
        return f"{d.help} (default: {default})".replace(", None)", ": none)")
    return d.help + (f" (default: {d.default})" if d.default is not None else "")


def build_parser() -> argparse.ArgumentParser:
    """The ``dask-batchinfer`` parser: ``run``, ``status`` and ``demo``."""
    parser = argparse.ArgumentParser(
        prog="dask-batchinfer",
        description="Offline batch inference on Dask: files in, partitioned Parquet out.",
        epilog="Exit codes: 0 success, 1 job failed, 2 usage error, 3 too many bad rows, "
        "4 (status) output partial or last run failed, 5 another job holds the output.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a batch inference job",
        description="Read Parquet, CSV, JSON Lines or plain files, run a model on every row, "
        "write partitioned Parquet, exactly once.",
    )
    io = run.add_argument_group("input and output")
    _input_arguments(io)
    _add_declared(io, "input and output")
    _add_declared(run.add_argument_group("reading"), "reading")
    job = run.add_argument_group("job")
    _add_declared(job, "job")
    _job_arguments(job)
    cluster = run.add_argument_group("cluster")
    _add_declared(cluster, "cluster")
    _cluster_arguments(cluster)
    display = run.add_argument_group("display")
    _add_declared(display, "display")
    display.add_argument(
        "--json", action="store_true", help="print the result summary as JSON instead of text"
    )
    display.add_argument(
        "--quiet", action="store_true", help="no progress and no log lines; errors only"
    )
    _status_parser(commands)
    _demo_parser(commands)
    return parser


def _input_arguments(group: Any) -> None:
    group.add_argument(
        "--input",
        metavar="PATH",
        help="Parquet file or folder (hive folders such as date=2026-11-29/ are columns), CSV "
        "or JSON Lines files (.csv, .jsonl, .csv.gz ...), or a glob of files read as rows "
        "(path, size, bytes); local or s3://bucket/prefix",
    )
    group.add_argument(
        "--model",
        metavar="MODULE:ATTR",
        help="a dask_batchinfer.ModelSpec, or a function returning one, e.g. mypkg.models:ranker; "
        "with --task, a Hugging Face model folder (local or s3://)",
    )
    group.add_argument(
        "--task",
        choices=tuple(TASKS),
        help="run --model (a save_pretrained folder) as this task (from_transformers)",
    )
    group.add_argument(
        "--model-options",
        type=json_object,
        metavar="JSON",
        help='from_transformers options with --task, e.g. \'{"text_column": "review"}\'',
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


def _job_arguments(group: Any) -> None:
    group.add_argument(
        "--job",
        metavar="FILE",
        help="a TOML or YAML job file holding any of these options; options given on the "
        "command line win",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="measure a sample of partitions and print the projected time, the recommended "
        "batch size and the output size; write nothing",
    )


def _status_parser(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="summarise an output folder (complete, partial, failed) from its manifest",
        description="Read an output's manifest, markers and last report; print a summary. "
        "Exit code 0 when complete, 4 when partial or the last run failed, 5 while a job "
        "is running on it, 2 when missing.",
    )
    status.add_argument("output", metavar="OUTPUT", help="the output folder (local or s3://)")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.add_argument(
        "--storage-options", type=json_object, metavar="JSON", help="fsspec options, as for run"
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


def _cluster_arguments(group: Any) -> None:
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
