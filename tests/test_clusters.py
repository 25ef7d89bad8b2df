"""Jobs on a cluster started the way users start theirs: ``dask scheduler`` and
``dask worker`` in subprocesses with their own working directories, the user's
module on the workers' path but not the scheduler's; workers that do not see
the client's disk; workers with another version of the package.

The user's-code-missing cases (and ``upload=``) are in ``test_user_code.py``.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import tiny_model
from tests.clusters import (
    USER_NAMES,
    check_doubled,
    cli_cluster,
    scheduler_plugins,
    write_inputs,
    write_user_code,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One CLI cluster for this module: the user's code on the workers' path only."""
    folder = tmp_path_factory.mktemp("shared")
    code = write_user_code(folder / "code")
    with cli_cluster(folder, pythonpath=[code], scheduler_pythonpath=[]) as cluster:
        cluster.code = code
        yield cluster


@pytest.fixture
def user_modules(shared, monkeypatch):
    """The user's modules importable in this process (from the shared cluster's folder)."""
    monkeypatch.syspath_prepend(str(shared.code))
    for name in USER_NAMES:
        sys.modules.pop(name, None)
    yield
    for name in USER_NAMES:
        sys.modules.pop(name, None)


def test_a_relative_output_lands_in_the_clients_folder(tmp_path, monkeypatch, shared):
    frame = write_inputs(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    result = dbi.run_job("in", tiny_model(), output="out-rel", client=shared.address,
                         keep=["id"], progress=False)  # fmt: skip
    assert result.rows_out == len(frame)
    assert result.output == str(tmp_path / "out-rel")
    assert len(dbi.read_output(str(tmp_path / "out-rel")).compute()) == len(frame)
    assert not list(shared.folder.rglob("*.parquet")), "files under a worker's folder"


def test_the_scheduler_needs_none_of_the_users_modules(tmp_path, shared, user_modules):
    import dask.dataframe as dd
    import mymodels
    from distributed import Client

    frame = write_inputs(tmp_path / "in")
    result = dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "out"),
                         client=shared.address, keep=["id"], progress=False)  # fmt: skip
    with Client(shared.address, set_as_default=False) as c:
        lazy = dbi.predict(dd.read_parquet(str(tmp_path / "in")), mymodels.spec, keep=["id"])
        scores = lazy.compute(scheduler=c)
    assert result.rows_out == len(frame) == len(scores)
    check_doubled(tmp_path / "out", frame)


def test_workers_blind_to_the_output_or_the_input_fail_before_any_work(tmp_path):
    private = tmp_path / "private"
    write_inputs(private / "in")
    write_inputs(tmp_path / "in")
    with cli_cluster(tmp_path, hide=[private]) as cluster:
        with pytest.raises(dbi.ClusterError, match="shared storage") as blind_output:
            dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(private / "out"),
                        client=cluster.address, progress=False)  # fmt: skip
        with pytest.raises(dbi.ClusterError, match="the input file .*part-0.parquet"):
            dbi.run_job(str(private / "in"), tiny_model(), output=str(tmp_path / "out"),
                        client=cluster.address, progress=False)  # fmt: skip
    message = str(blind_output.value)
    assert f"the output folder {private / 'out'}" in message and "s3://" in message
    assert "2 of 2 workers" in message
    for output in (private / "out", tmp_path / "out"):
        assert not list(output.rglob("*.parquet")) and not (output / "_SUCCESS").exists()
        assert not list(output.glob("_committed/*.json"))


def test_workers_with_another_version_are_refused_before_any_work(tmp_path):
    import dask_batchinfer

    other = tmp_path / "other"
    shutil.copytree(os.path.dirname(dask_batchinfer.__file__), other / "dask_batchinfer",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (other / "dask_batchinfer" / "version.py").write_text('__version__ = "0.0.1"\n')
    write_inputs(tmp_path / "in", files=1)
    with cli_cluster(tmp_path, n_workers=1, pythonpath=[other]) as cluster:
        with pytest.raises(dbi.ClusterError, match=r"dask-batchinfer 0\.0\.1.*same version"):
            dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                        client=cluster.address, progress=False)  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_a_job_removes_its_plugins_and_later_workers_start_without_its_module(
    tmp_path, shared, user_modules
):
    """Last in the module: it adds a worker to the shared cluster."""
    import mymodels
    from distributed import Client

    write_inputs(tmp_path / "in")
    with Client(shared.address, set_as_default=False) as c:
        dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "out"),
                    client=c, progress=False)  # fmt: skip
        assert not [p for p in scheduler_plugins(c) if p.startswith("batchinfer")]
        shared.start_worker("late")  # no PYTHONPATH: cannot import mymodels
        c.wait_for_workers(3, timeout=60)
        late = [a for a, w in c.scheduler_info(n_workers=-1)["workers"].items()
                if w["name"] == "late"]  # fmt: skip
        assert late and c.run(lambda: 1, workers=late) == {late[0]: 1}
    assert "failure-to-start" not in shared.log("late")
    assert "ModuleNotFoundError" not in shared.log("late")
