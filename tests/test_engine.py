"""The cluster a job gets when it is given none (``engine.py``): chosen by size, kept for reuse.

Each case runs a script in its own Python process, as a user's script or
notebook does: no default client, nothing started before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.cluster.engine import choose_engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, os, sys
import pandas as pd
import dask_batchinfer as dbi
from dask_batchinfer.cluster.engine import embedded_client
from dask_batchinfer.testing import make_features, tiny_model

folder, out = sys.argv[1], sys.argv[2]
os.makedirs(folder, exist_ok=True)
for i in range(3):
    make_features(200, seed=i, start_id=200 * i).to_parquet(f"{folder}/in-{i}.parquet")
runs = []
for name in ("first", "second", "after-shutdown"):
    if name == "after-shutdown":
        dbi.shutdown()
    result = dbi.run_job(folder, tiny_model(), output=f"{out}/{name}", keep=["id"],
                         progress=False)
    back = pd.read_parquet(f"{out}/{name}")
    kept, _ = embedded_client(sys.argv[3])  # the cluster the job ran on, kept for the next
    runs.append({"loads": result.model_loads, "rows": len(back),
                 "scheduler": kept.scheduler_info()["id"],
                 "workers": sorted(kept.scheduler_info()["workers"]),
                 "ids": int(back["id"].nunique()), "phases": list(result.phases)})
print("RESULT " + json.dumps({"pid": os.getpid(), "runs": runs}))
"""


def _script(tmp_path, **env):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(tmp_path / "out"),
         "processes" if env["DASK_BATCHINFER__ENGINE"] == "processes" else "threads"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "processes"])
def test_jobs_without_a_client_share_one_kept_cluster_until_shutdown(tmp_path, engine):
    """A small input runs in the script's own process (auto); the second job reuses the first
    job's cluster and its loaded model; after dbi.shutdown() a new cluster loads it again."""
    got = _script(tmp_path, DASK_BATCHINFER__ENGINE=engine)
    first, second, third = got["runs"]
    for run in got["runs"]:
        assert (run["rows"], run["ids"]) == (600, 600)
    workers = first["workers"]  # every worker of the cluster (not only those that ran)
    if engine == "auto":  # one in-process worker: no process to start
        assert len(workers) == 1 and workers[0].startswith("inproc://")
    else:
        assert all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert set(first["loads"]) <= set(workers)
    assert second["scheduler"] == first["scheduler"]  # the same cluster, kept...
    assert second["workers"] == workers and set(second["loads"]) <= set(workers)  # ...its workers
    assert all(n == 1 for n in second["loads"].values())  # ...and their model: no new load
    assert third["scheduler"] != first["scheduler"]  # shut down: a new cluster...
    # ...that loads the model again (the in-process worker's count is this process's: 2)
    assert set(third["loads"].values()) == ({2} if engine == "auto" else {1})
    assert first["phases"][:3] == ["input listed", "output state read", "cluster"]
    assert first["phases"][-1] == "report saved"


def test_the_engine_follows_the_setting_and_the_input_size():
    import dask

    with dask.config.set({"batchinfer.engine": "auto", "batchinfer.threads-engine-bytes": "1MiB"}):
        assert choose_engine(512 * 1024) == "threads"
        assert choose_engine(2 * 2**20) == "processes"
        assert choose_engine(None) == "processes"  # a dask DataFrame source: size unknown
    with dask.config.set({"batchinfer.engine": "threads"}):
        assert choose_engine(None) == "threads"
    with (
        dask.config.set({"batchinfer.engine": "fast"}),
        pytest.raises(dbi.InputError, match="engine='fast'"),
    ):
        choose_engine(1)
