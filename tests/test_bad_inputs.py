"""Broken inputs, each in both error modes: nulls, empty files, schema drift, bad dtypes,
over-long texts and rows that preprocessing fails on."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import (
    feature_columns,
    make_features,
    parse_json_features,
    slow_model,
    tiny_model,
)

NULL_IDS = [5, 142, 143, 287]


def _no_debris(out) -> None:
    assert not (out / "_staging").exists()


def test_nulls_in_a_required_feature_name_column_and_row(client, tmp_path, write_inputs):
    frame = make_features(300, seed=3)
    frame.loc[frame["id"].isin(NULL_IDS), "f2"] = np.nan
    write_inputs(tmp_path / "in", frame, 3)
    with pytest.raises(dbi.PartitionError) as info:
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"), keep=["id"])
    message = str(info.value)
    found = re.search(r"file .*in-(\d+)\.parquet.* at row (\d+) \(id=(\d+)\)", message)
    assert found and int(found.group(3)) in NULL_IDS, message
    assert "null values in required input column(s) 'f2'" in message
    assert "allow_nulls=True" in message  # the fix is named
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    _no_debris(tmp_path / "out")


def test_nulls_quarantined_exactly(client, tmp_path, write_inputs, expected_scores):
    frame = make_features(300, seed=3)
    frame.loc[frame["id"].isin(NULL_IDS), "f2"] = np.nan
    write_inputs(tmp_path / "in", frame, 3)
    out = tmp_path / "out"
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), keep=["id"],
                         on_error="quarantine")  # fmt: skip
    assert result.rows_out + result.rows_quarantined == result.rows_in == 300
    errors = pd.concat(pd.read_parquet(out / p) for p in result.error_files)
    assert sorted(errors["id"]) == NULL_IDS
    assert errors["error"].str.contains("'f2'").all()
    # row is the position in the input partition (files of 100 rows)
    assert sorted(errors["row"]) == sorted(i % 100 for i in NULL_IDS)
    good = frame[~frame["id"].isin(NULL_IDS)]
    back = dbi.read_output(str(out)).compute().sort_values("id")
    assert back["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(good), rtol=1e-5)
    _no_debris(out)


def test_allow_nulls_passes_them_to_the_model(client, tmp_path, write_inputs):
    frame = make_features(100, seed=3)
    frame.loc[frame["id"] == 5, "f2"] = np.nan
    write_inputs(tmp_path / "in", frame, 1)
    spec = tiny_model().with_options(allow_nulls=True)
    result = dbi.run_job(str(tmp_path / "in"), spec, output=str(tmp_path / "out"), keep=["id"])
    back = dbi.read_output(str(tmp_path / "out")).compute().set_index("id")
    assert result.rows_out == 100 and np.isnan(back.loc[5, "score"])


@pytest.mark.parametrize("on_error", ["raise", "quarantine"])
def test_an_empty_file_is_an_empty_partition(client, tmp_path, on_error, write_inputs):
    frame = make_features(200, seed=4)
    write_inputs(tmp_path / "in", frame, 2)
    frame.iloc[:0].to_parquet(tmp_path / "in" / "in-9-empty.parquet", index=False)
    out = tmp_path / "out"
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), keep=["id"],
                         on_error=on_error)  # fmt: skip
    assert (result.partitions, result.rows_in, result.rows_out) == (3, 200, 200)
    assert result.rows_quarantined == 0
    back = dbi.read_output(str(out)).compute()
    assert sorted(back["id"]) == list(range(200))
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert len(manifest["input"]) == 3
    again = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), keep=["id"])
    assert again.partitions_run == 0  # the empty partition was committed too
    _no_debris(out)


def test_a_failed_job_lets_its_straggling_task_finish_and_leaves_no_debris(
    client, tmp_path, write_inputs
):
    """A partition still running when another fails is cancelled but runs on to its end,
    writing: the job waits for it (up to ``STRAGGLERS_WAIT``) before it tidies up and
    raises, so no ``_staging/`` is left behind, and the straggler's commit stays for the
    re-run."""
    frame = make_features(600, seed=7)
    write_inputs(tmp_path / "in", frame.iloc[:100], 1)  # in-000: one batch
    write_inputs(tmp_path / "in", frame.iloc[100:500], 1, first=1)  # in-001: four, the straggler
    drifted = frame.iloc[500:].rename(columns={"f5": "feature_5"})
    write_inputs(tmp_path / "in", drifted, 1, first=2)  # fails once in-000's thread is free
    with pytest.raises(dbi.PartitionError, match="in-002"):
        dbi.run_job(str(tmp_path / "in"), slow_model(delay=0.4, batch_size=100),
                    output=str(tmp_path / "out"), keep=["id"])  # fmt: skip
    running = client.run(lambda dask_worker: len(dask_worker.state.executing))
    assert not any(running.values()), "the job returned while its straggler still ran"
    _no_debris(tmp_path / "out")
    assert len(list((tmp_path / "out" / "_committed").iterdir())) == 2  # in-000 and in-001


@pytest.mark.parametrize("on_error", ["raise", "quarantine"])
def test_a_file_missing_a_column_is_named(client, tmp_path, on_error, write_inputs):
    frame = make_features(300, seed=5)
    write_inputs(tmp_path / "in", frame, 3)
    drifted = frame.iloc[200:].rename(columns={"f5": "feature_5"})
    write_inputs(tmp_path / "in", drifted, 1, first=2)  # the last file drifted
    with pytest.raises(dbi.PartitionError) as info:
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                    keep=["id"], on_error=on_error)  # fmt: skip
    message = str(info.value)
    assert "in-002.parquet" in message and "['f5']" in message and "feature_5" in message
    assert isinstance(info.value.__cause__, dbi.SchemaError)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert not list((tmp_path / "out").glob("_errors/*"))  # no row-by-row quarantine of a file
    _no_debris(tmp_path / "out")


def test_unusable_dtype_refused_before_any_task(client, tmp_path, write_inputs):
    frame = make_features(50)
    frame["f1"] = pd.date_range("2026-01-01", periods=50)
    write_inputs(tmp_path / "in", frame, 1)
    with pytest.raises(dbi.InputError) as info:
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"))
    message = str(info.value)
    assert "['f1']" in message and "datetime64" in message and "preprocess=" in message
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("on_error", ["raise", "quarantine"])
def test_rows_that_preprocessing_fails_on(
    client, tmp_path, on_error, write_inputs, expected_scores
):
    frame = make_features(300, seed=6)
    raw = [json.dumps([float(v) for v in row]) for row in frame[feature_columns(8)].to_numpy()]
    bad = {12: "{not json", 150: "[1, 2]", 299: "null"}
    for i, text in bad.items():
        raw[i] = text
    inputs = pd.DataFrame({"id": frame["id"], "raw": raw})
    write_inputs(tmp_path / "in", inputs, 3)
    out = tmp_path / "out"
    run = lambda: dbi.run_job(  # noqa: E731
        str(tmp_path / "in"), tiny_model(), output=str(out), keep=["id"],
        preprocess=parse_json_features, on_error=on_error,
    )  # fmt: skip
    if on_error == "raise":
        with pytest.raises(dbi.PartitionError) as info:
            run()
        message = str(info.value)
        found = re.search(r"preprocessing at row (\d+) \(id=(\d+)\)", message)
        assert found and int(found.group(2)) in bad, message
        assert not (out / "_SUCCESS").exists()
        return
    result = run()
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (300, 297, 3)
    errors = pd.concat(pd.read_parquet(out / p) for p in result.error_files)
    assert sorted(errors["id"]) == sorted(bad)
    assert set(errors["error_type"]) == {"JSONDecodeError", "ValueError"}
    good = frame[~frame["id"].isin(list(bad))]
    back = dbi.read_output(str(out)).compute().sort_values("id")
    assert back["id"].tolist() == good["id"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(good), rtol=1e-5)
    _no_debris(out)


def test_rows_failing_in_preprocess_and_in_the_model_both_counted(client, tmp_path):
    frame = make_features(100, seed=7)
    raw = [json.dumps([float(v) for v in row]) for row in frame[feature_columns(8)].to_numpy()]
    raw[3] = "oops"  # fails in preprocessing
    raw[60] = json.dumps([float("nan")] * 8)  # parses, then fails the model's null check
    pd.DataFrame({"id": frame["id"], "raw": raw}).to_parquet(tmp_path / "in.parquet")
    result = dbi.run_job(str(tmp_path / "in.parquet"), tiny_model(), output=str(tmp_path / "out"),
                         keep=["id"], preprocess=parse_json_features,
                         on_error="quarantine")  # fmt: skip
    errors = pd.concat(pd.read_parquet(tmp_path / "out" / p) for p in result.error_files)
    assert (result.rows_out, result.rows_quarantined) == (98, 2)
    # both rows named by their position in the input partition, whichever stage failed
    assert sorted(zip(errors["id"], errors["row"], strict=True)) == [(3, 3), (60, 60)]


def test_long_texts_are_truncated_and_counted(client, tmp_path):
    short = [f"short sentence number {i}" for i in range(40)]
    long = [" ".join(["word"] * (40 + i)) for i in range(3)]
    texts = pd.DataFrame({"doc": range(43), "text": short + long})
    texts.to_parquet(tmp_path / "docs.parquet")
    spec = dbi.sentence_encoder(max_seq_length=32)
    result = dbi.run_job(str(tmp_path / "docs.parquet"), spec, output=str(tmp_path / "out"),
                         keep=["doc"])  # fmt: skip
    assert result.rows_out == 43 and result.rows_truncated == 3
    assert "3 rows longer than the model's limit were truncated" in str(result)
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["rows_truncated"] == 3


def test_null_texts_are_found_where_they_are_tokenised(client, tmp_path):
    """A null text fails in the CPU stage (tokenising), named by file, row and column."""
    texts = pd.DataFrame({"doc": range(30), "text": [f"sentence number {i}" for i in range(30)]})
    texts.loc[[4, 21], "text"] = None
    texts.to_parquet(tmp_path / "docs.parquet")
    spec = dbi.sentence_encoder(max_seq_length=32)  # the spec of the test above: loaded once
    with pytest.raises(dbi.PartitionError) as caught:
        dbi.run_job(str(tmp_path / "docs.parquet"), spec, output=str(tmp_path / "a"),
                    keep=["doc"])  # fmt: skip
    message = str(caught.value)
    assert "docs.parquet" in message and "row 4 (doc=4)" in message
    assert "null values in required input column(s) 'text'" in message
    result = dbi.run_job(str(tmp_path / "docs.parquet"), spec, output=str(tmp_path / "b"),
                         keep=["doc"], on_error="quarantine")  # fmt: skip
    errors = pd.read_parquet(tmp_path / "b" / result.error_files[0])
    assert (result.rows_out, result.rows_quarantined) == (28, 2)
    assert sorted(errors["doc"]) == [4, 21] and set(errors["error_type"]) == {"InputError"}
