"""The user's code on a CLI-started cluster whose workers do not have it: the error
that names the module, ``upload=`` / ``--upload``, the command line importing from
its folder, and a module shipped again after it changed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dask_batchinfer as dbi
from tests.clusters import (
    USER_MODULE,
    USER_NAMES,
    check_doubled,
    cli_cluster,
    scheduler_plugins,
    write_inputs,
    write_user_code,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """``mymodels.py`` and ``mypkg/``, importable in this process only."""
    folder = write_user_code(tmp_path / "code")
    monkeypatch.syspath_prepend(str(folder))
    for name in USER_NAMES:
        sys.modules.pop(name, None)
    yield folder
    for name in USER_NAMES:
        sys.modules.pop(name, None)


def test_a_missing_module_is_named_with_the_fix_and_upload_ships_it(tmp_path, user_code):
    import mymodels
    from distributed import Client

    frame = write_inputs(tmp_path / "in")
    failed, output = tmp_path / "failed", tmp_path / "out"
    with cli_cluster(tmp_path) as cluster:  # workers without user_code on their path
        with pytest.raises(dbi.ModelLoadError) as caught:
            dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(failed),
                        client=cluster.address, progress=False)  # fmt: skip
        result = dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(output),
                             client=cluster.address, keep=["id"], progress=False,
                             upload=[str(user_code / "mymodels.py")])  # fmt: skip
        with Client(cluster.address, set_as_default=False) as c:
            plugins = scheduler_plugins(c)
    message = str(caught.value)
    assert "2 worker(s) cannot import module 'mymodels'" in message
    assert f"upload=[{str(user_code / 'mymodels.py')!r}]" in message
    assert "Nothing was read or written" in message
    report = json.dumps(json.loads((failed / "_report.json").read_text()))
    assert "ModelLoadError" in report and "mymodels" in report
    assert not list(failed.rglob("*.parquet"))
    assert result.rows_out == len(frame)
    check_doubled(output, frame)
    assert not [p for p in plugins if p.startswith("batchinfer")], plugins


def _cli(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "dask_batchinfer", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_the_cli_imports_from_its_folder_and_ships_a_package(tmp_path, user_code):
    frame = write_inputs(tmp_path / "in")
    with cli_cluster(tmp_path) as cluster:
        args = ["run", "--input", str(tmp_path / "in"), "--model", "mypkg:spec",
                "--keep", "id", "--scheduler", cluster.address, "--progress", "off"]  # fmt: skip
        shipped = _cli([*args, "--output", str(tmp_path / "out"), "--upload", "mypkg"],
                       cwd=user_code)  # fmt: skip
    assert shipped.returncode == 0, shipped.stderr  # (without --upload: the ModelLoadError
    # of the API test, printed as one line with exit code 1 like every BatchInferError)
    check_doubled(tmp_path / "out", frame)


def test_a_module_shipped_again_after_a_change_is_the_version_that_runs(tmp_path, user_code):
    import mymodels

    frame = write_inputs(tmp_path / "in", files=1)
    with cli_cluster(tmp_path, n_workers=1) as cluster:
        dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "a"),
                    client=cluster.address, keep=["id"], progress=False,
                    upload=[str(user_code / "mymodels.py")])  # fmt: skip
        (user_code / "mymodels.py").write_text(USER_MODULE.replace("2 * x.sum", "3 * x.sum"))
        importlib.reload(mymodels)
        dbi.run_job(str(tmp_path / "in"), mymodels.spec, output=str(tmp_path / "b"),
                    client=cluster.address, keep=["id"], progress=False,
                    upload=[str(user_code / "mymodels.py")])  # fmt: skip
    a = dbi.read_output(str(tmp_path / "a")).compute().sort_values("id")
    b = dbi.read_output(str(tmp_path / "b")).compute().sort_values("id")
    np.testing.assert_allclose(b["score"].to_numpy(), 1.5 * a["score"].to_numpy(), rtol=1e-5)
    assert len(b) == len(frame)
