"""Per-process records of what each stage of a job did, where and when.

Workers append one record per stage run (``preprocess``, ``infer``,
``write``); :func:`collect` gathers a job's records from every worker. The
records drive the routing tests (which pool ran what) and the timeline plots.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

from dask_batchinfer.worker import worker_address

__all__ = ["collect", "local_records", "record"]

_records: collections.deque[dict[str, Any]] = collections.deque(maxlen=200_000)
_lock = threading.Lock()


def record(
    job: str, stage: str, partition: int, start: float, end: float | None = None, **extra: Any
) -> None:
    """Note that ``stage`` of ``partition`` ran from ``start`` (``time.time()``) until ``end``
    (default: now)."""
    entry = {
        "job": job,
        "stage": stage,
        "partition": partition,
        "start": start,
        "end": time.time() if end is None else end,
        "worker": worker_address(),
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        **extra,
    }
    with _lock:
        _records.append(entry)


def local_records(job: str | None = None) -> list[dict[str, Any]]:
    """This process's records, of one job or all."""
    with _lock:
        return [dict(r) for r in _records if job is None or r["job"] == job]


def collect(client: Any, job: str) -> list[dict[str, Any]]:
    """A job's records from every worker of ``client``'s cluster, by start time."""
    per_worker = client.run(local_records, job)
    return sorted((r for records in per_worker.values() for r in records), key=lambda r: r["start"])
