"""A prepared job: the options checked, the source opened, the stages' settings built, once.

``run_job``, ``plan()`` (hence ``--dry-run``) start from :func:`prepare`, so a
plan reads, preprocesses and runs the model exactly as the job would, and
:meth:`PreparedJob.on_cluster` makes a cluster ready for either: versions
and the user's code checked, uploads and credentials shipped, pools found,
the model loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from dask_batchinfer.cluster.local import Pools, detect_pools
from dask_batchinfer.cluster.plugins import credentials, shipped_code, warm_up
from dask_batchinfer.io.fs import is_local_url
from dask_batchinfer.io.inputs import input_bytes
from dask_batchinfer.io.read import InputFile, open_source
from dask_batchinfer.job.checks import check_not_nested
from dask_batchinfer.job.options import JobOptions
from dask_batchinfer.job.preflight import check_code, check_shared_storage, check_versions
from dask_batchinfer.job.schema import Columns, check_spec, job_columns, read_columns
from dask_batchinfer.job.worklist import job_token
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.pipeline.stages import StageSettings
from dask_batchinfer.worker.packed import Packed

__all__ = ["PreparedJob", "prepare"]


@dataclasses.dataclass(frozen=True)
class PreparedJob:
    """What a job will do, known on the client before any task runs."""

    model: ModelSpec
    preprocess: Preprocess | None
    options: JobOptions
    #: The input as a lazy Dask DataFrame, only the columns the job uses.
    ddf: Any
    #: The input files of each partition (None: a Dask DataFrame source).
    groups: list[list[InputFile]] | None
    #: The columns read, and the output's columns and schema.
    read: list[str] | None
    shape: Columns
    #: A local input file every worker must see (shared storage), if any.
    input_file: str | None

    @property
    def input_bytes(self) -> int | None:
        """Bytes of the input files (None: not known)."""
        return input_bytes(self.groups)

    def token(self) -> str:
        """What shapes every partition's output (see :func:`job_token`)."""
        return job_token(
            self.model, self.preprocess, self.shape, read=(self.read, self.options.filters)
        )

    def settings(self, job: str = "") -> StageSettings:
        """What every task of this job carries."""
        o = self.options
        return StageSettings(
            model=self.model,
            preprocess=self.preprocess,
            keep=self.shape.keep,
            on_error=o.on_error,
            job=job,
            output=o.output or "",
            storage_options=o.task_options,
            partition_on=self.shape.partition_on,
            schema=self.shape.schema,
        )

    @contextlib.contextmanager
    def on_cluster(
        self, client: Any, job: str, settings: StageSettings, mark: Any = None, writes: bool = True
    ) -> Iterator[Pools]:
        """The cluster made ready for the block's duration: checked, the credentials and
        the user's code shipped, the model loaded; the job's worker plugins removed after.
        ``mark(phase)`` notes when each step ended; ``writes=False`` (a plan) leaves the
        output untouched (no shared-storage probe written there)."""
        mark = mark or (lambda phase: None)
        o = self.options
        check_versions(client)
        with (
            credentials(client, o.credentials, o.secret_options),
            shipped_code(client, list(o.upload), job),
        ):
            check_code(client, Packed(settings))
            if writes and o.output is not None:
                check_shared_storage(client, o.output, self.input_file)
            pools = detect_pools(client, o.pools)
            mark("checked")
            with warm_up(client, self.model, pools, job):
                yield pools


def prepare(
    source: Any, model: Any, preprocess: Preprocess | None, options: JobOptions
) -> PreparedJob:
    """Check the model and the columns against the source, and open it lazily."""
    __tracebackhide__ = True  # IPython shows the user's frame and the error
    model = check_spec(model)
    check_not_nested(source, options)
    o = options
    read = read_columns(
        model, keep=o.keep, partition_on=o.partition_on, columns=o.columns, preprocess=preprocess
    )
    ddf, groups = open_source(
        source,
        o.storage_options,
        o.task_options,
        o.fingerprint,
        columns=read,
        filters=o.filters,
        format=o.format,
        on_error=o.on_error,
    )
    shape = job_columns(
        ddf._meta,
        model,
        keep=o.keep,
        partition_on=o.partition_on,
        preprocess=preprocess,
        columns=o.columns,
    )
    local = isinstance(source, (str, os.PathLike)) and is_local_url(os.fspath(source))
    first = groups[0][0].path if groups and local else None  # the workers must see it too
    return PreparedJob(model, preprocess, options, ddf, groups, read, shape, first)
