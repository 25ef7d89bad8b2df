"""The names of an output folder (see :mod:`dask_batchinfer.io.commit` for the protocol)::

    output/
      part-<slug>-<id>.parquet        committed data (in hive folders with partition_on)
      _committed/<slug>.json          one marker per committed input partition
      _errors/<slug>-<id>.parquet     quarantined rows (on_error="quarantine")
      _staging/                       attempts in flight
      _SUCCESS                        the manifest, written when every partition is committed
      _report.json, _report.html      the last run's report
      _lock                           the lease of the job writing now (see io/lease.py)

Names starting with ``_`` or ``.`` are skipped by Dask, pandas and pyarrow readers.
"""

from __future__ import annotations

__all__ = [
    "COMMITTED",
    "ERRORS",
    "LOCK",
    "MANIFEST",
    "REPORT_HTML",
    "REPORT_JSON",
    "STAGING",
    "is_visible",
]

STAGING = "_staging"
COMMITTED = "_committed"
ERRORS = "_errors"
MANIFEST = "_SUCCESS"
REPORT_JSON = "_report.json"
REPORT_HTML = "_report.html"
LOCK = "_lock"


def is_visible(relpath: str) -> bool:
    """Whether readers see ``relpath`` (no path part starts with ``_`` or ``.``)."""
    return not any(part.startswith(("_", ".")) for part in relpath.split("/"))
