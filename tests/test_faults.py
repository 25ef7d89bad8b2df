"""Faults at every phase end cleanly: a job completes exactly once or fails naming what to do.

Workers are killed with SIGKILL by pid, on LocalClusters of worker processes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import threading
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from graphs import counted_graphs, covered, job_graphs
from s3faults import FaultProxy

import dask_batchinfer as dbi
from dask_batchinfer.cli.main import EXIT_LOCKED, main
from dask_batchinfer.testing import (
    LOAD_LOG_ENV,
    make_features,
    sleepy_preprocess,
    slow_loading_model,
    slow_model,
    tiny_model,
)


@pytest.fixture(scope="module")
def killable(private_client):
    """A 3-worker cluster of this module's own, whose workers the tests kill.

    Yields a function returning its client once all 3 workers are back.
    """
    with private_client(3, silence_logs=logging.CRITICAL) as c:

        def ready():
            c.wait_for_workers(3, timeout=60)
            return c

        yield ready


def _kill_when_loading(pid: int, folder) -> threading.Thread:
    """SIGKILL ``pid`` as soon as its model load has started (the loader's marker file)."""

    def kill() -> None:
        deadline = time.monotonic() + 60
        while not (folder / f"loading-{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_worker_killed_while_the_model_loads(killable, tmp_path, s3, expected_scores, where):
    fs, options = s3
    out = str(tmp_path / "out") if where == "local" else "s3://batchinfer-test/out"
    frame = make_features(600, seed=41)
    seed = {"local": 2, "s3": 5}[where]  # a model no worker of the shared cluster has loaded
    c = killable()
    loads = tmp_path / "loads"
    loads.mkdir()
    c.run(_set_env, LOAD_LOG_ENV, str(loads))
    victim = next(iter(c.run(os.getpid).values()))
    killer = _kill_when_loading(victim, loads)  # the model takes 2 s to load
    try:
        result = dbi.run_job(dd.from_pandas(frame, npartitions=12),
                             slow_loading_model(2.0, seed=seed), output=out, keep=["id"],
                             client=c, progress=False,
                             storage_options=options if where == "s3" else None)  # fmt: skip
    finally:
        killer.join()
        c.run(_set_env, LOAD_LOG_ENV, None)
    assert victim not in c.run(os.getpid).values()  # the kill happened ...
    assert (loads / f"loading-{victim}").exists()  # ... during the victim's model load
    assert not (loads / f"loaded-{victim}").exists()
    assert (result.rows_in, result.rows_out, result.partitions_run) == (600, 600, 12)
    back = dbi.read_output(out, storage_options=options if where == "s3" else None).compute()
    back = back.sort_values("id")
    assert back["id"].tolist() == list(range(600))  # exactly once
    np.testing.assert_allclose(
        back["score"].to_numpy(), expected_scores(frame, seed=seed), rtol=1e-5, atol=1e-6
    )


def _hog_on_id_250(frame: pd.DataFrame) -> pd.DataFrame:
    """Preprocess that allocates far past a worker's memory on the partition holding id 250."""
    if (frame["id"] == 250).any():
        hog = np.ones(250_000_000)  # 2 GB
        time.sleep(10)
        del hog
    return frame


@pytest.mark.slow
def test_a_partition_that_kills_its_workers_is_named(tmp_path, write_inputs):
    import dask
    from distributed import Client, LocalCluster

    # one file, so that no innocent partition shares the dying worker (with 0 allowed
    # failures a partition merely queued there would be blamed too)
    write_inputs(tmp_path / "in", make_features(400, seed=42).iloc[200:300], files=1,
                 first=2)  # fmt: skip
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),  # a death a submission
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="1GB",
                     host="127.0.0.1", dashboard_address="127.0.0.1:0",
                     silence_logs=logging.CRITICAL) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):  # fmt: skip
        with pytest.raises(dbi.PartitionError) as info:
            dbi.run_job(str(tmp_path / "in"), tiny_model(),
                        output=str(tmp_path / "out"), preprocess=_hog_on_id_250, client=c,
                        progress=False)  # fmt: skip
    message = str(info.value)
    assert "in-002.parquet" in message and "killed 2 workers" in message
    assert "batch_size" in message and "memory" in message
    assert info.value.source and info.value.source.endswith("in-002.parquet")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def _two_jobs(out, frame, client, stagger: float):
    """Job A, then job B (another model) ``stagger`` seconds later, on the same output."""
    results: dict[str, object] = {}

    def job(name: str, seed: int, delay: float) -> None:
        time.sleep(delay)
        try:
            spec = slow_model(delay=0.06, seed=seed, batch_size=10)  # ~3 s on 2 workers
            results[name] = dbi.run_job(dd.from_pandas(frame, npartitions=20), spec,
                                        output=out, keep=["id"], client=client,
                                        progress=False)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - the test inspects it
            results[name] = err

    threads = [threading.Thread(target=job, args=("a", 1, 0.0)),
               threading.Thread(target=job, args=("b", 2, stagger))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("stagger", [0.0, 1.5])
def test_two_jobs_on_one_output_leave_one_jobs_rows(client, tmp_path, expected_scores, stagger):
    frame = make_features(1000, seed=43)
    out = str(tmp_path / "out")
    results = _two_jobs(out, frame, client, stagger)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    done = [r for r in results.values() if not isinstance(r, Exception)]
    assert len(errors) == 1 and len(done) == 1, results
    assert isinstance(errors[0], dbi.OutputLockedError), repr(errors[0])
    assert "another job is writing" in str(errors[0])
    table = ds.dataset(out, format="parquet").to_table().to_pandas()  # a plain reader
    assert sorted(table["id"]) == list(range(1000))  # exactly one job's rows
    seed = 1 if done[0].model.endswith("seed1") else 2
    back = table.sort_values("id")
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(frame, seed),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert not os.path.exists(os.path.join(out, "_lock"))  # released


def _write_lock(folder, **fields) -> None:
    os.makedirs(folder, exist_ok=True)
    lease = {"job": "other-job", "host": "another-host", "pid": 1, "started": "2026-11-30T02:00:00"}
    with open(os.path.join(folder, "_lock"), "w") as f:
        json.dump(lease | fields, f)


def test_a_live_lease_refuses_a_second_job_before_any_work(client, tmp_path, capsys):
    frame = make_features(100, seed=44)
    out = tmp_path / "out"
    _write_lock(out, heartbeat=time.time())
    with pytest.raises(dbi.OutputLockedError, match="other-job.*another-host") as info:
        dbi.run_job(dd.from_pandas(frame, npartitions=2), tiny_model(), output=str(out),
                    progress=False)  # fmt: skip
    assert info.value.holder["job"] == "other-job"
    assert sorted(os.listdir(out)) == ["_lock"]  # nothing computed, nothing written
    status = dbi.output_status(str(out))
    assert status["state"] == "running" and "other-job" in status["lease"]
    assert main(["status", str(out)]) == EXIT_LOCKED
    frame.to_parquet(tmp_path / "in.parquet")
    code = main(["run", "--input", str(tmp_path / "in.parquet"), "--output", str(out),
                 "--model", "dask_batchinfer.testing:tiny_model",
                 "--scheduler", client.scheduler.address, "--quiet"])  # fmt: skip
    assert code == EXIT_LOCKED and "other-job" in capsys.readouterr().err


@pytest.mark.parametrize("stale", ["old heartbeat", "dead process here"])
def test_a_stale_lease_is_taken_over(client, tmp_path, stale):
    frame = make_features(100, seed=45)
    out = tmp_path / "out"
    if stale == "old heartbeat":
        _write_lock(out, heartbeat=time.time() - 3600)
    else:  # a driver on this machine that died: its pid is gone
        _write_lock(out, heartbeat=time.time(), host=socket.gethostname(), pid=_dead_pid())
    result = dbi.run_job(dd.from_pandas(frame, npartitions=2), tiny_model(), output=str(out),
                         progress=False)  # fmt: skip
    assert result.rows_out == 100 and not (out / "_lock").exists()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _report_put(path: str) -> bool:
    return "_report" in path and "/_staging/" not in path  # the report's final names


def test_a_report_the_output_refuses_is_saved_locally(client, s3, s3_server, write_inputs):
    fs, _ = s3
    frame = make_features(200, seed=46).astype({"f3": "str"})
    frame.loc[150, "f3"] = "n/a"  # fails the job
    write_inputs("batchinfer-test/in", frame, files=2, fs=fs)
    with FaultProxy(s3_server, put_failure_rate=0.0, fail_put=_report_put) as proxy:
        options = {"endpoint_url": proxy.url,
                   "config_kwargs": {"retries": {"total_max_attempts": 1}}}  # fmt: skip
        with pytest.raises(dbi.PartitionError) as info:
            dbi.run_job("s3://batchinfer-test/in", tiny_model(),
                        output="s3://batchinfer-test/out", storage_options=options,
                        progress=False)  # fmt: skip
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "could not be saved beside the output" in notes
    path = notes.rsplit("it is at ", 1)[1].strip()
    with open(path) as f:
        saved = json.load(f)
    assert saved["status"] == "failed" and "f3" in saved["error"]
    assert os.path.exists(path[: -len(".json")] + ".html")


def _hang_on_id_250(frame: pd.DataFrame) -> pd.DataFrame:
    """Preprocess that hangs (sleeps 20 s) on the partition holding id 250."""
    if (frame["id"] == 250).any():
        time.sleep(20)
    return frame


@pytest.mark.slow
def test_a_hung_partition_times_out_naming_its_file(private_client, tmp_path, write_inputs,
                                                   caplog):  # fmt: skip
    import dask

    write_inputs(tmp_path / "in", make_features(400, seed=47), files=4)
    caplog.set_level(logging.INFO, logger="dask_batchinfer")
    started = time.monotonic()
    with (
        private_client(2, silence_logs=logging.CRITICAL) as c,
        dask.config.set({"batchinfer.progress-heartbeat": "1s"}),
        pytest.raises(dbi.PartitionTimeoutError) as info,
    ):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                    preprocess=_hang_on_id_250, client=c, progress="log",
                    partition_timeout=2)  # fmt: skip
    assert time.monotonic() - started < 20  # did not wait for the hang
    err = info.value
    assert isinstance(err, dbi.PartitionError) and err.seconds == 2
    assert "in-002.parquet" in str(err) and "partition_timeout=2 s" in str(err)
    assert err.source.endswith("in-002.parquet")
    logs = caplog.text
    assert "past partition_timeout: retrying once" in logs
    assert "event=heartbeat" in logs and "in-002.parquet" in logs  # progress kept talking
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    # a partition that timed out once under load may still be committing its retry (a
    # cancelled task runs on): the job's failure does not wait for it
    expected, deadline = ["in-000.json", "in-001.json", "in-003.json"], time.monotonic() + 10
    while sorted(os.listdir(tmp_path / "out" / "_committed")) != expected:
        assert time.monotonic() < deadline, os.listdir(tmp_path / "out" / "_committed")
        time.sleep(0.1)


