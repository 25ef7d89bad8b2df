"""CSV and JSON Lines inputs (``io/text.py``), and dask DataFrame sources' resume (#14)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.io.read import input_format
from dask_batchinfer.testing import make_features, tiny_model

RUN = dict(keep=["id"], progress=False)


def _write(folder, files=3, rows=50, kind="csv", seed=0, suffix=None):
    """``files`` files of ``make_features`` rows (consecutive ids); returns the whole frame."""
    os.makedirs(folder, exist_ok=True)
    frames = []
    for i in range(files):
        frame = make_features(rows, seed=seed + i, start_id=i * rows)
        path = os.path.join(folder, f"in-{i:03d}{suffix if suffix is not None else '.' + kind}")
        if kind == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_csv(path, index=False)  # compressed by the name: .csv.gz
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _check_scores(output, frame, expected_scores):
    back = dbi.read_output(str(output)).compute().set_index("id").sort_index()
    assert back.index.tolist() == frame["id"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(frame),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_folder_of_csv_files_runs_resumes_and_reruns_only_a_changed_file(
    client, tmp_path, expected_scores
):
    frame = _write(tmp_path / "in")
    out = tmp_path / "out"
    first = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), format="csv",
                        client=client, **RUN)  # fmt: skip
    assert first.partitions_run == 3 and first.rows_out == len(frame)
    _check_scores(out, frame, expected_scores)
    names = sorted(os.path.basename(f["path"]).rsplit("-", 1)[0] for f in first.files)
    assert names == ["part-in-000.csv", "part-in-001.csv", "part-in-002.csv"]
    glob = str(tmp_path / "in" / "*.csv")  # by name: the same files, the same partitions
    again = dbi.run_job(glob, tiny_model(), output=str(out), client=client, **RUN)
    assert again.partitions_run == 0 and again.partitions_skipped == 3
    changed = make_features(50, seed=7, start_id=50)
    changed.to_csv(tmp_path / "in" / "in-001.csv", index=False)
    os.utime(tmp_path / "in" / "in-001.csv", (1, 2_000_000_000))
    third = dbi.run_job(glob, tiny_model(), output=str(out), client=client, **RUN)
    assert third.partitions_run == 1 and third.partitions_skipped == 2
    frame.iloc[50:100] = changed.to_numpy()
    _check_scores(out, frame.astype({"id": "int64"}), expected_scores)


def test_json_lines_and_compressed_csv_by_their_names(client, tmp_path, expected_scores):
    jsonl = _write(tmp_path / "jsonl", kind="jsonl", files=2)
    result = dbi.run_job(str(tmp_path / "jsonl" / "*.jsonl"), tiny_model(),
                         output=str(tmp_path / "out-jsonl"), client=client, **RUN)  # fmt: skip
    assert result.rows_out == len(jsonl)
    _check_scores(tmp_path / "out-jsonl", jsonl, expected_scores)
    gz = _write(tmp_path / "gz", suffix=".csv.gz", files=2, seed=3)
    with open(tmp_path / "gz" / "in-000.csv.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip'd
    one = dbi.run_job(str(tmp_path / "gz" / "in-000.csv.gz"), tiny_model(),
                      output=str(tmp_path / "out-one"), client=client, **RUN)  # fmt: skip
    assert one.rows_out == 50
    both = dbi.run_job(str(tmp_path / "gz" / "*.csv.gz"), tiny_model(),
                       output=str(tmp_path / "out-gz"), client=client, **RUN)  # fmt: skip
    _check_scores(tmp_path / "out-gz", gz, expected_scores)
    assert both.partitions == 2


def test_a_bad_csv_line_is_named_by_file_and_line(client, tmp_path):
    _write(tmp_path / "in", files=2)
    with open(tmp_path / "in" / "in-001.csv", "a") as f:
        f.write("100,1,2,3,4,5,6,7,8,9\n")  # one field too many: line 52 (header, 50 rows)
    with pytest.raises(Exception, match=r"in-001\.csv'? line 52: expected 9 fields, got 10"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                    format="csv", on_error="raise", client=client, **RUN)  # fmt: skip


def test_quarantine_sets_bad_csv_lines_aside_and_counts_them(client, tmp_path, expected_scores):
    frame = _write(tmp_path / "in", files=2)
    path = tmp_path / "in" / "in-001.csv"
    lines = path.read_text().splitlines()
    lines.insert(11, "bad,row")  # line 12 of the file: too few fields
    lines.append("100,1,2,3,4,5,6,7,8,9")  # line 53: one too many
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), format="csv",
                         on_error="quarantine", client=client, **RUN)  # fmt: skip
    assert (result.rows_in, result.rows_out, result.rows_quarantined) == (102, 100, 2)
    _check_scores(out, frame, expected_scores)  # every good row, once
    bad = pd.read_parquet(out / "_errors").sort_values("error")
    assert bad["row"].tolist() == [-1, -1] and set(bad["error_type"]) == {"UnparsedLine"}
    assert bad["error"].str.contains("in-001.csv' line 12: expected 9 fields, got 2").any()
    assert bad["error"].str.contains("in-001.csv' line 53: expected 9 fields, got 10").any()
    again = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), format="csv",
                        on_error="quarantine", client=client, **RUN)  # fmt: skip
    assert again.partitions_run == 0 and again.rows_quarantined == 2


def test_a_value_that_does_not_fit_names_file_and_column(tmp_path):
    _write(tmp_path / "in", files=2)
    text = (tmp_path / "in" / "in-001.csv").read_text().splitlines()
    fields = text[5].split(",")
    fields[4] = "oops"  # f3
    text[5] = ",".join(fields)
    (tmp_path / "in" / "in-001.csv").write_text("\n".join(text) + "\n")
    from dask_batchinfer.io.text import read_text_source

    ddf, groups = read_text_source(str(tmp_path / "in"), format="csv", columns=["id", "f3"])
    assert list(ddf.columns) == ["id", "f3"] and len(groups) == 2
    assert len(ddf.partitions[0].compute(scheduler="sync")) == 50
    with pytest.raises(dbi.InputError, match=r"in-001\.csv.*column 'f3'.*'oops'"):
        ddf.partitions[1].compute(scheduler="sync")


def test_format_given_for_files_without_extensions(client, tmp_path, expected_scores):
    frame = _write(tmp_path / "in", files=2, suffix="")
    assert input_format(str(tmp_path / "in" / "in-000")) == "parquet"  # no name to go by
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                         format="csv", client=client, **RUN)  # fmt: skip
    assert result.rows_out == len(frame)
    _check_scores(tmp_path / "out", frame, expected_scores)


def test_formats_by_name_filters_and_the_hint_for_a_folder(tmp_path):
    for name, kind in [("a.csv", "csv"), ("a.tsv.zst", "tsv"), ("e.jsonl.gz", "jsonl"),
                       ("e.ndjson", "jsonl"), ("s3://b/x/*.csv.bz2", "csv"), ("x/", "parquet"),
                       ("a.parquet", "parquet"), ("s/*.png", "files")]:  # fmt: skip
        assert input_format(name) == kind, name
    _write(tmp_path / "in", files=1)
    with pytest.raises(dbi.InputError, match="holds no .parquet files.*csv.*format='csv'"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "o"), **RUN)
    with pytest.raises(dbi.InputError, match="filters= applies to Parquet"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "o"),
                    format="csv", filters=[("id", ">", 3)], **RUN)  # fmt: skip
    with pytest.raises(dbi.InputError, match="format='xml'"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "o"),
                    format="xml", **RUN)  # fmt: skip


def test_tsv_reads_with_tabs(tmp_path):
    from dask_batchinfer.io.text import read_text_source

    frame = make_features(20)
    os.makedirs(tmp_path / "in")
    frame.to_csv(tmp_path / "in" / "a.tsv", index=False, sep="\t")
    ddf, _ = read_text_source(str(tmp_path / "in"), format="tsv")
    back = ddf.compute(scheduler="sync")
    np.testing.assert_allclose(back[list(frame.columns)].to_numpy(), frame.to_numpy(), rtol=1e-6)


def test_csv_on_s3(client, s3, tmp_path, expected_scores):
    fs, options = s3
    frame = _write(tmp_path / "in", files=2)
    for name in ("in-000.csv", "in-001.csv"):
        fs.put(str(tmp_path / "in" / name), f"batchinfer-test/in/{name}")
    result = dbi.run_job("s3://batchinfer-test/in/*.csv", tiny_model(),
                         output="s3://batchinfer-test/out", storage_options=options,
                         client=client, **RUN)  # fmt: skip
    again = dbi.run_job("s3://batchinfer-test/in/*.csv", tiny_model(),
                        output="s3://batchinfer-test/out", storage_options=options,
                        client=client, **RUN)  # fmt: skip
    assert result.rows_out == len(frame) and again.partitions_run == 0
    back = dbi.read_output("s3://batchinfer-test/out", options).compute().set_index("id")
    np.testing.assert_allclose(back.sort_index()["score"].to_numpy(), expected_scores(frame),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


_KEYS = """
import sys, dask.dataframe as dd
from dask.base import tokenize
read = dd.read_parquet if sys.argv[1] == "parquet" else dd.read_csv
print(tokenize(read(sys.argv[2]).optimize().__dask_keys__()))
"""


def _keys(kind: str, path: str) -> str:
    """The partition keys' token of ``dd.read_<kind>(path)`` as a fresh process sees them."""
    done = subprocess.run([sys.executable, "-c", _KEYS, kind, path], capture_output=True,
                          text=True, check=True, timeout=120)  # fmt: skip
    return done.stdout.strip()


