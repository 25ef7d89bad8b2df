"""The partitions of a file input, each a list of pieces, kept in arrays.

A plan of 100,000 partitions held as lists of :class:`InputFile` objects cost
the client about 1 KB a partition (an object, a tuple of row groups and a list
each), more than everything else the job keeps. :class:`InputPartitions` keeps
the listed files once and each piece as a few integers (about 40 bytes a
partition); ``partitions[i]`` makes partition ``i``'s pieces when asked, the
same :class:`InputFile` values the lists held.
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from dask.base import tokenize

from dask_batchinfer.io.inputs import InputFile

__all__ = ["InputPartitions", "PieceArgs", "position"]


class InputPartitions(Sequence[list[InputFile]]):
    """Partitions of ``files``: each a run of pieces, a piece a whole file, some of its row
    groups, or a row range of one row group.

    Built in input order with :meth:`add` (a piece) and :meth:`close` (the partition so far).
    """

    def __init__(self, files: Sequence[InputFile]) -> None:
        self.files = list(files)
        self._index = {f.path: i for i, f in enumerate(self.files)}
        self._file = array("i")  # per piece: which file
        self._groups_at = array("q")  # per piece: where its row groups start (-1: whole file)
        self._groups_to = array("q")  # per piece: where they stop
        self._groups = array("i")  # the row groups of every piece, one after another
        self._rows = array("q")  # per piece: its row range, start and stop (-1, -1: none)
        self._starts = array("q", [0])  # per partition: its first piece (and one past the end)

    def add(self, file: InputFile) -> None:
        """A piece of the partition being built: ``file`` as planned (one of ``files`` with
        its row groups and row range set, or not)."""
        self._file.append(self._index[file.path])
        if file.row_groups is None:
            self._groups_at.append(-1)
        else:
            self._groups_at.append(len(self._groups))
            self._groups.extend(file.row_groups)
        self._groups_to.append(len(self._groups))
        self._rows.extend(file.rows if file.rows is not None else (-1, -1))

    def close(self) -> None:
        """End the partition being built (no-op when it has no piece)."""
        if len(self._file) > self._starts[-1]:
            self._starts.append(len(self._file))

    def extend(self, groups: Iterable[Iterable[InputFile]]) -> None:
        """Add ``groups``, each a partition."""
        for group in groups:
            for file in group:
                self.add(file)
            self.close()

    def __len__(self) -> int:
        return len(self._starts) - 1

    @overload
    def __getitem__(self, i: int) -> list[InputFile]: ...
    @overload
    def __getitem__(self, i: slice) -> list[list[InputFile]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = position(i, len(self))
        return [self._piece(k) for k in range(self._starts[i], self._starts[i + 1])]

    def __eq__(self, other: object) -> bool:
        """Equal to the same partitions as a list of lists (or another plan)."""
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(
            list(a) == list(b) for a, b in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"InputPartitions({len(self)} partitions of {len(self.files)} files)"

    def _piece(self, k: int) -> InputFile:
        file = self.files[self._file[k]]
        at = self._groups_at[k]
        if at < 0:
            return file
        start, stop = self._rows[2 * k], self._rows[2 * k + 1]
        groups = tuple(self._groups[at : self._groups_to[k]])
        rows = (start, stop) if start >= 0 else None
        # made directly: dataclasses.replace takes 1.6x as long (twice a partition)
        return InputFile(path=file.path, relpath=file.relpath, size=file.size,
                         version=file.version, row_groups=groups, rows=rows,
                         keys=file.keys)  # fmt: skip

    def used_files(self) -> Iterator[InputFile]:
        """The files some partition reads (each once), in order."""
        seen = sorted(set(self._file))
        return (self.files[i] for i in seen)

    def __dask_tokenize__(self) -> Any:
        # the arrays hashed in place: tokenize() would take each one's repr (a string 4x
        # their size: 40 MB at 100,000 partitions)
        digest = hashlib.sha1(usedforsecurity=False)
        for a in (self._file, self._groups_at, self._groups_to, self._groups, self._rows):
            digest.update(memoryview(a).cast("B"))
        digest.update(memoryview(self._starts).cast("B"))
        identity = [(f.path, f.size, f.version, f.keys) for f in self.files]
        return tokenize(identity, digest.hexdigest())


def position(i: int, length: int) -> int:
    """Index ``i`` of a sequence of ``length`` items as a position (negative: from the
    end); IndexError past either end (which also ends iteration)."""
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(i)
    return i


@dataclasses.dataclass(frozen=True)
class PieceArgs(Sequence[list[tuple]]):
    """Each partition's pieces as its read task takes them (``from_map``'s iterable),
    made when Dask asks for partition ``i``."""

    partitions: InputPartitions

    def __len__(self) -> int:
        return len(self.partitions)

    def __getitem__(self, i: Any) -> Any:
        return [(f.path, f.row_groups, f.rows, f.keys, f.version) for f in self.partitions[i]]

    def __dask_tokenize__(self) -> Any:
        return ("piece-args", tokenize(self.partitions))
