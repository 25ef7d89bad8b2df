"""A job's worklist: its partitions, their fingerprints, which are done and which to run.

Pure functions of the input's layout and the output folder's state: no
cluster, no I/O, so every resume rule is testable on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

from dask.base import tokenize

from dask_batchinfer.errors import InputError
from dask_batchinfer.fingerprint import code_token, partition_slug
from dask_batchinfer.io.commit import Marker, OutputState, Partition
from dask_batchinfer.io.read import InputFile
from dask_batchinfer.job.schema import Columns
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.version import __version__

__all__ = ["Worklist", "job_token", "partitions_of", "worklist"]


@dataclasses.dataclass(frozen=True)
class Worklist:
    """What a job must do.

    Attributes
    ----------
    partitions : list of Partition
        Every input partition, in input order.
    job_fingerprint : str
        Token of all the partitions' fingerprints (the manifest's key).
    done : dict of str to Marker
        Partitions already committed with the same fingerprint, by slug.
    todo : list of Partition
        Partitions to run.
    invalidated : int
        Partitions committed by an earlier run whose fingerprint changed.
    finished : bool
        The output's manifest is this job's: nothing to run or write.
    """

    partitions: list[Partition]
    job_fingerprint: str
    done: dict[str, Marker]
    todo: list[Partition]
    invalidated: int
    finished: bool

    @property
    def slugs(self) -> set[str]:
        return {p.slug for p in self.partitions}

    def quarantined_before(self) -> int:
        """Rows the partitions already done set aside (for the bad-row budget)."""
        return sum(m.rows_quarantined for m in self.done.values())


def job_token(
    model: ModelSpec, preprocess: Preprocess | None, columns: Columns, read: Any = None
) -> str:
    """What shapes every partition's output: model, preprocessing, columns, package version,
    and ``read``: how the input is read (the columns read, the filters)."""
    return tokenize(
        model.token,
        code_token(preprocess),
        columns.keep,
        columns.partition_on,
        columns.schema.to_string(),
        __version__,
        read,
    )


def partitions_of(
    keys: Sequence[Hashable],
    groups: list[list[InputFile]] | None,
    job_token: str,
    generation: str = "",
) -> list[Partition]:
    """The job's partitions: named after their files (Parquet input), else numbered.

    ``keys`` are the input's Dask keys (identity of a DataFrame's partitions),
    ``groups`` the files behind each partition of a Parquet input.
    """
    if groups is None:
        return [
            Partition(i, f"{i:05d}", None, tokenize(key, job_token), generation)
            for i, key in enumerate(keys)
        ]
    partitions = []
    for i, group in enumerate(groups):
        first, last = group[0], group[-1]
        slug, source = partition_slug(first.relpath), first.path
        if first.piece:  # part of a large file: its row groups (or rows) name it
            slug, source = f"{slug}-{first.piece}", f"{first.path} ({first.piece})"
        if len(group) > 1:
            slug = f"{slug}--{partition_slug(last.relpath)}"
            source = f"{first.path} .. {last.path} ({len(group)} files)"
        identity = [(f.relpath, f.size, f.version, f.row_groups, f.rows) for f in group]
        partitions.append(Partition(i, slug, source, tokenize(identity, job_token), generation))
    return partitions


def worklist(
    partitions: list[Partition], state: OutputState, mode: str, output: str = ""
) -> Worklist:
    """Split ``partitions`` into done and to do against the output's ``state``.

    Only ``mode="resume"`` keeps committed partitions; a committed partition
    whose fingerprint changed is counted as invalidated and run again.
    ``mode="error"`` refuses an ``output`` that is not empty.
    """
    if mode == "error" and state.exists:
        raise InputError(
            f"output {output!r} exists and is not empty (mode='error'); choose another "
            f"folder, or pass mode='resume' or mode='overwrite'"
        )
    job_fingerprint = tokenize([p.fingerprint for p in partitions])
    done: dict[str, Marker] = {}
    invalidated = 0
    for p in partitions:
        marker = state.committed(p) if mode == "resume" else None
        if marker is not None:
            done[p.slug] = marker
        elif p.slug in state.markers:
            invalidated += 1
    todo = [p for p in partitions if p.slug not in done]
    finished = mode == "resume" and not todo and state.manifest_matches(job_fingerprint)
    return Worklist(partitions, job_fingerprint, done, todo, invalidated, finished)
