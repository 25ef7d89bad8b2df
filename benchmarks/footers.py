"""Reading a row-group partition of a big file, against the same rows as their own file (#27).

    python -m benchmarks.footers

One file of 1,000,000 rows in 1,000 row groups (``make_features``: an id and 8
float columns); 100 partitions of one row group each (1,000 rows), read by the
job's own read task. Side by side, in one process, each variant over the same
100 partitions, best of 3 passes:

- ``cached``: the row groups of the big file, its parsed footer reused (the
  first read of the pass parses it: the cache is cleared before each pass);
- ``cold``: the same, the footer read and parsed for every partition (what
  every read did before footers were kept);
- ``own_file``: the same 1,000 rows written as their own file.

Target: ``cached`` <= 1.5x ``own_file`` per partition. Writes
``benchmarks/results/footers-cpu.{json,md}``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from dask_batchinfer.io import read
from dask_batchinfer.testing import make_features

ROWS, GROUP, SAMPLED = 1_000_000, 1_000, 100


def _pass(pieces: list, clear_each: bool) -> float:
    read._footers.clear()
    start = time.perf_counter()
    for piece in pieces:
        if clear_each:
            read._footers.clear()
        read._read_files([piece], protocol="file", storage_options={})
    return (time.perf_counter() - start) / len(pieces)


def main() -> dict:
    folder = tempfile.mkdtemp(prefix="bench-footers-")
    big = os.path.join(folder, "big.parquet")
    table = pa.Table.from_pandas(make_features(ROWS, seed=1), preserve_index=False)
    pq.write_table(table, big, row_group_size=GROUP)
    version = str(os.stat(big).st_mtime_ns)
    groups = list(range(0, ROWS // GROUP, ROWS // GROUP // SAMPLED))
    own = []
    for g in groups:
        path = os.path.join(folder, f"own-{g}.parquet")
        pq.write_table(table.slice(g * GROUP, GROUP), path)
        own.append((path, None, None, (), str(os.stat(path).st_mtime_ns)))
    pieces = [(big, (g,), None, (), version) for g in groups]
    runs: dict[str, list[float]] = {"cached": [], "cold": [], "own_file": []}
    for _ in range(3):
        runs["cached"].append(_pass(pieces, clear_each=False))
        runs["cold"].append(_pass(pieces, clear_each=True))
        runs["own_file"].append(_pass(own, clear_each=False))
    best = {k: min(v) * 1000 for k, v in runs.items()}
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": ROWS,
        "row_groups": ROWS // GROUP,
        "partitions_read": len(pieces),
        "ms_per_partition": {k: round(v, 3) for k, v in best.items()},
        "cached_vs_own_file": round(best["cached"] / best["own_file"], 2),
        "cold_vs_own_file": round(best["cold"] / best["own_file"], 2),
        "footer_bytes": pq.ParquetFile(big).metadata.serialized_size,
    }
    _write(report)
    print(json.dumps(report, indent=1))
    return report


def _write(report: dict) -> None:
    folder = os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(folder, "footers-cpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    ms = report["ms_per_partition"]
    lines = [
        "# Row-group partitions: footers parsed once",
        "",
        f"{report['rows']:,} rows in {report['row_groups']:,} row groups (footer "
        f"{report['footer_bytes']:,} bytes); {report['partitions_read']} one-row-group "
        f"partitions read by the job's read task, best of 3 passes; {report['when']}; "
        "`python -m benchmarks.footers`.",
        "",
        "| variant | ms per partition | vs own file |",
        "|---|---|---|",
        f"| footer reused (now) | {ms['cached']} | {report['cached_vs_own_file']}x |",
        f"| footer parsed each time (before) | {ms['cold']} | {report['cold_vs_own_file']}x |",
        f"| the same rows as their own file | {ms['own_file']} | 1.00x |",
    ]
    with open(os.path.join(folder, "footers-cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
