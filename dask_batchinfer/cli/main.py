"""The ``dask-batchinfer`` command.

Exit codes: 0 success, 1 the job failed, 2 usage error (bad option, argument
or job file), 3 more bad rows than ``--max-bad-rows`` allows, 4 (``status``)
the output is partial or its last run failed, 5 another job holds the output's
lease (``run``) or is running on it (``status``).

``dask-batchinfer run --job job.toml`` takes every option of ``run`` from a
TOML or YAML file (keys as the long options, with ``_`` or ``-``, plus
``storage_options``); options on the command line win over the file.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from dask_batchinfer.cli.flags import build_parser, option_flags
from dask_batchinfer.cli.jobfile import load_job_file, load_object, model_from_reference
from dask_batchinfer.errors import BadRowsError, BatchInferError, InputError, OutputLockedError
from dask_batchinfer.report.progress import stderr_handler

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BAD_ROWS, EXIT_INCOMPLETE, EXIT_LOCKED = 0, 1, 2, 3, 4, 5
REQUIRED = ("input", "output", "model")


def _run(args: argparse.Namespace) -> int:
    from dask_batchinfer.job.run import run_job

    model = model_from_reference(args.model, args.task, args.model_options)
    if args.batch_size is not None:
        model = model.with_options(batch_size=args.batch_size)
    preprocess = load_object(args.preprocess, "preprocess") if args.preprocess else None
    options = {name: getattr(args, d.dest) for name, d in option_flags().items()}
    options["pools"] = False if args.no_pools else None
    if args.pool_resources:
        options["pools"] = dict(zip(("preprocess", "model"), args.pool_resources, strict=True))
    if args.quiet:
        options["progress"] = False
    with contextlib.ExitStack() as stack:
        if options["client"] is None and args.cluster != "auto":  # auto: the job's engine
            options["client"] = stack.enter_context(_start_cluster(args))
        if args.dry_run:
            from dask_batchinfer.job.plan import plan

            planned = plan(args.input, model, preprocess=preprocess, **options)
            print(json.dumps(planned.summary(), indent=1) if args.json else planned)
            return EXIT_OK
        result = run_job(args.input, model, preprocess=preprocess, **options)
    _log_event(
        result.job,
        "finished",
        status=result.status,
        partitions_run=result.partitions_run,
        partitions_skipped=result.partitions_skipped,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        rows_quarantined=result.rows_quarantined,
        wall_s=round(result.wall_seconds, 2),
        output=result.output,
    )
    if not args.quiet:
        print(json.dumps(result.summary(), indent=1) if args.json else result)
    return EXIT_OK


def _log_event(job: str, event: str, **fields: Any) -> None:
    """One greppable ``key=value`` line on the ``dask_batchinfer`` logger."""
    text = " ".join(
        f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in fields.items()
    )
    logging.getLogger("dask_batchinfer").info("job=%s event=%s %s", job or "-", event, text)


def _status(args: argparse.Namespace) -> int:
    from dask_batchinfer.cli.status import format_status, output_status

    summary = output_status(args.output, args.storage_options)
    print(json.dumps(summary, indent=1, default=str) if args.json else format_status(summary))
    if summary["state"] == "missing":
        return EXIT_USAGE
    if summary["state"] == "running":
        return EXIT_LOCKED
    return EXIT_OK if summary["state"] == "complete" else EXIT_INCOMPLETE


@contextlib.contextmanager
def _start_cluster(args: argparse.Namespace) -> Iterator[Any]:
    from distributed import Client

    from dask_batchinfer.cluster.local import local_cluster

    options: dict[str, Any] = {}
    if args.cluster == "mixed":
        options = {"cpu_workers": args.cpu_workers, "model_workers": args.model_workers}
    with local_cluster(kind=args.cluster, **options) as cluster, Client(cluster) as client:
        logging.getLogger("dask_batchinfer").info(
            "started %s; dashboard at %s", type(cluster).__name__, client.dashboard_link
        )
        yield client


def _demo(args: argparse.Namespace) -> int:
    from dask_batchinfer.cli.demo import run_demo

    for name in ("docs", "partitions"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1")
    run_demo(args.output, n_docs=args.docs, partitions=args.partitions, client=args.scheduler)
    return EXIT_OK


def _log_to_stderr(quiet: bool = False) -> None:
    """Our own log records to stderr, one ``key=value`` line each; Dask's stay with Dask."""
    logger = logging.getLogger("dask_batchinfer")
    if not logger.handlers:
        logger.addHandler(stderr_handler())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, taking ``run``'s options from ``--job FILE`` first (the command line wins)."""
    parser = build_parser()
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


def _notes(err: BaseException) -> str:
    return "".join(f"\n  ({note})" for note in getattr(err, "__notes__", []))


#: Python keywords of run_job that error messages name, and their flags.
FLAGS = {name: d.flag_name for name, d in option_flags().items()} | {"preprocess": "--preprocess"}
_KEYWORD = re.compile(
    r"(?<![\w.(])(?<!, )\b(?P<name>" + "|".join(FLAGS) + r")="
    r"(?P<value>'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)|[\w.+-]+)?"
)


def as_cli(message: str) -> str:
    """``message`` as the command line says it: ``keep=['a', 'b']`` -> ``--keep a b``,
    ``format='csv'`` -> ``--format csv``, ``pools=False`` -> ``--no-pools``. Keywords inside
    a call (``ModelSpec(batch_size=...)``) stay: they are Python the user writes."""

    def flag(match: re.Match[str]) -> str:
        value = match.group("value") or ""
        try:
            parsed = ast.literal_eval(value) if value else None
        except (ValueError, SyntaxError):
            parsed = value
        if isinstance(parsed, (list, tuple)):
            value = " ".join(str(v) for v in parsed)
        elif parsed is not None:
            value = str(parsed)
        return f"{FLAGS[match.group('name')]} {value}".rstrip()

    return _KEYWORD.sub(flag, message.replace("pools=False", "--no-pools"))


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
        print(f"dask-batchinfer: error: {as_cli(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except BadRowsError as err:
        print(f"dask-batchinfer: too many bad rows: {err}", file=sys.stderr)
        return EXIT_BAD_ROWS
    except OutputLockedError as err:
        print(f"dask-batchinfer: output locked: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except BatchInferError as err:
        print(f"dask-batchinfer: job failed: {as_cli(str(err))}{_notes(err)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # storage: permission denied, no such bucket, retries exhausted
        print(
            f"dask-batchinfer: job failed: {type(err).__name__}: {err}{_notes(err)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dask-batchinfer: interrupted; a re-run resumes", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - a cluster or Dask error: a line, not a traceback
        logging.getLogger("dask_batchinfer").debug("job failed", exc_info=True)
        print(f"dask-batchinfer: job failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