def test_partition_timeout_is_validated_before_anything_runs(tmp_path):
    frame = make_features(10)
    for bad in (0, -5, "soon"):
        with pytest.raises(dbi.InputError, match="partition_timeout"):
            dbi.run_job(dd.from_pandas(frame, npartitions=1), tiny_model(),
                        output=str(tmp_path / "o"), partition_timeout=bad)  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_repeated_worker_kills_complete_exactly_once(killable, tmp_path, expected_scores):
    frame = make_features(2000, seed=48)
    kills: list[int] = []
    stop = threading.Event()
    c = killable()

    def killer() -> None:  # a worker every 1.2 s, 5 times, while models load and run
        while not stop.is_set() and len(kills) < 5:
            time.sleep(1.2)
            pids = list(c.run(os.getpid).values())
            if pids:
                kills.append(pids[len(kills) % len(pids)])
                os.kill(kills[-1], signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    slow = functools.partial(sleepy_preprocess, delay=0.4)
    result = dbi.run_job(dd.from_pandas(frame, npartitions=24),
                         slow_loading_model(1.0, seed=3), output=str(tmp_path / "out"),
                         keep=["id"], client=c, progress=False, preprocess=slow)  # fmt: skip
    stop.set()
    thread.join()
    assert len(kills) >= 3, kills  # the job outlived several kills
    assert (result.rows_out, result.partitions_run) == (2000, 24)
    back = dbi.read_output(str(tmp_path / "out")).compute().sort_values("id")
    assert back["id"].tolist() == list(range(2000))
    np.testing.assert_allclose(
        back["score"].to_numpy(), expected_scores(frame, seed=3), rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_workers_over_their_memory_limit_fail_fast(tmp_path):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="40MB",
                     host="127.0.0.1", dashboard_address="127.0.0.1:0",
                     silence_logs=logging.CRITICAL) as cluster,
        Client(cluster, set_as_default=False) as c,
        pytest.raises(dbi.ClusterError, match="memory") as info,
    ):  # fmt: skip
        dbi.run_job(dd.from_pandas(make_features(100), npartitions=2), tiny_model(),
                    output=str(tmp_path / "out"), client=c, progress=False)  # fmt: skip
    assert "--memory-limit" in str(info.value)


