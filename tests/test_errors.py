"""Bad rows and broken files: clear errors naming file, partition, row and column; quarantine."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model

BAD_IDS = [17, 230, 231, 399]


@pytest.fixture
def bad_rows_input(tmp_path, write_inputs):
    """``tmp_path/in``: 4 files of 100 rows; f3 holds strings, a few of them not numbers.

    Returns the frame written.
    """
    frame = make_features(400, seed=21)
    text = frame["f3"].map(lambda v: f"{v:.6f}").astype(object)
    text[frame["id"].isin(BAD_IDS)] = "n/a"
    frame["f3"] = text.astype("str")
    write_inputs(tmp_path / "in", frame, 4)
    return frame


def test_raise_names_file_partition_row_and_column(client, tmp_path, bad_rows_input):
    with pytest.raises(dbi.PartitionError) as info:
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"), keep=["id"])
    message = str(info.value)  # whichever partition failed first
    import re

    found = re.search(
        r"partition (\d) \(file .*in-(\d+)\.parquet\).* at row (\d+) \(id=(\d+)\)", message
    )
    assert found, message
    partition, file, row, id_ = map(int, found.groups())
    assert partition == file and id_ == partition * 100 + row and id_ in BAD_IDS
    assert "f3" in message
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_quarantine_sets_aside_exactly_the_bad_rows(
    client, tmp_path, bad_rows_input, expected_scores
):
    frame = bad_rows_input
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                         keep=["id"], on_error="quarantine")  # fmt: skip
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (400, 396, 4)
    assert "4 quarantined" in str(result)
    errors = pd.concat(pd.read_parquet(tmp_path / "out" / path) for path in result.error_files)
    assert sorted(errors["id"]) == BAD_IDS
    assert set(errors["error_type"]) == {"InputError"} and errors["error"].str.contains("f3").all()
    good = frame[~frame["id"].isin(BAD_IDS)].copy()
    good["f3"] = good["f3"].astype("float32")
    back = pd.read_parquet(tmp_path / "out").sort_values("id")
    assert back["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(good), rtol=1e-5)
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert manifest["rows_quarantined"] == 4 and manifest["errors"] == result.error_files
    assert not (tmp_path / "out" / "_staging").exists()
    again = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                        keep=["id"], on_error="quarantine")  # fmt: skip
    assert again.partitions_run == 0 and again.rows_in == 400


@pytest.mark.parametrize("limit", [2, 0.005])
def test_too_many_bad_rows_fail_the_job(client, tmp_path, limit, bad_rows_input):
    with pytest.raises(dbi.BadRowsError, match="_errors"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                    keep=["id"], on_error="quarantine", max_bad_rows=limit)  # fmt: skip
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_corrupt_file_is_named(client, tmp_path):
    (tmp_path / "in").mkdir()
    make_features(100).to_parquet(tmp_path / "in" / "a.parquet", index=False)
    data = (tmp_path / "in" / "a.parquet").read_bytes()
    (tmp_path / "in" / "b.parquet").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(dbi.InputError, match=r"b\.parquet"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_option_validation():
    import dask.dataframe as dd

    ddf = dd.from_pandas(make_features(10), npartitions=1)
    with pytest.raises(dbi.InputError, match="on_error="):
        dbi.run_job(ddf, tiny_model(), output="x", on_error="ignore")
    with pytest.raises(dbi.InputError, match="max_bad_rows="):
        dbi.run_job(ddf, tiny_model(), output="x", max_bad_rows=1.5)


@pytest.mark.slow
def test_cli_exit_code_for_too_many_bad_rows(tmp_path, bad_rows_input, cluster):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "dask_batchinfer", "run", "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out"), "--model", "dask_batchinfer.testing:tiny_model",
         "--keep", "id", "--on-error", "quarantine", "--max-bad-rows", "2",
         "--scheduler", cluster.scheduler_address],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "too many bad rows" in done.stderr and "Traceback" not in done.stderr
