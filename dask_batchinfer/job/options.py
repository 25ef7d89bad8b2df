"""``JobOptions``: every option of a job declared once, and checked once on the client.

Each field of :class:`JobOptions` carries its declaration (:func:`option`):
the check, the help text, the command line flag, the ``batchinfer.*`` key
that gives its default. From these come the ``run`` command's flags
(:mod:`dask_batchinfer.cli.flags`), the keys a job file may hold, the error
messages' flag names, and the tables of ``docs/reference.md``; a test holds
``run_job``'s and ``plan``'s keywords to them. A new option is one field here
plus its use.

Nothing here touches a cluster or a file: a bad option fails in milliseconds
with a message that names the option, the value and the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from dask_batchinfer import _config, secrets
from dask_batchinfer.errors import InputError
from dask_batchinfer.io.read import FINGERPRINTS, FORMATS
from dask_batchinfer.job import checks
from dask_batchinfer.report.progress import PROGRESS_MODES, resolve_mode

__all__ = [
    "JOB_MODES",
    "ON_ERROR",
    "Declared",
    "JobOptions",
    "arguments",
    "declared",
    "given_options",
    "option",
]

#: ``run_job(mode=...)``: what to do with an output folder that holds data.
JOB_MODES = ("resume", "overwrite", "error")
#: ``run_job(on_error=...)``: what a row the model or ``preprocess`` fails on does.
ON_ERROR = ("raise", "quarantine")


@dataclasses.dataclass(frozen=True)
class Declared:
    """One option as declared: what the command line, job files and docs are made from.

    ``argument``: a keyword of ``run_job`` (False: set by configuration only).
    ``flag``: the command line flag's argparse settings (None: no flag of its
    own); its ``type`` may name a parser of :mod:`dask_batchinfer.cli.jobfile`.
    ``config``: the ``batchinfer.*`` key that gives the default.
    """

    name: str
    default: Any
    help: str
    group: str
    check: Callable[[str, Any], Any]
    argument: bool = True
    flag: dict[str, Any] | None = None
    config: str | None = None

    @property
    def dest(self) -> str:
        """The command line's and a job file's name for it (``scheduler`` for ``client``)."""
        return (self.flag or {}).get("dest", self.name)

    @property
    def flag_name(self) -> str | None:
        """``--partition-timeout`` for ``partition_timeout`` (None without a flag)."""
        if self.flag is None:
            return None
        return self.flag.get("name", "--" + self.name.replace("_", "-"))


def option(
    default: Any,
    help: str,
    group: str,
    check: Callable[[str, Any], Any],
    *,
    argument: bool = True,
    flag: dict[str, Any] | None = None,
    config: str | None = None,
) -> Any:
    """A :class:`JobOptions` field with its declaration in the field's metadata."""
    meta = {"declared": (default, help, group, check, argument, flag, config)}
    return dataclasses.field(default=default, metadata=meta)


def _unchecked(option: str, value: Any) -> Any:
    return value


