"""Clusters started the way users start theirs: ``dask scheduler`` and ``dask worker``
command lines in subprocesses, each in its own working directory.

``cli_cluster(tmp_path, ...)`` yields a :class:`CliCluster` with the scheduler's
address; the workers' environment is the test's minus ``PYTHONPATH`` (plus what
``pythonpath=`` names), so a module the test imports from its temporary folder
is not on the workers unless the test ships it. ``hide=[folder]`` starts the
workers in their own mount namespace with an empty ``tmpfs`` over each folder:
the workers of another machine, which do not see the client's disk there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_hide() -> bool:
    """Whether this machine lets a process mount over a folder in its own namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


@dataclasses.dataclass
class CliCluster:
    address: str
    folder: Path
    processes: list[subprocess.Popen]
    worker_env: dict[str, str]
    worker_args: list[str]
    hide: list[str]

    def start_worker(self, name: str, pythonpath: Sequence[str | Path] = ()) -> subprocess.Popen:
        """Start one more ``dask worker`` in its own folder (``workers/<name>``)."""
        folder = self.folder / "workers" / name
        folder.mkdir(parents=True)
        env = dict(self.worker_env)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
        command = [DASK, "worker", self.address, "--name", name, "--host", "127.0.0.1",
                   "--local-directory", str(folder / "local"), "--no-dashboard",
                   *self.worker_args]  # fmt: skip
        if self.hide:
            mounts = " && ".join(f"mount -t tmpfs tmpfs '{h}'" for h in self.hide)
            quoted = " ".join(f"'{c}'" for c in command)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"{mounts} && exec {quoted}"]  # fmt: skip
        log = open(folder / "worker.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.folder / "workers" / name / "worker.log").read_text(errors="replace")


@contextlib.contextmanager
def cli_cluster(
    tmp_path: Path,
    n_workers: int = 2,
    *,
    nthreads: int = 1,
    pythonpath: Sequence[str | Path] = (),
    scheduler_pythonpath: Sequence[str | Path] | None = None,
    hide: Sequence[str | Path] = (),
    worker_args: Sequence[str] = (),
    memory_limit: str = "4GiB",
) -> Iterator[CliCluster]:
    """A scheduler and ``n_workers`` workers started with the ``dask`` command line."""
    if hide and not can_hide():
        pytest.skip("needs `unshare --mount` (root or user namespaces) to hide folders")
    folder = tmp_path / "cluster"
    (folder / "scheduler").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_env = dict(env)
    if scheduler_pythonpath is None:
        scheduler_pythonpath = pythonpath
    if scheduler_pythonpath:
        scheduler_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in scheduler_pythonpath)
    log = open(folder / "scheduler" / "scheduler.log", "wb")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", "127.0.0.1:0", "--no-show"],
        cwd=folder / "scheduler", env=scheduler_env, stdout=log, stderr=log,
    )  # fmt: skip
    cluster = CliCluster(
        address=address, folder=folder, processes=[scheduler], worker_env=env,
        worker_args=["--nthreads", str(nthreads), "--memory-limit", memory_limit,
                     *worker_args],
        hide=[str(h) for h in hide],
    )  # fmt: skip
    try:
        _wait_for_port(port, scheduler, folder / "scheduler" / "scheduler.log")
        for i in range(n_workers):
            cluster.start_worker(f"w{i}", pythonpath)
        if n_workers:
            from distributed import Client

            with Client(address, set_as_default=False, timeout="30s") as client:
                client.wait_for_workers(n_workers, timeout=90)
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            process.terminate()
        for process in reversed(cluster.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dask scheduler exited: {log.read_text(errors='replace')}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"dask scheduler did not listen on {port} in 60 s")


# --- the user's code and data, as the cluster tests use them ------------------------

USER_MODULE = """
import torch

import dask_batchinfer as dbi
from dask_batchinfer.testing import feature_columns


class Doubler(torch.nn.Module):
    def forward(self, x):
        return {"score": 2 * x.sum(dim=1)}


def make():
    return Doubler()


spec = dbi.from_torch(make, input_columns=feature_columns(8), outputs={"score": "float32"},
                      name="user-doubler")
"""

USER_NAMES = ("mymodels", "mypkg")


def write_user_code(folder: Path) -> Path:
    """``mymodels.py`` (a module) and ``mypkg/`` (a package) defining ``spec``."""
    (folder / "mypkg").mkdir(parents=True)
    (folder / "mymodels.py").write_text(USER_MODULE)
    (folder / "mypkg" / "__init__.py").write_text(USER_MODULE)
    return folder


def write_inputs(folder: Path, files: int = 3, rows: int = 50):
    """``files`` Parquet files of ``make_features`` rows; returns all rows as one frame."""
    import pandas as pd

    from dask_batchinfer.testing import make_features

    folder.mkdir(parents=True)
    frames = []
    for i in range(files):
        frame = make_features(rows, seed=i, start_id=i * rows)
        frame.to_parquet(folder / f"part-{i}.parquet", index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def check_doubled(output: Path, frame) -> None:
    """The output holds ``frame``'s rows scored by the user's ``Doubler``."""
    import numpy as np

    import dask_batchinfer as dbi

    back = dbi.read_output(str(output)).compute().sort_values("id")
    features = frame.sort_values("id")[[f"f{i}" for i in range(8)]].to_numpy()
    assert len(back) == len(frame)
    np.testing.assert_allclose(back["score"].to_numpy(), 2 * features.sum(axis=1), rtol=1e-5)


def scheduler_plugins(client) -> list[str]:
    return list(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins)))
