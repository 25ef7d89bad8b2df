"""Object-store requests per partition: what a job costs in S3 requests, counted at moto.

Each run goes through its own :class:`~s3faults.FaultProxy` (no faults), which
counts every request by kind, so every client and worker opens a fresh s3fs
filesystem (no directory cache carried from the previous run). Jobs of P1 and
P2 input files (one file, one partition) give the cost per partition as the
slope ``(count(P2) - count(P1)) / (P2 - P1)`` and the fixed cost per job
(input listing, lease, output state, probe, manifest, report) as what is left.
"""

from __future__ import annotations

from collections import Counter

import dask
import numpy as np
import pandas as pd
import pytest
from s3faults import FaultProxy

import dask_batchinfer as dbi

P1, P2 = 4, 12
KINDS = ("list", "get", "head", "put", "copy", "delete", "multipart", "other")

# Measured on moto 5 with s3fs (see test_requests_per_partition's docstring).
JOB_PER_PARTITION = {"get": 1, "head": 2, "put": 2}
JOB_FIXED = {"list": 6, "get": 4, "head": 6, "put": 5, "delete": 2}
RESUME_PER_PARTITION = {"get": 1}
RESUME_FIXED = {"list": 5, "get": 3, "head": 3, "put": 1, "delete": 1}


def _zeros(batch: pd.DataFrame) -> np.ndarray:
    return np.zeros(len(batch), np.float32)


def _by_kind(requests: Counter) -> Counter:
    kinds: Counter = Counter()
    for (_, kind), n in requests.items():
        kinds[kind] += n
    return kinds


def _count(s3_server: str, prefix: str, partitions_run: int) -> Counter:
    """Run the job on ``prefix/in`` writing ``prefix/out``; its requests by kind."""
    with FaultProxy(s3_server, put_failure_rate=0.0) as proxy:
        # the handler writes headers and body separately: without this, Nagle's
        # algorithm and delayed ACKs stall each response for 40 ms
        proxy.server.RequestHandlerClass.disable_nagle_algorithm = True
        result = dbi.run_job(
            f"s3://batchinfer-test/{prefix}/in",
            dbi.from_callable(_zeros, input_columns=["x"], outputs={"y": "float32"}),
            output=f"s3://batchinfer-test/{prefix}/out",
            storage_options={"endpoint_url": proxy.url},
            progress=False,
        )
        requests = Counter(proxy.requests)
    assert result.partitions_run == partitions_run
    return _by_kind(requests)


def _split(small: Counter, large: Counter) -> tuple[dict, dict]:
    """(per partition, fixed) by kind, from the counts of a P1 and a P2 run."""
    slope = {k: (large[k] - small[k]) / (P2 - P1) for k in KINDS}
    fixed = {k: small[k] - P1 * slope[k] for k in KINDS}
    return slope, fixed


def _table(rows: dict[str, dict]) -> str:
    shown = [k for k in KINDS if any(row.get(k) for row in rows.values())]
    lines = [f"{'requests':<24}" + "".join(f"{k:>8}" for k in shown) + f"{'total':>8}"]
    for name, row in rows.items():
        cells = "".join(f"{row.get(k, 0):>8.3g}" for k in shown)
        lines.append(f"{name:<24}{cells}{sum(row.values()):>8.3g}")
    return "\n".join(lines)


def _within(measured: dict, bound: dict, headroom: float, what: str, table: str) -> None:
    over = {k: v for k, v in measured.items() if v > bound.get(k, 0) + headroom}
    assert not over, f"{what}: more requests than {bound} (+{headroom}): {over}\n{table}"
    total, allowed = sum(measured.values()), sum(bound.values())
    assert total <= allowed + headroom, f"{what}: {total} requests, not {allowed}\n{table}"


@pytest.mark.slow
def test_requests_per_partition(client, s3, s3_server, write_inputs):
    """S3 requests of a job and of its resume, per partition and fixed per job.

    Measured (moto 5, s3fs, P1=4 and P2=12 partitions, counts are exact integers)::

        requests                    list     get    head     put    copy  delete   total
        job, per partition             0       1       2       2       0       0       5
        job, fixed                     6       4       6       5       0       2      23
        resume, per partition          0       1       0       0       0       0       1
        resume, fixed                  5       3       3       1       0       1      13

    Per partition: the input file (2 HEAD, 1 GET), then the data file and the
    marker, one PUT each (an object appears whole or not at all; until
    68372e3 each was staged and copied into place: 6 requests a file, 15 a
    partition). Resuming a finished job reads every partition's marker (1 GET
    each, 256 at a time) besides one listing of the output; its only PUT is
    the lease (``_lock``), its delete the lease's release.

    A regression of one request per partition moves a slope by 1; a one-off
    extra request (a retry) moves it by 1/(P2 - P1), so slopes get 0.5 of
    headroom and fixed costs 3.
    """
    fs, _ = s3
    for p in (P1, P2):
        frame = pd.DataFrame({"x": np.arange(10 * p, dtype="float64")})
        write_inputs(f"batchinfer-test/p{p}/in", frame, p, fs=fs)
    # no lease renewal during a slow run: its requests would count as fixed cost
    with dask.config.set({"batchinfer.lease-timeout": "1h"}):
        job = {p: _count(s3_server, f"p{p}", partitions_run=p) for p in (P1, P2)}
        resume = {p: _count(s3_server, f"p{p}", partitions_run=0) for p in (P1, P2)}
    job_slope, job_fixed = _split(job[P1], job[P2])
    resume_slope, resume_fixed = _split(resume[P1], resume[P2])
    table = _table(
        {
            "job, per partition": job_slope,
            "job, fixed": job_fixed,
            "resume, per partition": resume_slope,
            "resume, fixed": resume_fixed,
        }
    )
    print(f"\n{table}")  # pytest -s -n 0 shows it (xdist workers' output is not shown)
    _within(job_slope, JOB_PER_PARTITION, 0.5, "job, per partition", table)
    _within(job_fixed, JOB_FIXED, 3, "job, fixed", table)
    _within(resume_slope, RESUME_PER_PARTITION, 0.5, "resume, per partition", table)
    _within(resume_fixed, RESUME_FIXED, 3, "resume, fixed", table)
    for p in (P1, P2):  # a finished job writes nothing but its lease
        assert resume[p]["put"] <= 1 and resume[p]["copy"] == 0, resume[p]
        assert resume[p]["multipart"] == job[p]["multipart"] == 0
