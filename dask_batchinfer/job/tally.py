"""What the partitions a run committed add up to, in memory that stays flat.

The executor hands every partition's :class:`~dask_batchinfer.pipeline.stages.PartitionStats`
to a :class:`Tally` as it commits and keeps nothing else: sums and maxima,
each worker's batch size and model loads, the partition's marker (the
manifest on storage lists every file; the marker is all a partition leaves
in memory, and that on the client's disk: :mod:`~dask_batchinfer.job.spool`), and
the stage records of a sample of at most :data:`TIMELINE_PARTITIONS` partitions,
spread evenly over the input. A job of 600,000 partitions thus keeps 600,000
markers on disk and 9 bytes each in memory, not 2.4 million timeline records
and 600,000 statistics objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dask_batchinfer.io.commit import Marker
from dask_batchinfer.job.spool import MarkerSpool
from dask_batchinfer.pipeline.stages import ModelLoad, PartitionStats

__all__ = ["TIMELINE_PARTITIONS", "Tally", "count_marker"]

#: Partitions whose stage records the timeline keeps (of the report and ``JobResult.timeline``).
TIMELINE_PARTITIONS = 2000

_SUMS = (
    "read_seconds",
    "preprocess_seconds",
    "infer_seconds",
    "write_seconds",
    "retries",
)
_BATCH_SUMS = ("turn_seconds", "oom_events", "tokens", "padded_tokens", "padded_tokens_unsorted")


@dataclasses.dataclass
class Tally:
    """The sum of the statistics of the partitions committed so far.

    Attributes
    ----------
    partitions : int
        Partitions added.
    markers : MarkerSpool
        Each one's commit, by partition number (on the client's disk).
    counts : dict of str to int
        What the markers add up to: ``rows_in``, ``rows_out``, ``rows_quarantined``,
        ``rows_truncated``, ``files`` (data files) and ``error_files``.
    sums : dict of str to float
        Stage seconds, retries and the batching counts, summed.
    batch_size : dict of str to int
        Each worker's batch size in the end.
    loads : dict of str to ModelLoad
        Each worker's model loads, as its partition that counted the most saw them.
    first_commit, last_commit : float or None
        ``time.perf_counter()`` on the client when the first and the last committed.
    first_read : float or None
        When the first read started (epoch seconds), over all partitions.
    stride : int
        The timeline keeps the partitions whose number is a multiple of this
        (doubled whenever they pass ``limit``).
    """

    limit: int = TIMELINE_PARTITIONS
    partitions: int = 0
    rows_computed: int = 0
    markers: MarkerSpool = dataclasses.field(default_factory=MarkerSpool)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    batch_size: dict[str, int] = dataclasses.field(default_factory=dict)
    loads: dict[str, ModelLoad] = dataclasses.field(default_factory=dict)
    first_commit: float | None = None
    last_commit: float | None = None
    first_read: float | None = None
    stride: int = 1
    _records: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def add(self, stats: PartitionStats) -> None:
        """Count one committed partition (``stats.finished`` set)."""
        self.partitions += 1
        self.rows_computed += stats.rows_in
        if stats.marker is not None:
            replaced = self.markers.add(stats.number, stats.marker)
            count_marker(self.counts, stats.marker)
            if replaced is not None:  # committed twice (a rerun): counted once
                count_marker(self.counts, replaced, -1)
        for name in _SUMS:
            self.sums[name] = self.sums.get(name, 0) + getattr(stats, name)
        for name in _BATCH_SUMS:
            self.sums[name] = self.sums.get(name, 0) + getattr(stats.batch, name)
        if stats.worker:
            self.batch_size[stats.worker] = stats.batch.batch_size
        self._load(stats.model_load)
        self.first_commit = _least(self.first_commit, stats.finished)
        self.last_commit = max(stats.finished, self.last_commit or stats.finished)  # 0.0 too
        for record in stats.timeline:
            self.first_read = _least(self.first_read, record["start"])
        if stats.timeline and stats.number % self.stride == 0:
            self._records[stats.number] = stats.timeline
            while len(self._records) > self.limit:
                self.stride *= 2
                self._records = {n: r for n, r in self._records.items() if n % self.stride == 0}

    def _load(self, load: ModelLoad | None) -> None:
        if load is None or load.worker is None:
            return
        seen = self.loads.get(load.worker)
        if seen is None or (load.loads, load.load_seconds) > (seen.loads, seen.load_seconds):
            self.loads[load.worker] = load

    def timeline(self) -> list[dict[str, Any]]:
        """The sampled partitions' stage records, by start."""
        return sorted((r for rs in self._records.values() for r in rs), key=lambda r: r["start"])

    @property
    def timeline_partitions(self) -> int:
        """Partitions in :meth:`timeline`."""
        return len(self._records)


def count_marker(counts: dict[str, int], marker: Marker, sign: int = 1) -> None:
    """Add what ``marker`` counts to ``counts`` (``sign=-1``: take it away)."""
    for name, value in (
        ("rows_in", marker.rows_in),
        ("rows_out", marker.rows_out),
        ("rows_quarantined", marker.rows_quarantined),
        ("rows_truncated", marker.rows_truncated),
        ("files", len(marker.files)),
        ("error_files", len(marker.errors)),
    ):
        counts[name] = counts.get(name, 0) + sign * value


def _least(seen: float | None, value: float) -> float:
    return value if seen is None else min(seen, value)
