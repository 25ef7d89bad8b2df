"""Inputs as users have them: large files split at row groups, only the needed columns
read, filters pushed down to hive folders and row-group statistics (#14)."""

from __future__ import annotations

import os

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.io.inputs import InputFile
from dask_batchinfer.io.pieces import (
    MIN_SPLIT_ROWS,
    SPLIT_FACTOR,
    Target,
    plan_parquet,
    read_target,
)
from dask_batchinfer.testing import make_features, tiny_model

ROWS = 200_000  # 10 row groups of 20,000 rows: about 8 MB, above the 1 MiB split floor


def _write_big(path, rows=ROWS, row_group=20_000, start=0, seed=0, junk=False):
    frame = make_features(rows, seed=seed, start_id=start)
    if junk:
        frame["junk"] = np.arange(rows, dtype=np.int64) * 7
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path,
                   row_group_size=row_group)  # fmt: skip
    return frame


def _corrupt_column(path, column, row_groups=None):
    """Overwrite ``column``'s chunks with garbage: reading that column fails, others work."""
    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.names.index(column)
    with open(path, "r+b") as f:
        for i in range(metadata.num_row_groups) if row_groups is None else row_groups:
            chunk = metadata.row_group(i).column(index)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            f.seek(start)
            f.write(b"\xff" * chunk.total_compressed_size)


def _expected(frame, expected_scores):
    return pd.Series(expected_scores(frame), index=frame["id"].to_numpy())


def test_a_large_file_becomes_row_group_partitions(client, tmp_path, expected_scores):
    frame = _write_big(tmp_path / "in" / "big.parquet")
    with dask.config.set({"batchinfer.partition-size": "3MB"}):  # 2 row groups of 1.14 MB
        result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                             keep=["id"], client=client, progress=False)  # fmt: skip
    assert result.partitions == 5 and result.rows_in == result.rows_out == ROWS
    names = sorted(os.path.basename(f["path"]) for f in result.files)
    assert [n.rsplit("-", 1)[0] for n in names] == [
        f"part-big-rg{a}-{a + 1}" for a in range(0, 10, 2)
    ]
    back = pd.read_parquet(tmp_path / "out")
    assert back["id"].is_unique and len(back) == ROWS
    for f in result.files:  # order within a partition kept
        ids = pd.read_parquet(tmp_path / "out" / f["path"])["id"].to_numpy()
        assert (np.diff(ids) == 1).all()
    want = _expected(frame, expected_scores)
    np.testing.assert_allclose(back.set_index("id")["score"].sort_index().to_numpy(),
                               want.sort_index().to_numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip


def test_rewriting_one_large_file_recomputes_only_its_partitions(client, tmp_path):
    _write_big(tmp_path / "in" / "a.parquet")
    _write_big(tmp_path / "in" / "b.parquet", start=ROWS, seed=1)
    run = dict(output=str(tmp_path / "out"), keep=["id"], client=client, progress=False)
    with dask.config.set({"batchinfer.partition-size": "6MB"}):  # 5 row groups a partition
        first = dbi.run_job(str(tmp_path / "in"), tiny_model(), **run)
        again = dbi.run_job(str(tmp_path / "in"), tiny_model(), **run)
        _write_big(tmp_path / "in" / "b.parquet", start=ROWS, seed=2)
        os.utime(tmp_path / "in" / "b.parquet", (1, 2_000_000_000))
        third = dbi.run_job(str(tmp_path / "in"), tiny_model(), **run)
    assert first.partitions == 4 and first.partitions_run == 4
    assert again.partitions_run == 0 and again.partitions_skipped == 4
    assert third.partitions_run == 2 and third.partitions_skipped == 2
    assert len(dbi.read_output(str(tmp_path / "out")).compute()) == 2 * ROWS


def test_only_the_columns_the_job_needs_are_read(client, tmp_path):
    """``junk``'s pages are garbage: any read of that column fails."""
    frame = _write_big(tmp_path / "in" / "wide.parquet", rows=20_000, junk=True)
    _corrupt_column(tmp_path / "in" / "wide.parquet", "junk")
    run = dict(client=client, progress=False, keep=["id"])
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "a"), **run)
    assert result.rows_out == len(frame)
    features = [f"f{i}" for i in range(8)]
    with_columns = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "b"),
                               preprocess=_double, columns=features, **run)  # fmt: skip
    assert with_columns.rows_out == len(frame)
    with pytest.raises(Exception, match="wide.parquet"):  # preprocess, no columns: all read
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "c"),
                    preprocess=_double, **run)  # fmt: skip
    with pytest.raises(dbi.InputError, match=r"no column\(s\) \['nope'\]"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "d"),
                    preprocess=_double, columns=[*features, "nope"], **run)  # fmt: skip


def _double(frame):
    out = frame.copy()
    for c in [f"f{i}" for i in range(8)]:
        out[c] = out[c] * 2
    return out


def _write_days(root, days, rows=300):
    frames = {}
    for k, day in enumerate(days):
        frame = make_features(rows, seed=k, start_id=k * rows)
        folder = root / f"date={day}"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)
        frames[day] = frame
    return frames


