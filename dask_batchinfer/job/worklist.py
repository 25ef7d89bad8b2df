"""A job's worklist: its partitions, their fingerprints, which are done and which to run.

Pure functions of the input's layout and the output folder's state: no
cluster, no I/O, so every resume rule is testable on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Any, overload

from dask.base import tokenize

from dask_batchinfer.errors import InputError
from dask_batchinfer.fingerprint import code_token, partition_slug
from dask_batchinfer.io.commit import Marker, OutputState, Partition, manifest_digest
from dask_batchinfer.io.partitioned import position
from dask_batchinfer.io.read import InputFile
from dask_batchinfer.job.schema import Columns
from dask_batchinfer.model.spec import ModelSpec
from dask_batchinfer.pipeline.rows import Preprocess
from dask_batchinfer.version import __version__

__all__ = ["Partitions", "Subset", "Worklist", "job_token", "partitions_of", "worklist"]


@dataclasses.dataclass(frozen=True)
class Worklist:
    """What a job must do.

    Attributes
    ----------
    partitions : sequence of Partition
        Every input partition, in input order (:class:`Partitions`: made when asked).
    job_fingerprint : str
        Token of all the partitions' fingerprints (the manifest's key).
    done : dict of int to Marker
        Partitions already committed with the same fingerprint, by number.
    todo : sequence of Partition
        Partitions to run.
    invalidated : int
        Partitions committed by an earlier run whose fingerprint changed.
    known : set of str
        The slugs of this job's partitions that have a marker in the output (done or
        not): clean-up deletes the other markers.
    finished : bool
        The output's manifest is this job's: nothing to run or write.
    """

    partitions: Sequence[Partition]
    job_fingerprint: str
    done: dict[int, Marker]
    todo: Sequence[Partition]
    invalidated: int
    finished: bool
    known: set[str] = dataclasses.field(default_factory=set)

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


class Partitions(Sequence[Partition]):
    """A job's partitions, each made when asked: their fingerprints in one block of bytes,
    their names from the input's plan (about 40 bytes a partition with the plan, where a
    :class:`Partition` object with its strings is about 500).

    Parameters
    ----------
    groups : sequence of sequences of InputFile, or None
        The files behind each partition (Parquet input); None: numbered partitions.
    fingerprints : list of str
        Each partition's fingerprint (all of one length).
    generation : str
        See :class:`Partition`.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[InputFile]] | None,
        fingerprints: Iterable[str],
        generation: str = "",
    ) -> None:
        self.groups, self.generation = groups, generation
        self._fingerprints = bytearray()
        self._width = 0
        for token in fingerprints:
            self._width = self._width or len(token)
            if len(token) != self._width:
                raise ValueError(f"fingerprints of different lengths: {token!r}")
            self._fingerprints += token.encode("ascii")

    def __len__(self) -> int:
        return len(self._fingerprints) // self._width if self._width else 0

    @overload
    def __getitem__(self, i: int) -> Partition: ...
    @overload
    def __getitem__(self, i: slice) -> list[Partition]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i, w = position(i, len(self)), self._width
        token = self._fingerprints[i * w : (i + 1) * w].decode("ascii")
        if self.groups is None:
            return Partition(i, f"{i:05d}", None, token, self.generation)
        slug, source = _name(self.groups[i])
        return Partition(i, slug, source, token, self.generation)

    def digest(self) -> str:
        """A token of every partition's fingerprint, in order."""
        return hashlib.md5(self._fingerprints, usedforsecurity=False).hexdigest()


def _name(group: Sequence[InputFile]) -> tuple[str, str]:
    """A partition's slug and source, from its files."""
    first, last = group[0], group[-1]
    slug, source = partition_slug(first.relpath), first.path
    if first.piece:  # part of a large file: its row groups (or rows) name it
        slug, source = f"{slug}-{first.piece}", f"{first.path} ({first.piece})"
    if len(group) > 1:
        slug = f"{slug}--{partition_slug(last.relpath)}"
        source = f"{first.path} .. {last.path} ({len(group)} files)"
    return slug, source


def partitions_of(
    keys: Sequence[Hashable] | None,
    groups: Sequence[Sequence[InputFile]] | None,
    job_token: str,
    generation: str = "",
) -> Partitions:
    """The job's partitions: named after their files (Parquet input), else numbered.

    ``keys`` are the input's Dask keys (identity of a DataFrame's partitions),
    unused when ``groups``, the files behind each partition of a Parquet input,
    are given.
    """
    if groups is None:
        if keys is None:
            raise ValueError("partitions_of needs the input's keys or its files")
        return Partitions(None, (tokenize(key, job_token) for key in keys), generation)
    identities = (
        tokenize([(f.relpath, f.size, f.version, f.row_groups, f.rows) for f in group], job_token)
        for group in groups
    )
    return Partitions(groups, identities, generation)


def _job_fingerprint(partitions: Sequence[Partition]) -> str:
    if isinstance(partitions, Partitions):
        return partitions.digest()
    return Partitions(None, (p.fingerprint for p in partitions)).digest()


def worklist(
    partitions: Sequence[Partition], state: OutputState, mode: str, output: str = ""
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
    done: dict[int, Marker] = {}
    known: set[str] = set()
    for p in partitions if state.markers else ():  # an output without markers: all to do
        if p.slug not in state.markers:
            continue
        known.add(p.slug)
        marker = state.committed(p) if mode == "resume" else None
        if marker is not None:
            done[p.number] = marker
    invalidated = len(known) - len(done)
    todo = _without(partitions, done)
    job_fingerprint = _job_fingerprint(partitions)
    finished = (
        mode == "resume"
        and not todo
        and state.manifest_matches(
            job_fingerprint, lambda: manifest_digest(done[n] for n in sorted(done))
        )
    )
    return Worklist(partitions, job_fingerprint, done, todo, invalidated, finished, known)


def _without(partitions: Sequence[Partition], done: Collection[int]) -> Sequence[Partition]:
    """``partitions`` but those numbered in ``done``."""
    if not done:
        return partitions
    return Subset(partitions, array("q", (i for i in range(len(partitions)) if i not in done)))


@dataclasses.dataclass(frozen=True)
class Subset(Sequence[Partition]):
    """Some of a job's partitions, by number."""

    partitions: Sequence[Partition]
    numbers: array

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i: Any) -> Any:
        return self.partitions[self.numbers[i]]
