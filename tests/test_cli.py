"""The dask-batchinfer command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dask_batchinfer.testing import make_features


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "dask_batchinfer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_help_explains_every_option():
    out = _cli("run", "--help").stdout
    for option in (
        "--input",
        "--output",
        "--model",
        "--scheduler",
        "--batch-size",
        "--keep",
        "--partition-on",
        "--preprocess",
        "--mode",
        "--cluster",
        "--pool-resources",
    ):
        assert option in out
    assert (
        "module:attribute" in out.replace("MODULE:ATTR", "module:attribute").lower()
        or "mypkg" in out
    )
    assert "demo" in _cli("--help").stdout


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [[], ["--cluster", "mixed", "--cpu-workers", "1"]])
def test_run_on_parquet_starts_its_own_cluster(tmp_path, cluster):
    frame = make_features(500, seed=9)
    (tmp_path / "in").mkdir()
    frame.iloc[:200].to_parquet(tmp_path / "in" / "a.parquet", index=False)
    frame.iloc[200:].to_parquet(tmp_path / "in" / "b.parquet", index=False)
    done = _cli(
        "run",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        "dask_batchinfer.testing:tiny_model",
        "--keep",
        "id",
        "--batch-size",
        "64",
        "--json",
        *cluster,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["rows_in"], summary["rows_out"], summary["partitions"]) == (500, 500, 2)
    assert set(summary["model_loads"].values()) == {1}  # once per model worker
    if cluster:  # mixed: only the one model worker loads it
        assert len(summary["model_loads"]) == 1
    back = pd.read_parquet(tmp_path / "out")
    assert sorted(back["id"]) == list(range(500))
    assert np.isfinite(back["score"]).all()


def test_usage_errors_exit_2_with_a_message(tmp_path):
    done = _cli(
        "run",
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "no_such_module_xyz:spec",
    )
    assert done.returncode == 2
    assert "no_such_module_xyz" in done.stderr and "Traceback" not in done.stderr
    done = _cli(
        "run",
        "--input",
        str(tmp_path / "missing"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "dask_batchinfer.testing:tiny_model",
    )
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert _cli("run").returncode == 2  # argparse: required options missing
