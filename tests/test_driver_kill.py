"""Kill the `dask-batchinfer run` process mid-job, then run it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dask_batchinfer.testing import CALL_LOG_ENV, make_features, read_call_log

FILES, ROWS = 24, 100


def _job(tmp_path, log: str) -> subprocess.Popen:
    """The CLI with its own local cluster; slow_model sleeps 0.1 s per 100-row batch."""
    command = [
        sys.executable, "-m", "dask_batchinfer", "run",
        "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
        "--model", "dask_batchinfer.testing:slow_model", "--keep", "id",
    ]  # fmt: skip
    env = {**os.environ, CALL_LOG_ENV: log, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _markers(tmp_path) -> list[dict]:
    folder = tmp_path / "out" / "_committed"
    if not folder.exists():
        return []
    markers = []
    for name in os.listdir(folder):
        try:
            markers.append(json.loads((folder / name).read_text()))
        except (json.JSONDecodeError, FileNotFoundError):
            pass
    return markers


@pytest.mark.slow
# right after the first commit (nearly all left to run) and late (nearly all committed);
# a kill in the middle (8) ran the same code paths
@pytest.mark.parametrize("kill_at", [1, 18])
def test_driver_killed_then_resumed(tmp_path, kill_at, write_inputs, expected_scores):
    frame = make_features(FILES * ROWS, seed=kill_at)
    write_inputs(tmp_path / "in", frame, FILES)

    job = _job(tmp_path, str(tmp_path / "run1.log"))
    deadline = time.monotonic() + 120
    while len(_markers(tmp_path)) < kill_at and job.poll() is None:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)  # the driver, its scheduler and its workers
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before the kill"

    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists()
    visible = [p for p in out.rglob("*.parquet") if not p.relative_to(out).parts[0].startswith("_")]
    for path in visible:  # every file a reader can see is whole
        assert pq.read_table(path).num_rows == ROWS
    committed_rows = sum(m["rows_in"] for m in _markers(tmp_path))
    assert committed_rows >= kill_at * ROWS

    resumed = _job(tmp_path, str(tmp_path / "run2.log"))
    stdout, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr.decode()
    assert "skipped" in stdout.decode()
    _, rows_computed = read_call_log(tmp_path / "run2.log")
    assert rows_computed == FILES * ROWS - committed_rows  # only what was not committed

    back = pd.read_parquet(out).sort_values("id")
    assert back["id"].tolist() == frame["id"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(frame), rtol=1e-5)
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert {f["path"] for f in manifest["files"]} == {
        str(p.relative_to(out)) for p in out.rglob("*.parquet")
    }