def test_a_daily_window_reads_only_its_hive_folder(client, tmp_path):
    frames = _write_days(tmp_path / "in", ["2026-11-28", "2026-11-29", "2026-11-30"])
    # the last day is not Parquet at all: the window never opens it
    (tmp_path / "in" / "date=2026-11-30" / "part-0.parquet").write_bytes(b"not parquet")
    run = dict(keep=["id", "date"], client=client, progress=False)
    window = [("date", "==", "2026-11-29")]
    out = str(tmp_path / "out-29")
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out, filters=window, **run)
    again = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out, filters=window, **run)
    back = dbi.read_output(out).compute()
    assert result.rows_out == len(frames["2026-11-29"]) == len(back)
    assert set(back["date"].astype(str)) == {"2026-11-29"}
    assert sorted(back["id"]) == sorted(frames["2026-11-29"]["id"])
    assert again.partitions_run == 0 and again.partitions_skipped == result.partitions
    other = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=out, **run,
                        filters=[("date", "<=", "2026-11-29")])  # fmt: skip
    assert other.partitions_run == 2  # another window is another job
    with pytest.raises(dbi.InputError, match=r"\['day'\].*date"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "x"),
                    filters=[("day", "==", "2026-11-29")], **run)  # fmt: skip


def test_filters_skip_row_groups_by_their_statistics(client, tmp_path):
    path = tmp_path / "in" / "big.parquet"
    frame = _write_big(path)
    _corrupt_column(path, "f0", row_groups=range(0, 5))  # ids below 100,000: never read
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                         filters=[("id", ">=", 150_000)], keep=["id"], client=client,
                         progress=False)  # fmt: skip
    back = dbi.read_output(str(tmp_path / "out")).compute()
    assert result.rows_out == len(back) == int((frame["id"] >= 150_000).sum())
    assert back["id"].min() == 150_000


def test_row_group_planning_without_a_cluster(tmp_path):
    import fsspec

    big = tmp_path / "big.parquet"
    _write_big(big, rows=2 * MIN_SPLIT_ROWS * 2, row_group=2 * MIN_SPLIT_ROWS * 2)  # one group
    fs = fsspec.filesystem("file")
    info = fs.info(str(big))
    file = InputFile(str(big), "big.parquet", int(info["size"]), "v")
    # 4x the target: read whole (a row range decodes its whole row group, so four
    # ranges would decode it four times)
    _, groups = plan_parquet(fs, str(tmp_path), [file], Target(rows=MIN_SPLIT_ROWS))
    assert groups == [[file]]
    # SPLIT_FACTOR x the target or more: row ranges, none under MIN_SPLIT_ROWS rows
    target = Target(rows=4 * MIN_SPLIT_ROWS // SPLIT_FACTOR)
    _, groups = plan_parquet(fs, str(tmp_path), [file], target)
    assert [g[0].rows for g in groups] == [
        (k * MIN_SPLIT_ROWS, (k + 1) * MIN_SPLIT_ROWS) for k in range(4)
    ]
    _, whole = plan_parquet(fs, str(tmp_path), [file], Target(nbytes=1 << 40))
    assert whole == [[file]]
    assert read_target("250000 rows") == Target(rows=250_000)
    assert read_target("32MiB") == Target(nbytes=32 << 20)
    with pytest.raises(dbi.InputError, match="partition-size"):
        read_target("lots")


def test_a_read_error_naming_its_file_is_not_its_own_cause(tmp_path):
    """A self-cause makes distributed's error pickling loop forever: the job hung."""
    from dask_batchinfer.io.inputs import reading

    path = str(tmp_path / "x.parquet")
    with pytest.raises(OSError) as caught:
        with reading(path):
            raise OSError(f"reading {path}: Couldn't deserialize thrift")
    seen, error = set(), caught.value
    while error is not None:
        assert id(error) not in seen, "a cycle in the exception's causes"
        seen.add(id(error))
        error = error.__cause__ or error.__context__


def test_the_cli_runs_a_daily_window(cluster, tmp_path):
    import json
    import subprocess
    import sys

    frames = _write_days(tmp_path / "in", ["2026-11-28", "2026-11-29"])
    done = subprocess.run(
        [sys.executable, "-m", "dask_batchinfer", "run", "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out"), "--model", "dask_batchinfer.testing:tiny_model",
         "--keep", "id", "date", "--filters", json.dumps([["date", "==", "2026-11-29"]]),
         "--scheduler", cluster.scheduler_address, "--progress", "off", "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_out"] == len(frames["2026-11-29"])
    back = dbi.read_output(str(tmp_path / "out")).compute()
    assert set(back["date"].astype(str)) == {"2026-11-29"}


def test_a_file_of_many_row_groups_parses_its_footer_once_per_process(tmp_path):
    """Row-group partitions of one file reuse its parsed footer; a rewrite is parsed anew (#27)."""
    from dask_batchinfer.io.read import footer_counts, open_source

    path = tmp_path / "big.parquet"
    first = _write_big(path, rows=20_000, row_group=200)  # 100 row groups

    def read_all():
        with dask.config.set({"batchinfer.partition-size": "1000 rows"}):
            ddf, _ = open_source(str(path), {}, {}, "metadata")
        before = footer_counts()
        frame = ddf.compute(scheduler="sync")
        after = footer_counts()
        counts = {k: after[k] - before[k] for k in after}
        return ddf.npartitions, counts, frame.sort_values("id").reset_index(drop=True)

    partitions, counts, frame = read_all()
    assert partitions == 20 and counts == {"parsed": 1, "reused": 19}
    pd.testing.assert_frame_equal(frame, first, check_dtype=False)
    second = _write_big(path, rows=20_000, row_group=200, seed=1, start=50_000)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    partitions, counts, frame = read_all()  # another version: never the stale footer
    assert counts == {"parsed": 1, "reused": 19}
    pd.testing.assert_frame_equal(frame, second, check_dtype=False)