def test_no_workers_for_too_long_fails(tmp_path):
    import dask
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                     dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster, set_as_default=False) as c,
        dask.config.set({"batchinfer.no-workers-timeout": "2s"}),
        pytest.raises(dbi.ClusterError, match="no worker joined the cluster in 2 s"),
    ):  # fmt: skip
        dbi.run_job(dd.from_pandas(make_features(100), npartitions=2), tiny_model(),
                    output=str(tmp_path / "out"), client=c, progress=False)  # fmt: skip


def _write_plain(frame: pd.DataFrame, path) -> None:
    """Uncompressed, plain-encoded Parquet: the same size for any values of the same shape."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="NONE", use_dictionary=False)


def test_content_fingerprint_sees_a_same_size_same_mtime_rewrite(client, tmp_path,
                                                                 expected_scores):  # fmt: skip
    (tmp_path / "in").mkdir()
    first, second = make_features(100, seed=50), make_features(100, seed=50, start_id=0)
    second[["f0", "f1"]] = second[["f1", "f0"]].to_numpy()  # other values, same shape
    path = tmp_path / "in" / "a.parquet"
    _write_plain(make_features(100, seed=51, start_id=100), tmp_path / "in" / "b.parquet")
    _write_plain(first, path)
    out = str(tmp_path / "out")
    for fingerprint in ("metadata", "content"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out + fingerprint, keep=["id"],
                    fingerprint=fingerprint, progress=False)  # fmt: skip
    stat = path.stat()
    _write_plain(second, path)  # a tool that rewrites in place and keeps the mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    kept = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out + "metadata",
                       keep=["id"], progress=False)  # fmt: skip
    assert kept.partitions_run == 0  # the documented limit of the default
    seen = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out + "content", keep=["id"],
                       fingerprint="content", progress=False)  # fmt: skip
    assert (seen.partitions_run, seen.partitions_invalidated) == (1, 1)
    back = dbi.read_output(out + "content").compute().sort_values("id")
    want = expected_scores(second)
    np.testing.assert_allclose(back["score"].to_numpy()[:100], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(dbi.InputError, match="fingerprint='hash'"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out, fingerprint="hash")


def test_cli_turns_any_failure_into_one_line(tmp_path, capsys):
    import dask

    make_features(10).to_parquet(tmp_path / "in.parquet")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["run", "--input", str(tmp_path / "in.parquet"), "--output",
                     str(tmp_path / "out"), "--model", "dask_batchinfer.testing:tiny_model",
                     "--scheduler", f"tcp://127.0.0.1:{_closed_port()}", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("dask-batchinfer: job failed:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    # an error of no known kind (here a TypeError calling the --model "factory")
    code = main(["run", "--input", str(tmp_path / "in.parquet"), "--output",
                 str(tmp_path / "out"), "--model", "json:loads", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "job failed: TypeError" in err and "Traceback" not in err, err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _dies_once_at(batch: pd.DataFrame, row: int, flag: str) -> np.ndarray:
    """A null model whose worker process dies the first time it sees ``row``."""
    if (batch["id"] == row).any() and not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(1)
    return np.zeros(len(batch), np.float32)


@pytest.mark.parametrize("allowed_failures", [None, 0])
def test_a_worker_dying_inside_a_bundle_leaves_every_row_once(
    killable, private_client, tmp_path, allowed_failures
):
    """Quick partitions go several to a task; the worker dies in the middle of one. By
    default the scheduler runs the task again; with ``allowed-failures: 0`` it gives up at
    once (KilledWorker) and the job runs the bundle's partitions again one per task. Either
    way (those committed before the death too) the output holds every row once, the first
    try's files collected."""
    import contextlib

    import dask
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.arange(800)
    pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), tmp_path / "in.parquet",
                   row_group_size=10)  # fmt: skip
    model = dbi.from_callable(
        functools.partial(_dies_once_at, row=305, flag=str(tmp_path / "died")),
        input_columns=["id"], outputs={"y": "float32"}, name="dies-once",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        if allowed_failures is None:
            c = killable()
        else:
            stack.enter_context(dask.config.set({"distributed.scheduler.allowed-failures": 0}))
            c = stack.enter_context(private_client(2, silence_logs=logging.CRITICAL))
        stack.enter_context(dask.config.set({"batchinfer.partition-size": "10 rows"}))
        result, graphs = job_graphs(c, lambda: dbi.run_job(
            str(tmp_path / "in.parquet"), model, keep=["id"], output=str(tmp_path / "out"),
            client=c, progress=False))  # fmt: skip
    assert (tmp_path / "died").exists()
    dying = [covered(k, result.job) for g in graphs for k in g if 30 in covered(k, result.job)]
    assert len(dying[0]) > 1, dying  # partition 30 (row 305) was in a bundle
    if allowed_failures == 0:
        assert [len(d) for d in dying[1:]] == [1], dying  # then on its own
    assert (result.partitions_run, result.rows_out) == (80, 800)
    back = pd.read_parquet(tmp_path / "out")
    assert sorted(back["id"]) == list(range(800))
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 80


def _hangs_at(batch: pd.DataFrame, row: int) -> np.ndarray:
    """A null model that hangs (6 s) on ``row``."""
    if (batch["id"] == row).any():
        time.sleep(6)
    return np.zeros(len(batch), np.float32)


@pytest.mark.slow
def test_a_hung_partition_inside_a_bundle_fails_the_job_and_does_not_hang_it(
    private_client, tmp_path
):
    """A bundle past its time (the partition timeout per partition in it) runs again one
    partition per task, each with two tries of its own; the hung one fails the job. (Which
    partition the error names is not asserted: a cancelled task keeps its worker thread until
    it returns, so partitions sent to that worker meanwhile time out too.)"""
    import dask
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.arange(600)
    pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), tmp_path / "in.parquet",
                   row_group_size=10)  # fmt: skip
    model = dbi.from_callable(functools.partial(_hangs_at, row=255), input_columns=["id"],
                              outputs={"y": "float32"}, name="hangs")  # fmt: skip
    started = time.monotonic()
    with (
        private_client(2, silence_logs=logging.CRITICAL) as c,
        dask.config.set({"batchinfer.partition-size": "10 rows"}),
        counted_graphs(c) as graphs,
        pytest.raises(dbi.PartitionTimeoutError) as info,
    ):
        dbi.run_job(str(tmp_path / "in.parquet"), model, output=str(tmp_path / "out"), client=c,
                    progress=False, partition_timeout=0.25)  # fmt: skip
    assert "partition_timeout=0.25 s twice" in str(info.value)
    assert time.monotonic() - started < 30  # did not hang
    job = next(k for g in graphs for k in g).split("-")[2]
    tries = [covered(k, job) for g in graphs for k in g if 25 in covered(k, job)]
    assert len(tries[0]) > 1 and len(tries[1]) == 1, tries  # in a bundle, then on its own
