"""run_job() on an adaptive cluster: workers come while there is work and go after it (#13)."""

from __future__ import annotations

import functools
import logging
import time

import dask
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.cluster.local import Pools
from dask_batchinfer.job.demand import WAITING, Demand
from dask_batchinfer.testing import make_features, sleepy_preprocess, tiny_model

PARTITIONS = 16


def _workers(cluster) -> int:
    return len(cluster.scheduler_info["workers"])


@pytest.mark.slow
def test_adaptive_cluster_grows_past_the_first_window_and_reports_retired_workers(
    tmp_path, write_inputs
):
    from distributed import Client, LocalCluster

    write_inputs(tmp_path / "in", make_features(1600, seed=3), files=PARTITIONS)
    # partitions of about a second each: work enough for four workers within 1 s
    slow = functools.partial(sleepy_preprocess, delay=1.0)
    with (
        dask.config.set({"distributed.adaptive.target-duration": "1s"}),
        LocalCluster(n_workers=0, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):  # fmt: skip
        cluster.adapt(minimum=0, maximum=4, interval="200ms", wait_count=5)
        started = time.monotonic()
        result = dbi.run_job(str(tmp_path / "in"), tiny_model(seed=3), preprocess=slow,
                             output=str(tmp_path / "out"), client=client)  # fmt: skip
        elapsed = time.monotonic() - started
        assert result.rows_out == 1600 and result.partitions_run == PARTITIONS
        ran = {r["worker"] for r in result.timeline if r["stage"] == "infer"}
        # the first window (one worker of one thread: two partitions) held two workers at most
        assert len(ran) > 2, (ran, elapsed)
        # the report holds every stage of every partition, also those of retired workers
        for stage in ("read", "preprocess", "infer", "write"):
            assert sorted(r["partition"] for r in result.timeline if r["stage"] == stage) == list(
                range(PARTITIONS)
            ), stage
        assert set(result.model_loads) >= ran and set(result.model_load_seconds) >= ran
        assert set(result.model_loads.values()) == {1}
        deadline = time.monotonic() + 20
        while _workers(cluster) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _workers(cluster) == 0, "the idle cluster did not scale down to no worker"


def test_pools_recount_the_threads_present():
    workers = {
        "a": {"nthreads": 2, "resources": {"preprocess": 1}},
        "b": {"nthreads": 4, "resources": {"model": 1}},
        "c": {"nthreads": 1},
    }
    assert Pools(None, None, 1, 1).recount(workers) == Pools(None, None, 7, 7)
    mixed = Pools("preprocess", "model", 1, 2).recount(workers)
    assert (mixed.model_threads, mixed.total_threads, mixed.mixed) == (4, 7, True)


def _unrunnable(client) -> list[str]:
    return client.run_on_scheduler(
        lambda dask_scheduler: sorted(str(ts.key) for ts in dask_scheduler.unrunnable)
    )


def _eventually(client, expected: list[str]) -> None:
    deadline = time.monotonic() + 10
    while _unrunnable(client) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _unrunnable(client) == expected


def test_demand_shows_waiting_partitions_as_placeholders_that_never_run(client):
    with Demand(client, "0a1b2c3d4e5f", waiting=5, limit=3) as demand:
        _eventually(client, [f"process-batchinfer-0a1b2c3d4e5f-waiting-{n}" for n in range(3)])
        assert all(f.status == "pending" for f in demand.futures)  # no worker has WAITING
        demand.shrink(4)  # more waiting than shown: all stay
        demand.shrink(1)
        _eventually(client, ["process-batchinfer-0a1b2c3d4e5f-waiting-0"])
        demand.retarget("infer")  # costed as the model pool's task on a mixed cluster
        _eventually(client, ["infer-batchinfer-0a1b2c3d4e5f-waiting-3"])
    _eventually(client, [])
    with Demand(client, "0a1b2c3d4e5f", waiting=5, limit=0) as none:
        assert none.futures == []
    assert WAITING not in {r for w in client.scheduler_info()["workers"].values()
                           for r in w.get("resources", {})}  # fmt: skip
