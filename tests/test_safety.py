"""Safe defaults: model files that cannot run code, pinned hashes, loopback-only clusters."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import dask_batchinfer as dbi
from dask_batchinfer.pipeline.infer import run_model
from dask_batchinfer.pipeline.loading import load_model
from dask_batchinfer.testing import TinyMLP, feature_columns, make_features, make_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Boobytrap:
    """Unpickling this touches a marker file: what a malicious .pt file could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _spec(path, **kwargs):
    return dbi.from_torch_file(str(path), input_columns=feature_columns(8),
                               outputs={"score": "float32"}, **kwargs)  # fmt: skip


def test_pickled_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weights": _Boobytrap(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(dbi.ModelLoadError, match="trust_pickle=True"):
        load_model(_spec(tmp_path / "evil.pt", factory=make_mlp))
    assert not marker.exists()
    # the file really is malicious: trusting it runs its code
    with pytest.raises(dbi.ModelLoadError):
        load_model(_spec(tmp_path / "evil.pt", factory=make_mlp, trust_pickle=True))
    assert marker.exists()


def test_state_dict_and_safetensors_load(tmp_path, expected_scores):
    from safetensors.torch import save_file

    reference = make_mlp(seed=3)
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    frame = make_features(300)
    expected = expected_scores(frame, 3)
    for name in ("w.pt", "w.safetensors"):
        spec = _spec(tmp_path / name, factory=TinyMLP, sha256=dbi.file_sha256(str(tmp_path / name)))
        np.testing.assert_allclose(run_model(spec, frame)["score"].to_numpy(), expected, rtol=1e-6)


def test_whole_module_pickle_needs_trust_and_torchscript_does_not(tmp_path, expected_scores):
    torch.save(make_mlp(seed=4), tmp_path / "whole.pt")
    with pytest.raises(dbi.ModelLoadError, match="trust_pickle"):
        load_model(_spec(tmp_path / "whole.pt"))
    frame = make_features(50)
    expected = expected_scores(frame, 4)
    trusted = run_model(_spec(tmp_path / "whole.pt", trust_pickle=True), frame)
    np.testing.assert_allclose(trusted["score"].to_numpy(), expected, rtol=1e-6)
    torch.jit.save(torch.jit.script(make_mlp(seed=4)), tmp_path / "scripted.pt")
    scripted = run_model(_spec(tmp_path / "scripted.pt"), frame)
    np.testing.assert_allclose(scripted["score"].to_numpy(), expected, rtol=1e-6)


def test_sha256_mismatch_fails_naming_both(tmp_path):
    torch.save(make_mlp().state_dict(), tmp_path / "w.pt")
    with pytest.raises(
        dbi.ModelLoadError, match=r"sha256 of .*w\.pt is [0-9a-f]{64}, the spec pins 00"
    ):
        load_model(_spec(tmp_path / "w.pt", factory=TinyMLP, sha256="00" * 32))


def test_missing_model_file_fails_before_reading_input(client, tmp_path):
    import dask.dataframe as dd

    spec = _spec(tmp_path / "nope.safetensors", factory=TinyMLP, name="ranker-v3")
    with pytest.raises(dbi.ModelLoadError, match="ranker-v3.*nope.safetensors"):
        dbi.run_job(dd.from_pandas(make_features(10), npartitions=2), spec,
                    output=str(tmp_path / "out"))  # fmt: skip
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".parquet")]


@pytest.mark.parametrize("kind", ["cpu", "mixed"])
def test_clusters_listen_on_loopback_only(kind):
    import psutil

    with dbi.local_cluster(kind=kind, silence_logs=logging.ERROR) as cluster:
        if kind == "mixed":
            cluster.wait_for_workers(2)
        pids = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
        listening = [
            c.laddr for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        ]  # fmt: skip
    assert len(listening) >= 3  # scheduler, dashboard, workers, nannies
    assert {address.ip for address in listening} == {"127.0.0.1"}, listening


LISTENING = r"""
import json, sys, threading, time
import dask, psutil
import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, slow_model

def listening():
    me = psutil.Process()
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return found

if __name__ == "__main__":
    folder = sys.argv[1]
    make_features(1000).to_parquet(f"{folder}/in.parquet")
    seen, stop = set(), threading.Event()
    def watch():
        while not stop.is_set():
            seen.update(listening())
            time.sleep(0.05)
    watcher = threading.Thread(target=watch)
    watcher.start()
    with dask.config.set({"distributed.dashboard.link": "/proxy/{port}/status"}):
        result = dbi.run_job(f"{folder}/in.parquet", slow_model(delay=0.1), progress=False,
                             output=f"{folder}/out")
    stop.set()
    watcher.join()
    print("RESULT " + json.dumps({"addresses": sorted(seen), "link": result.dashboard_link}))
"""


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_jobs_listen_on_loopback_only_on_every_engine(tmp_path, engine):
    """Every socket the job's process and its children open is on 127.0.0.1 (the threads
    engine's worker HTTP server used to listen on 0.0.0.0 and [::]); the dashboard link
    follows ``distributed.dashboard.link``."""
    script = tmp_path / "job.py"
    script.write_text(LISTENING)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
        timeout=180, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT, "DASK_BATCHINFER__ENGINE": engine},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    found = json.loads(line[len("RESULT ") :])
    assert found["addresses"] == ["127.0.0.1"], found
    assert re.fullmatch(r"/proxy/\d+/status", found["link"]), found