def test_dask_dataframe_partition_names_across_processes(tmp_path, write_inputs):
    """What resume of a dask DataFrame source can key on, in this dask version.

    dd.read_parquet names its partitions anew in each process: run_job says so (see
    the next test). dd.read_csv's names are stable and change when a file does
    (all partitions at once: the frame has one name). If the first assertion
    fails, dask made read_parquet's names stable: drop ``io.read._check_names``.
    """
    frame = make_features(90)
    write_inputs(tmp_path / "pq", frame, files=3)
    assert _keys("parquet", str(tmp_path / "pq")) != _keys("parquet", str(tmp_path / "pq"))
    _write(tmp_path / "csv", files=3, rows=30)
    glob = str(tmp_path / "csv" / "*.csv")
    before = _keys("csv", glob)
    assert _keys("csv", glob) == before
    with open(tmp_path / "csv" / "in-001.csv", "a") as f:
        f.write("1000,0,0,0,0,0,0,0,0\n")
    assert _keys("csv", glob) != before


def test_a_read_parquet_frame_source_says_resume_cannot_work(client, tmp_path, caplog,
                                                              write_inputs):  # fmt: skip
    import dask.dataframe as dd

    write_inputs(tmp_path / "pq", make_features(60), files=2)
    with caplog.at_level(logging.WARNING, logger="dask_batchinfer"):
        dbi.run_job(dd.read_parquet(str(tmp_path / "pq")), tiny_model(),
                    output=str(tmp_path / "out"), client=client, **RUN)  # fmt: skip
    said = [r for r in caplog.records if "pass the path instead" in r.getMessage()]
    assert len(said) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dask_batchinfer"):
        dbi.run_job(dd.from_pandas(make_features(10), npartitions=1), tiny_model(),
                    output=str(tmp_path / "out2"), client=client, **RUN)  # fmt: skip
    assert not [r for r in caplog.records if "pass the path instead" in r.getMessage()]


def test_the_command_takes_format():
    from dask_batchinfer.cli.flags import build_parser

    args = build_parser().parse_args(["run", "--input", "in/", "--format", "jsonl"])
    assert args.format == "jsonl"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--format", "xml"])
