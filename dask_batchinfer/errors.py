"""Exceptions raised by dask-batchinfer.

Every exception subclasses a builtin, so ``except ValueError`` keeps working::

    BatchInferError
     +-- InputError(BatchInferError, ValueError)      bad arguments or input data
     |    +-- SchemaError                              a partition lacks a column
     +-- ModelLoadError(BatchInferError, RuntimeError) a model recipe failed to load
     +-- PartitionError(BatchInferError, RuntimeError) one partition failed; names it
     |    +-- PartitionTimeoutError                    it ran past partition_timeout, twice
     +-- BadRowsError(BatchInferError, RuntimeError)   more rows quarantined than allowed
     +-- OutputLockedError(BatchInferError, RuntimeError) another job holds the output
     +-- ClusterError(BatchInferError, RuntimeError)   the cluster cannot run the job
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BadRowsError",
    "BatchInferError",
    "ClusterError",
    "InputError",
    "ModelLoadError",
    "OutputLockedError",
    "PartitionError",
    "PartitionTimeoutError",
    "SchemaError",
    "did_you_mean",
]


class BatchInferError(Exception):
    """Base class of every error raised by dask-batchinfer."""


class InputError(BatchInferError, ValueError):
    """An argument, a column or an input partition is not what the job needs."""


class SchemaError(InputError):
    """A partition lacks a column the model reads (schema drift between input files).

    A whole-partition error: ``on_error="quarantine"`` does not set its rows
    aside one by one, the job fails naming the file and the column.
    """


class ModelLoadError(BatchInferError, RuntimeError):
    """Loading a :class:`~dask_batchinfer.ModelSpec` on a worker failed."""


class PartitionError(BatchInferError, RuntimeError):
    """Processing one partition failed.

    Attributes
    ----------
    partition : int
        Index of the input partition.
    source : str or None
        The input file of that partition, when known.
    """

    def __init__(self, message: str, *, partition: int, source: str | None = None) -> None:
        super().__init__(message)
        self.partition = partition
        self.source = source

    def __reduce__(self):  # keep the attributes when the error crosses processes
        return (_rebuild_partition_error, (str(self), self.partition, self.source))


class PartitionTimeoutError(PartitionError):
    """A partition ran longer than ``partition_timeout`` on two attempts.

    Attributes
    ----------
    seconds : float
        The timeout it exceeded.
    """

    def __init__(
        self, message: str, *, partition: int, source: str | None = None, seconds: float = 0.0
    ) -> None:
        super().__init__(message, partition=partition, source=source)
        self.seconds = seconds

    def __reduce__(self):
        return (_rebuild_timeout_error, (str(self), self.partition, self.source, self.seconds))


class BadRowsError(BatchInferError, RuntimeError):
    """``on_error="quarantine"`` found more bad rows than ``max_bad_rows`` allows."""


class ClusterError(BatchInferError, RuntimeError):
    """The cluster cannot run the job: no workers for too long, or workers that cannot stay up."""


class OutputLockedError(BatchInferError, RuntimeError):
    """Another job holds the output folder's lease (``_lock``): one job per output at a time.

    Attributes
    ----------
    holder : dict
        The other job's lease: ``job``, ``host``, ``pid``, ``started``, ``heartbeat``.
    """

    def __init__(self, message: str, *, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


def _rebuild_partition_error(message: str, partition: int, source: str | None) -> PartitionError:
    return PartitionError(message, partition=partition, source=source)


def _rebuild_timeout_error(
    message: str, partition: int, source: str | None, seconds: float
) -> PartitionTimeoutError:
    return PartitionTimeoutError(message, partition=partition, source=source, seconds=seconds)


def did_you_mean(missing: Sequence[str], choices: Sequence[str]) -> str:
    """``" (did you mean 'f3'?)"`` for names close to ``choices`` (``difflib``), or ``""``."""
    import difflib

    pairs = [
        (name, difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6))
        for name in missing
    ]
    found = [(name, close[0]) for name, close in pairs if close]
    if not found:
        return ""
    if len(missing) == 1:
        return f" (did you mean {found[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{c!r} for {n!r}" for n, c in found) + "?)"
