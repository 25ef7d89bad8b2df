"""Jobs on clusters started the way users start theirs: ``dask scheduler`` and
``dask worker`` in subprocesses with their own working directories, workers that
do not see the client's disk, workers and schedulers without the user's modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model
from tests.clusters import cli_cluster

pytestmark = pytest.mark.slow

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


def _write_inputs(folder, files=3, rows=50):
    folder.mkdir(parents=True)
    frames = []
    for i in range(files):
        frame = make_features(rows, seed=i, start_id=i * rows)
        frame.to_parquet(folder / f"part-{i}.parquet", index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """``mymodels.py`` (module) and ``mypkg/`` (package) in a folder of their own,
    importable in this process only."""
    folder = tmp_path / "code"
    (folder / "mypkg").mkdir(parents=True)
    (folder / "mymodels.py").write_text(USER_MODULE)
    (folder / "mypkg" / "__init__.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    for name in ("mymodels", "mypkg"):
        sys.modules.pop(name, None)
    yield folder
    for name in ("mymodels", "mypkg"):
        sys.modules.pop(name, None)


def _doubled(frame):
    features = frame[[f"f{i}" for i in range(8)]].to_numpy()
    return 2 * features.sum(axis=1)


def _check_output(output, frame):
    back = dbi.read_output(str(output)).compute().sort_values("id")
    assert len(back) == len(frame)
    np.testing.assert_allclose(back["score"].to_numpy(), _doubled(frame.sort_values("id")),
                               rtol=1e-5)  # fmt: skip


def test_a_relative_output_lands_in_the_clients_folder(tmp_path, monkeypatch):
    frame = _write_inputs(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    with cli_cluster(tmp_path) as cluster:
        result = dbi.run_job("in", tiny_model(), output="out-rel", client=cluster.address,
                             keep=["id"], progress=False)  # fmt: skip
    assert result.rows_out == len(frame)
    assert result.output == str(tmp_path / "out-rel")
    assert len(dbi.read_output(str(tmp_path / "out-rel")).compute()) == len(frame)
    assert not list((tmp_path / "cluster").rglob("*.parquet")), "files under a worker's folder"


def test_workers_blind_to_the_output_folder_fail_before_any_work(tmp_path):
    _write_inputs(tmp_path / "in")
    (tmp_path / "private").mkdir()
    output = tmp_path / "private" / "out"
    with cli_cluster(tmp_path, hide=[tmp_path / "private"]) as cluster:
        with pytest.raises(dbi.ClusterError, match="shared") as caught:
            dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(output),
                        client=cluster.address, progress=False)  # fmt: skip
    message = str(caught.value)
    assert f"the output folder {output}" in message and "s3://" in message
    assert "2 of 2 workers" in message
    assert not list(output.rglob("*.parquet")) and not (output / "_SUCCESS").exists()
    assert not list((output / "_committed").glob("*.json"))


def test_workers_blind_to_the_input_fail_before_any_work(tmp_path):
    (tmp_path / "private").mkdir()
    _write_inputs(tmp_path / "private" / "in")
    with cli_cluster(tmp_path, hide=[tmp_path / "private"]) as cluster:
        with pytest.raises(dbi.ClusterError, match="the input file .*part-0.parquet"):
            dbi.run_job(str(tmp_path / "private" / "in"), tiny_model(),
                        output=str(tmp_path / "out"), client=cluster.address,
                        progress=False)  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_the_scheduler_needs_none_of_the_users_modules(tmp_path, user_code):
    import mymodels

    frame = _write_inputs(tmp_path / "in")
    with cli_cluster(tmp_path, pythonpath=[user_code], scheduler_pythonpath=[]) as cluster:
        result = dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "out"),
                             client=cluster.address, keep=["id"], progress=False)  # fmt: skip
        from distributed import Client

        with Client(cluster.address, set_as_default=False) as c:
            scores = dbi.predict(
                __import__("dask.dataframe").dataframe.read_parquet(str(tmp_path / "in")),
                mymodels.spec, keep=["id"],
            ).compute(scheduler=c)  # fmt: skip
    assert result.rows_out == len(frame)
    _check_output(tmp_path / "out", frame)
    assert len(scores) == len(frame)


def test_a_job_removes_its_plugins_and_later_workers_start_without_its_module(tmp_path, user_code):
    import mymodels
    from distributed import Client

    _write_inputs(tmp_path / "in")
    with cli_cluster(tmp_path, pythonpath=[user_code]) as cluster:
        with Client(cluster.address, set_as_default=False) as c:
            dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "out"),
                        client=c, progress=False)  # fmt: skip
            plugins = c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
            assert not [p for p in plugins if p.startswith("batchinfer")], plugins
            cluster.start_worker("late")  # no PYTHONPATH: cannot import mymodels
            c.wait_for_workers(3, timeout=60)
            late = [a for a, w in c.scheduler_info(n_workers=-1)["workers"].items()
                    if w["name"] == "late"]  # fmt: skip
            assert late
            assert c.run(lambda: 1, workers=late) == {late[0]: 1}
    assert "failure-to-start" not in cluster.log("late")
    assert "ModuleNotFoundError" not in cluster.log("late")


def test_a_missing_module_on_the_workers_is_named_with_the_fix(tmp_path, user_code):
    import mymodels

    _write_inputs(tmp_path / "in")
    output = tmp_path / "out"
    with cli_cluster(tmp_path) as cluster:  # workers without user_code on their path
        with pytest.raises(dbi.ModelLoadError) as caught:
            dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(output),
                        client=cluster.address, progress=False)  # fmt: skip
    message = str(caught.value)
    assert "2 worker(s) cannot import module 'mymodels'" in message
    assert f"upload=[{str(user_code / 'mymodels.py')!r}]" in message
    assert "Nothing was read or written" in message
    report = json.loads((output / "_report.json").read_text())
    assert "ModelLoadError" in json.dumps(report) and "mymodels" in json.dumps(report)


def test_upload_ships_a_module_to_workers_that_lack_it(tmp_path, user_code):
    import mymodels

    frame = _write_inputs(tmp_path / "in")
    with cli_cluster(tmp_path) as cluster:
        result = dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "out"),
                             client=cluster.address, keep=["id"], progress=False,
                             upload=[str(user_code / "mymodels.py")])  # fmt: skip
        from distributed import Client

        with Client(cluster.address, set_as_default=False) as c:
            plugins = c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    assert result.rows_out == len(frame)
    _check_output(tmp_path / "out", frame)
    assert not [p for p in plugins if p.startswith("batchinfer")], plugins


def _cli(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "dask_batchinfer", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_the_cli_imports_from_its_folder_and_ships_a_package(tmp_path, user_code):
    frame = _write_inputs(tmp_path / "in")
    with cli_cluster(tmp_path) as cluster:
        args = ["run", "--input", str(tmp_path / "in"), "--model", "mypkg:spec",
                "--keep", "id", "--scheduler", cluster.address, "--progress", "off"]  # fmt: skip
        missing = _cli([*args, "--output", str(tmp_path / "no")], cwd=user_code)
        shipped = _cli([*args, "--output", str(tmp_path / "out"), "--upload", "mypkg"],
                       cwd=user_code)  # fmt: skip
    assert missing.returncode != 0
    assert "cannot import module 'mypkg'" in missing.stderr and "--upload" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert shipped.returncode == 0, shipped.stderr
    _check_output(tmp_path / "out", frame)


def test_user_module_source_is_shipped_fresh_each_job(tmp_path, user_code):
    """A changed module re-shipped to long-lived workers is the version that runs."""
    import importlib

    import mymodels

    frame = _write_inputs(tmp_path / "in", files=1)
    with cli_cluster(tmp_path, n_workers=1) as cluster:
        dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "a"),
                    client=cluster.address, keep=["id"], progress=False,
                    upload=[str(user_code / "mymodels.py")])  # fmt: skip
        source = USER_MODULE.replace("2 * x.sum", "3 * x.sum")
        (user_code / "mymodels.py").write_text(textwrap.dedent(source))
        importlib.reload(mymodels)
        dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "b"),
                    client=cluster.address, keep=["id"], progress=False,
                    upload=[str(user_code / "mymodels.py")])  # fmt: skip
    a = dbi.read_output(str(tmp_path / "a")).compute().sort_values("id")
    b = dbi.read_output(str(tmp_path / "b")).compute().sort_values("id")
    np.testing.assert_allclose(b["score"].to_numpy(), 1.5 * a["score"].to_numpy(), rtol=1e-5)
    assert len(b) == len(frame)


def test_workers_with_another_version_are_refused_before_any_work(tmp_path):
    import shutil

    import dask_batchinfer

    other = tmp_path / "other"
    shutil.copytree(os.path.dirname(dask_batchinfer.__file__), other / "dask_batchinfer",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (other / "dask_batchinfer" / "version.py").write_text('__version__ = "0.0.1"\n')
    _write_inputs(tmp_path / "in", files=1)
    with cli_cluster(tmp_path, n_workers=1, pythonpath=[other]) as cluster:
        with pytest.raises(dbi.ClusterError, match=r"dask-batchinfer 0\.0\.1.*same version"):
            dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                        client=cluster.address, progress=False)  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.parquet"))
