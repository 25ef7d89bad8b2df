"""One result builder: a no-op resume reports what the job did, every row accounted for."""

from __future__ import annotations

import numpy as np

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model

BAD_IDS = [5, 150, 151]


def _lengths(model, inputs):
    """Rows "as long as" ten times their first feature: some are past the limit below."""
    return (inputs[:, 0].abs() * 10).long().numpy()


def _limit(model) -> int:
    return 5


def _inputs(write_inputs, folder) -> None:
    """3 files of 100 rows; f3 holds numbers as strings, a few of them not numbers."""
    frame = make_features(300, seed=31)
    text = frame["f3"].map(lambda v: f"{v:.6f}").astype(object)
    text[frame["id"].isin(BAD_IDS)] = "n/a"
    frame["f3"] = text.astype("str")
    write_inputs(folder, frame, files=3)


def test_finished_resume_reports_quarantined_and_truncated_rows(client, tmp_path, write_inputs):
    _inputs(write_inputs, tmp_path / "in")
    spec = tiny_model().with_options(lengths=_lengths, length_limit=_limit)
    run = dict(output=str(tmp_path / "out"), keep=["id"], on_error="quarantine", progress=False)
    first = dbi.run_job(str(tmp_path / "in"), spec, **run)
    assert first.rows_quarantined == len(BAD_IDS) and first.error_files
    assert first.rows_truncated > 0
    again = dbi.run_job(str(tmp_path / "in"), spec, **run)
    assert again.partitions_run == 0 and again.partitions_skipped == 3
    for name in ("rows_in", "rows_out", "rows_quarantined", "rows_truncated", "error_files"):
        assert getattr(again, name) == getattr(first, name), name
    assert again.rows_in == again.rows_out + again.rows_quarantined
    assert [f["path"] for f in again.files] == [f["path"] for f in first.files]


def test_partial_resume_counts_the_partitions_done_before(client, tmp_path, write_inputs):
    _inputs(write_inputs, tmp_path / "in")
    spec = tiny_model().with_options(lengths=_lengths, length_limit=_limit)
    run = dict(output=str(tmp_path / "out"), keep=["id"], on_error="quarantine", progress=False)
    first = dbi.run_job(str(tmp_path / "in"), spec, **run)
    (tmp_path / "out" / "_SUCCESS").unlink()  # as if the job died before its manifest
    marker = tmp_path / "out" / "_committed" / "in-001.json"
    marker.unlink()  # ... and before committing partition in-001
    again = dbi.run_job(str(tmp_path / "in"), spec, **run)
    assert (again.partitions_run, again.partitions_skipped) == (1, 2)
    for name in ("rows_in", "rows_out", "rows_quarantined", "rows_truncated"):
        assert getattr(again, name) == getattr(first, name), name
    assert sorted(again.error_files) == sorted(first.error_files)
    assert np.isfinite(again.rows_per_second)