_COLUMNS = {"nargs": "+", "metavar": "COLUMN"}
_SECONDS = {"metavar": "SECONDS"}


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """A job's options, checked (see :func:`~dask_batchinfer.run_job` for each).

    The storage options come split: ``storage_options`` as given (the
    client's, credentials included), ``task_options`` what tasks carry (the
    public options and, when there are credentials, a reference to them under
    ``credentials``, sent to the workers once in a plugin).
    """

    # input and output
    output: str | None = option(
        None,
        "output folder, local or s3://; gets part-<input>-<id>.parquet files, a _SUCCESS "
        "manifest and a _report.json/_report.html",
        "input and output",
        checks.output_url,
        flag={"metavar": "PATH"},
    )
    keep: tuple[str, ...] | None = option(
        None,
        "input columns to write beside the predictions, e.g. ids",
        "input and output",
        checks.column_names,
        flag=_COLUMNS,
    )
    partition_on: tuple[str, ...] | None = option(
        None,
        "write hive folders by these columns, e.g. country=FR/",
        "input and output",
        checks.column_names,
        flag=_COLUMNS,
    )
    # reading
    format: str | None = option(
        None,
        "how to read the input (default: by its name; a folder is Parquet)",
        "reading",
        checks.choice((None, *FORMATS)),
        flag={"choices": FORMATS},
    )
    columns: tuple[str, ...] | None = option(
        None,
        "input columns preprocess needs (default: all with preprocess); without "
        "preprocess only the model's input columns, keep and partition_on are read",
        "reading",
        checks.column_names,
        flag=_COLUMNS,
    )
    filters: Any = option(
        None,
        'rows to read, as in dask.dataframe.read_parquet: [["date", "==", "2026-11-29"]] '
        "(hive folders and row groups that cannot match are not read)",
        "reading",
        checks.dnf_filters,
        flag={"type": "json_list", "metavar": "JSON"},
    )
    fingerprint: str = option(
        "metadata",
        "what identifies an input file for resume: metadata (size and mtime, or "
        "the S3 ETag) or content (a digest of its Parquet footer: for tools that keep mtimes "
        "when they rewrite files)",
        "reading",
        checks.choice(FINGERPRINTS),
        flag={"choices": FINGERPRINTS},
    )
    storage_options: Mapping[str, Any] = option(
        None,
        'fsspec options for input and output, e.g. {"endpoint_url": "http://..."}; '
        "credentials in them reach the workers once, in a plugin (better: the environment)",
        "reading",
        _unchecked,
        flag={"type": "json_object", "metavar": "JSON"},
    )
    # job
    mode: str = option(
        "resume",
        "resume: skip partitions already committed with the same inputs, model and "
        "code, run the rest; overwrite: recompute everything, the old output stays readable "
        "until the new one commits; error: refuse an existing output",
        "job",
        checks.choice(JOB_MODES),
        flag={"choices": JOB_MODES},
    )
    on_error: str = option(
        "raise",
        "raise: fail on the first row the model cannot take, naming file, partition, "
        "row and cause; quarantine: write such rows to OUTPUT/_errors/ and go on",
        "job",
        checks.choice(ON_ERROR),
        flag={"choices": ON_ERROR},
    )
    max_bad_rows: int | float | None = option(
        None,
        "with quarantine: fail (exit code 3) past N bad rows (a count) or past a "
        "fraction N of the rows (N < 1)",
        "job",
        checks.bad_rows_limit,
        flag={"type": "bad_rows", "metavar": "N"},
    )
    partition_timeout: float | None = option(
        None,
        "cancel a partition running longer than this (seconds or '10 minutes') and retry "
        "it once, then fail the job naming its file",
        "job",
        checks.seconds,
        flag=_SECONDS,
        config="partition-timeout",
    )
    # cluster
    client: Any = option(
        None,
        "scheduler address of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (a "
        "distributed.Client in Python); default: the job's engine (batchinfer.engine)",
        "cluster",
        checks.cluster_client,
        flag={"name": "--scheduler", "dest": "scheduler", "metavar": "ADDRESS"},
    )
    pools: Mapping[str, str] | bool | None = option(
        None,
        "which workers do what: None (resources preprocess and model when workers carry "
        "them), {'preprocess': NAME, 'model': NAME}, or False (every worker every stage); "
        "flags --pool-resources and --no-pools",
        "cluster",
        checks.pools_choice,
    )
    upload: tuple[str, ...] = option(
        None,
        "a local .py module or package folder to ship to the workers for this job "
        "(repeatable), for a cluster that does not have your model's code installed",
        "cluster",
        checks.upload_paths,
        flag={"action": "append", "metavar": "PATH"},
    )
    # display
    progress: str = option(
        None,
        "auto: a widget in Jupyter, a bar in a terminal, key=value log lines otherwise "
        "(CI, cron); bar; log; off",
        "display",
        lambda _, value: resolve_mode(value),
        flag={"choices": PROGRESS_MODES},
        config="progress",
    )
    # configuration only
    inflight_per_thread: int = option(
        4,
        "partitions in flight per worker thread",
        "configuration",
        checks.integer,
        argument=False,
        config="inflight-per-thread",
    )
    prefetch_per_model_thread: int = option(
        2,
        "partitions preprocessed ahead of inference per model-pool thread",
        "configuration",
        checks.integer,
        argument=False,
        config="prefetch-per-model-thread",
    )
    adaptive_lookahead: int = option(
        1000,
        "placeholder tasks shown to an adaptive cluster",
        "configuration",
        checks.integer,
        argument=False,
        config="adaptive-lookahead",
    )
    heartbeat_seconds: float = option(
        30.0,
        "progress heartbeat while no partition commits",
        "configuration",
        checks.seconds,
        argument=False,
        config="progress-heartbeat",
    )
    no_workers_timeout: float | None = option(
        None,
        "fail a job whose cluster has had no worker for this long",
        "configuration",
        checks.seconds,
        argument=False,
        config="no-workers-timeout",
    )
    # derived from storage_options
    task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    secret_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    credentials: str | None = None

    @classmethod
    def build(cls, **given: Any) -> JobOptions:
        """Check every option; raise :class:`InputError` naming the first bad one."""
        __tracebackhide__ = True  # IPython shows the user's frame and the error
        values = {}
        for d in declared():
            value = given.pop(d.name, None)
            if value is None and d.config is not None:
                value = _config.get(d.config)
            values[d.name] = d.default if value is None else d.check(d.name, value)
        if given:
            raise InputError(f"unknown option(s) {sorted(given)}; known: {arguments()}")
        return cls(**values)._with_secrets()

    def _with_secrets(self) -> JobOptions:
        """``storage_options`` split into what tasks carry and the credentials."""
        full = dict(self.storage_options or {})
        public, secret = secrets.split(full)
        secrets.remember(secret)  # redacted from every error this process prints
        reference = secrets.new_reference() if secret else None
        return dataclasses.replace(
            self,
            storage_options=full,
            secret_options=secret,
            credentials=reference,
            task_options=public | ({secrets.REFERENCE: reference} if reference else {}),
            upload=self.upload or (),
        )

    def output_url(self) -> str:
        """The output folder, which a job (unlike a plan) must have."""
        if self.output is None:
            raise InputError("output must be a local path or URL, got None")
        return self.output

    def bad_rows_allowed(self, already: int) -> int | None:
        """Rows this run may still quarantine (a count limit), given ``already`` committed."""
        if isinstance(self.max_bad_rows, int):
            return self.max_bad_rows - already
        return None

    def too_many_bad_rows(self, rows_in: int, rows_quarantined: int) -> bool:
        """Whether a fraction limit is exceeded, checked at the end of the job."""
        limit = self.max_bad_rows
        return isinstance(limit, float) and rows_in > 0 and rows_quarantined / rows_in > limit


def declared() -> list[Declared]:
    """Every declared option of :class:`JobOptions`, in order."""
    return [
        Declared(f.name, *f.metadata["declared"])
        for f in dataclasses.fields(JobOptions)
        if "declared" in f.metadata
    ]


def given_options(call: Mapping[str, Any]) -> dict[str, Any]:
    """The job options among a call's arguments (``locals()`` at the top of ``run_job``)."""
    names = set(arguments())
    return {name: value for name, value in call.items() if name in names}


def arguments() -> list[str]:
    """The options a job takes as keywords (``run_job``'s, ``plan``'s, a job file's keys)."""
    return [d.name for d in declared() if d.argument]
