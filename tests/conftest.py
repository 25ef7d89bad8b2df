"""Shared fixtures: a real LocalCluster of worker processes, a loopback S3 server, and
helpers that write test inputs and compute the scores a job must produce."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import pytest

# Set before any worker process is spawned: workers inherit the environment, so
# credentials reach them through the supported path and never through the graph.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Most tests write a few tiny input files and count partitions: one file, one
# partition (subprocesses inherit this too). test_small_files_are_grouped
# checks the default grouping.
os.environ["DASK_BATCHINFER__PARTITION_SIZE"] = "1B"
# Notebook 04 classifies 2,000 generated images; 120 check the same code in CI.
os.environ.setdefault("SCANS_IMAGES", "120")


@pytest.fixture(autouse=True, scope="session")
def _one_partition_per_file():
    import dask

    with dask.config.set({"batchinfer.partition-size": "1B"}):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_cluster(n_workers: int, threads_per_worker: int = 1, silence_logs=logging.WARNING):
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=silence_logs,
    )


@contextlib.contextmanager
def _private_client(n_workers: int, threads_per_worker: int = 1, silence_logs=logging.WARNING):
    from distributed import Client

    with (
        _local_cluster(n_workers, threads_per_worker, silence_logs) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def cluster():
    """A LocalCluster of 2 worker processes with 1 thread each, on 127.0.0.1."""
    with _local_cluster(n_workers=2) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def private_client():
    """Start a cluster of one's own, for tests that need another shape or kill workers.

    Returns
    -------
    callable
        ``private_client(n_workers, threads_per_worker=1, silence_logs=logging.WARNING)``,
        a context manager that starts a LocalCluster of worker processes on
        127.0.0.1 (as :func:`cluster` does) and yields a Client of it that is
        not the default client; both are closed on exit. Each start costs
        seconds: prefer :func:`client` where the session cluster will do.
    """
    return _private_client


@pytest.fixture(scope="session")
def client(cluster):
    """A synchronous Client connected to :func:`cluster` (the default client while open)."""
    from distributed import Client

    with Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server):
    """An empty bucket ``batchinfer-test`` on a freshly reset S3 server.

    Yields ``(s3fs filesystem, storage_options)``; the options hold only the
    endpoint, credentials come from the environment.
    """
    import requests
    import s3fs

    requests.post(f"{s3_server}/moto-api/reset", timeout=10).raise_for_status()
    storage_options = {"endpoint_url": s3_server}
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**storage_options)
    fs.mkdir("batchinfer-test")
    yield fs, storage_options
    s3fs.S3FileSystem.clear_instance_cache()


def _write_inputs(folder, frame, files: int, fs=None, first: int = 0) -> list[str]:
    import fsspec
    import numpy as np

    fs = fs or fsspec.filesystem("file")
    folder = os.fspath(folder)
    fs.makedirs(folder, exist_ok=True)
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), files)):
        path = f"{folder}/in-{first + i:03d}.parquet"
        with fs.open(path, "wb") as f:
            frame.iloc[rows].to_parquet(f, index=False)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def write_inputs():
    """Write a frame as Parquet input files.

    Returns
    -------
    callable
        ``write_inputs(folder, frame, files, fs=None, first=0) -> list of paths``:
        splits ``frame`` into ``files`` consecutive chunks (``np.array_split``)
        written without the index as ``<folder>/in-<first>.parquet``,
        ``in-<first + 1>.parquet`` ... (three digits, so that names sort in row
        order and one file is one partition). ``folder`` is a local path unless
        ``fs`` is given (e.g. the S3 filesystem and ``"bucket/in"``); it is
        created if missing. Writing again with the same ``first`` replaces
        those files.
    """
    return _write_inputs


def _expected_scores(frame, seed: int = 0):
    from dask_batchinfer.pipeline.infer import run_model
    from dask_batchinfer.testing import feature_columns, tiny_model

    return run_model(tiny_model(seed=seed), frame[feature_columns(8)])["score"].to_numpy()


@pytest.fixture(scope="session")
def expected_scores():
    """The scores ``tiny_model(seed=seed)`` gives the rows of a frame, computed in-process.

    Returns
    -------
    callable
        ``expected_scores(frame, seed=0) -> np.ndarray`` of float32, one score
        per row of ``frame`` in its order (only the columns ``f0`` .. ``f7``
        are read), computed with :func:`dask_batchinfer.pipeline.infer.run_model`:
        what a job's ``score`` column must hold, row for row.
    """
    return _expected_scores
