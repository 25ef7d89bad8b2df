"""The ``dask-batchinfer`` command.

Exit codes: 0 success, 1 the job failed, 2 usage error (bad option, argument
or job file), 3 more bad rows than ``--max-bad-rows`` allows, 4 (``status``)
the output is partial or its last run failed.

``dask-batchinfer run --job job.toml`` takes every option of ``run`` from a
TOML or YAML file (keys as the long options, with ``_`` or ``-``, plus
``storage_options``); options on the command line win over the file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from dask_batchinfer.cluster import KINDS as CLUSTER_KINDS
from dask_batchinfer.errors import BadRowsError, BatchInferError, InputError
from dask_batchinfer.jobfile import json_object, load_job_file, load_model, load_object
from dask_batchinfer.options import MODES, ON_ERROR
from dask_batchinfer.progress import MODES as PROGRESS_MODES

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BAD_ROWS, EXIT_INCOMPLETE = 0, 1, 2, 3, 4
REQUIRED = ("input", "output", "model")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-batchinfer",
        description="Offline batch inference on Dask: Parquet in, partitioned Parquet out.",
        epilog="Exit codes: 0 success, 1 job failed, 2 usage error, 3 too many bad rows, "
        "4 (status) output partial or last run failed.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a batch inference job",
        description="Read Parquet input, run a model on every row, write partitioned Parquet.",
    )
    _io_arguments(run.add_argument_group("input and output"))
    _job_arguments(run.add_argument_group("job"))
    _cluster_arguments(run.add_argument_group("cluster"))
    _display_arguments(run.add_argument_group("display"))
    status = commands.add_parser(
        "status",
        help="summarise an output folder (complete, partial, failed) from its manifest",
        description="Read an output's manifest, markers and last report; print a summary. "
        "Exit code 0 when complete, 4 when partial or the last run failed, 2 when missing.",
    )
    status.add_argument("output", metavar="OUTPUT", help="the output folder (local or s3://)")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.add_argument("--storage-options", type=json_object, metavar="JSON",
                        help="fsspec options, as for run")  # fmt: skip

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
    return parser


def _io_arguments(group: Any) -> None:
    group.add_argument(
        "--input",
        metavar="PATH",
        help="Parquet file or folder, local or s3://bucket/prefix (one partition per file)",
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


def _job_arguments(group: Any) -> None:
    group.add_argument(
        "--mode",
        choices=MODES,
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
        help="shape of the local cluster started without --scheduler: auto (GPUs when "
        "dask-cuda sees some, else CPU), cpu, gpu (dask-cuda, one worker per GPU), or mixed "
        "(a CPU pool that reads and preprocesses, a model pool that infers and writes)",
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


def _run(args: argparse.Namespace) -> int:
    from dask_batchinfer.job.run import run_job

    model = load_model(args.model)
    if args.batch_size is not None:
        model = model.with_options(batch_size=args.batch_size)
    preprocess = load_object(args.preprocess, "preprocess") if args.preprocess else None
    pools = None
    if args.pool_resources:
        pools = dict(zip(("preprocess", "model"), args.pool_resources, strict=True))
    progress: str | bool = False if args.quiet else args.progress
    with contextlib.ExitStack() as stack:
        client: Any = args.scheduler
        if client is None:
            client = stack.enter_context(_start_cluster(args))
        if args.dry_run:
            from dask_batchinfer.plan import plan

            planned = plan(args.input, model, preprocess=preprocess, keep=args.keep or None,
                           client=client, storage_options=args.storage_options)  # fmt: skip
            print(json.dumps(planned.summary(), indent=1) if args.json else planned)
            return EXIT_OK
        result = run_job(
            args.input,
            model,
            output=args.output,
            preprocess=preprocess,
            keep=args.keep or None,
            partition_on=args.partition_on or None,
            mode=args.mode,
            client=client,
            pools=pools,
            on_error=args.on_error,
            max_bad_rows=_bad_rows_limit(args.max_bad_rows),
            storage_options=args.storage_options,
            progress=progress,
        )
    _log_event(result.job, "finished", status=result.status, partitions_run=result.partitions_run,
               partitions_skipped=result.partitions_skipped, rows_in=result.rows_in,
               rows_out=result.rows_out, rows_quarantined=result.rows_quarantined,
               wall_s=round(result.wall_seconds, 2), output=result.output)  # fmt: skip
    if not args.quiet:
        print(json.dumps(result.summary(), indent=1) if args.json else result)
    return EXIT_OK


def _log_event(job: str, event: str, **fields: Any) -> None:
    """One greppable ``key=value`` line on the ``dask_batchinfer`` logger."""
    text = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
                    for k, v in fields.items())  # fmt: skip
    logging.getLogger("dask_batchinfer").info("job=%s event=%s %s", job or "-", event, text)


def _status(args: argparse.Namespace) -> int:
    from dask_batchinfer.status import format_status, output_status

    summary = output_status(args.output, args.storage_options)
    print(json.dumps(summary, indent=1, default=str) if args.json else format_status(summary))
    if summary["state"] == "missing":
        return EXIT_USAGE
    return EXIT_OK if summary["state"] == "complete" else EXIT_INCOMPLETE


def _bad_rows_limit(value: float | None) -> int | float | None:
    if value is None or value < 1:
        return value
    if value != int(value):
        raise InputError(f"--max-bad-rows {value}: a count must be a whole number")
    return int(value)


@contextlib.contextmanager
def _start_cluster(args: argparse.Namespace) -> Iterator[Any]:
    from distributed import Client

    from dask_batchinfer.cluster import local_cluster

    options: dict[str, Any] = {}
    if args.cluster == "mixed":
        options = {"cpu_workers": args.cpu_workers, "model_workers": args.model_workers}
    with local_cluster(kind=args.cluster, **options) as cluster, Client(cluster) as client:
        logging.getLogger("dask_batchinfer").info(
            "started %s; dashboard at %s", type(cluster).__name__, client.dashboard_link
        )
        yield client


def _demo(args: argparse.Namespace) -> int:
    from dask_batchinfer.demo import run_demo

    for name in ("docs", "partitions"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1")
    run_demo(args.output, n_docs=args.docs, partitions=args.partitions, client=args.scheduler)
    return EXIT_OK


def _log_to_stderr(quiet: bool = False) -> None:
    """Our own log records to stderr, one ``key=value`` line each; Dask's stay with Dask."""
    logger = logging.getLogger("dask_batchinfer")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        )
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, taking ``run``'s options from ``--job FILE`` first (the command line wins)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        return args
    if args.job:
        run = _subparser(parser, "run")
        known = {a.dest for a in run._actions if a.dest not in ("help", "job")}
        run.set_defaults(**load_job_file(args.job, known))
        args = parser.parse_args(argv)
    missing = [f"--{name}" for name in REQUIRED if not getattr(args, name)]
    if missing:
        raise InputError(f"run needs {', '.join(missing)} (on the command line or in --job FILE)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dask-batchinfer`` command; returns the exit code."""
    try:
        args = _parse(argv)
    except InputError as err:
        print(f"dask-batchinfer: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    _log_to_stderr(quiet=getattr(args, "quiet", False))
    commands = {"run": _run, "demo": _demo, "status": _status}
    try:
        return commands[args.command](args)
    except InputError as err:
        print(f"dask-batchinfer: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BadRowsError as err:
        print(f"dask-batchinfer: too many bad rows: {err}", file=sys.stderr)
        return EXIT_BAD_ROWS
    except BatchInferError as err:
        print(f"dask-batchinfer: job failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # storage: permission denied, no such bucket, retries exhausted
        print(f"dask-batchinfer: job failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
