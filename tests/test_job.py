"""run_job(): Parquet out, on local disk and on S3 (moto server on 127.0.0.1)."""

from __future__ import annotations

import json
import os

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import (
    feature_columns,
    make_features,
    make_mlp,
    threads_probe,
    tiny_model,
)


def _check_output(fs, root: str, frame: pd.DataFrame, scores: np.ndarray, storage_options=None):
    url = f"s3://{root}" if storage_options else root
    back = dd.read_parquet(url, storage_options=storage_options).compute()
    assert back["id"].is_unique
    back = back.sort_values("id")
    assert back["id"].tolist() == frame["id"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), scores, rtol=1e-5)
    assert not [p for p in fs.find(root) if "/_staging/" in p], "staging debris left behind"
    with fs.open(f"{root}/_SUCCESS") as f:
        manifest = json.load(f)
    assert sum(entry["rows"] for entry in manifest["files"]) == len(frame)
    return back, manifest


def test_run_job_local_dataframe(client, tmp_path, expected_scores):
    frame = make_features(3000, seed=1)
    spec = tiny_model(seed=21)
    result = dbi.run_job(
        dd.from_pandas(frame, npartitions=12), spec, output=str(tmp_path / "out"), keep=["id"]
    )
    assert (result.rows_in, result.rows_out, result.partitions) == (3000, 3000, 12)
    assert result.rows_per_second > 0 and result.wall_seconds > 0
    assert set(result.model_loads.values()) == {1}
    assert set(result.model_load_seconds) == set(client.scheduler_info()["workers"])
    import fsspec

    _, manifest = _check_output(
        fsspec.filesystem("file"), str(tmp_path / "out"), frame, expected_scores(frame, 21)
    )
    assert manifest["model_token"] == spec.token
    names = sorted(os.listdir(tmp_path / "out"))
    bookkeeping = ["_SUCCESS", "_committed", "_report.html", "_report.json"]
    assert names[:4] == bookkeeping and len(names) == 4 + 12
    assert all(n.startswith("part-000") and n.endswith(".parquet") for n in names[4:])
    assert "3,000 in, 3,000 out" in str(result)


def test_run_job_from_parquet_files_with_partition_on(
    client, tmp_path, write_inputs, expected_scores
):
    frame = make_features(1200, seed=2)
    frame["country"] = pd.array(np.array(["FR", "DE", "US"])[np.arange(1200) % 3], dtype="str")
    write_inputs(tmp_path / "in", frame, files=5)
    result = dbi.run_job(
        str(tmp_path / "in"),
        tiny_model(seed=22),
        output=str(tmp_path / "out"),
        keep=["id"],
        partition_on=["country"],
    )
    assert result.partitions == 5 and result.rows_out == 1200
    assert sorted(p for p in os.listdir(tmp_path / "out") if not p.startswith("_")) == [
        "country=DE",
        "country=FR",
        "country=US",
    ]
    assert len(os.listdir(tmp_path / "out" / "country=FR")) == 5
    table = ds.dataset(str(tmp_path / "out"), format="parquet", partitioning="hive").to_table()
    back = table.to_pandas().sort_values("id")
    assert back["country"].astype(str).tolist() == frame["country"].tolist()
    np.testing.assert_allclose(back["score"].to_numpy(), expected_scores(frame, 22), rtol=1e-5)


def test_run_job_on_s3(client, s3, write_inputs, expected_scores):
    fs, storage_options = s3
    frame = make_features(900, seed=3)
    write_inputs("batchinfer-test/in", frame, files=4, fs=fs)
    result = dbi.run_job(
        "s3://batchinfer-test/in/",
        tiny_model(seed=23),
        output="s3://batchinfer-test/out",
        keep=["id"],
        storage_options=storage_options,
    )
    assert (result.partitions, result.rows_out) == (4, 900)
    fs.invalidate_cache()
    _check_output(fs, "batchinfer-test/out", frame, expected_scores(frame, 23), storage_options)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("batchinfer-test/out"))
    assert names[:4] == ["_SUCCESS", "_committed", "_report.html", "_report.json"]
    assert [n[: len("part-in-000")] for n in names[4:]] == [f"part-in-{i:03d}" for i in range(4)]


def test_run_job_failure_leaves_no_manifest(client, tmp_path):
    frame = make_features(40, n_features=2)
    frame["f1"] = frame["f1"].astype(object)
    frame.loc[35, "f1"] = "oops"
    with pytest.raises(dbi.PartitionError, match="partition 3"):
        dbi.run_job(
            dd.from_pandas(frame, npartitions=4),
            tiny_model(n_features=2),
            output=str(tmp_path / "out"),
        )
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_model_load_failure_stops_before_reading(client, tmp_path):
    spec = dbi.from_torch(
        make_mlp,
        factory_kwargs={"hidden": -1},
        input_columns=feature_columns(8),
        outputs={"score": "float32"},
        name="bad-hidden",
    )
    with pytest.raises(dbi.ModelLoadError, match="bad-hidden"):
        dbi.run_job(
            dd.from_pandas(make_features(10), npartitions=2), spec, output=str(tmp_path / "out")
        )
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".parquet")]


def test_torch_threads_match_worker_threads(tmp_path, private_client):
    """A 2-thread worker on CPU: forwards use 1 torch thread each, 2 at a time; never more."""
    with private_client(n_workers=1, threads_per_worker=2) as c:
        dbi.run_job(dd.from_pandas(make_features(800), npartitions=8), threads_probe(),
                    output=str(tmp_path / "out"), client=c)  # fmt: skip
    out = pd.read_parquet(tmp_path / "out")
    assert set(out["threads"]) == {1}
    assert out["concurrent"].max() == 2  # both task threads ran forwards side by side


@pytest.mark.slow
def test_same_output_whatever_the_cluster_and_partitioning(tmp_path, client, private_client):
    """1 versus 2 workers (a cluster of its own, the session's), 10 versus 40 partitions:
    the same rows and values."""
    frame = make_features(4000, seed=12)
    outputs = {}

    def run_on(c, n_workers):
        assert len(c.scheduler_info()["workers"]) == n_workers
        for npartitions in (10, 40):
            out = tmp_path / f"w{n_workers}-p{npartitions}"
            dbi.run_job(dd.from_pandas(frame, npartitions=npartitions), tiny_model(seed=13),
                        output=str(out), keep=["id"], client=c)  # fmt: skip
            back = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
            outputs[n_workers, npartitions] = back

    with private_client(n_workers=1) as c:
        run_on(c, 1)
    run_on(client, 2)
    reference = outputs[1, 10]
    assert reference["id"].tolist() == list(range(4000))
    for key, other in outputs.items():
        pd.testing.assert_frame_equal(other, reference, check_exact=True, obj=str(key))


def test_small_files_are_grouped(client, tmp_path, write_inputs):
    import dask

    from dask_batchinfer.io.read import InputFile, group_files

    sizes = [5, 5, 5, 20, 1, 1] + [3] * 300
    files = [InputFile(f"f{i:03d}", f"f{i:03d}", size, "") for i, size in enumerate(sizes)]
    groups = group_files(files, 12)
    assert [f for g in groups for f in g] == files  # every file once, in order
    assert ["f003"] in [[f.path for f in g] for g in groups]  # as large as the target: alone
    assert all(sum(f.size for f in g) <= 24 for g in groups)  # at most twice the target
    assert 50 < len(groups) < 150  # about 12 bytes a group
    # a file added in the middle changes its own group and at most a neighbour
    grown = files[:150] + [InputFile("f149b", "f149b", 3, "")] + files[150:]
    changed = {tuple(g) for g in group_files(grown, 12)} - {tuple(g) for g in groups}
    assert 1 <= len(changed) <= 2

    frame = make_features(5000, seed=14)
    write_inputs(tmp_path / "in", frame, 50)
    with dask.config.set({"batchinfer.partition-size": "16MiB", "batchinfer.min-partitions": 1}):
        result = dbi.run_job(str(tmp_path / "in"), tiny_model(seed=15),
                             output=str(tmp_path / "out"), keep=["id"])  # fmt: skip
        again = dbi.run_job(str(tmp_path / "in"), tiny_model(seed=15),
                            output=str(tmp_path / "out"), keep=["id"])  # fmt: skip
    assert result.partitions <= 2 and result.rows_out == 5000  # 50 files, about 200 kB
    assert result.files[0]["partition"].startswith("in-000--in-")
    assert again.partitions_run == 0
    assert sorted(pd.read_parquet(tmp_path / "out")["id"]) == list(range(5000))
    with dask.config.set({"batchinfer.partition-size": "16MiB"}):  # default min-partitions: 32
        spread = dbi.run_job(str(tmp_path / "in"), tiny_model(seed=15),
                             output=str(tmp_path / "out2"), keep=["id"])  # fmt: skip
    assert spread.partitions >= 32  # 50 files of 100 rows: not fewer than 32 partitions


def _byte_sums(batch: pd.DataFrame) -> np.ndarray:
    flat = np.frombuffer(b"".join(batch["blob"].tolist()), dtype=np.uint8)
    return flat.reshape(len(batch), -1).sum(axis=1)


def test_binary_input_columns(client, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(16)
    blobs = rng.integers(0, 256, size=(300, 16), dtype=np.uint8)  # not valid UTF-8
    (tmp_path / "in").mkdir()
    table = pa.table({"id": np.arange(300), "blob": [row.tobytes() for row in blobs]})
    pq.write_table(table, tmp_path / "in" / "blobs.parquet")
    spec = dbi.from_callable(_byte_sums, input_columns=["blob"], outputs={"total": "int64"})
    dbi.run_job(str(tmp_path / "in"), spec, output=str(tmp_path / "out"), keep=["id"])
    back = pd.read_parquet(tmp_path / "out").sort_values("id")
    assert back["total"].tolist() == blobs.sum(axis=1).tolist()


def test_finished_resume_removes_files_of_a_later_dead_run(client, tmp_path):
    from dask_batchinfer.testing import make_features, tiny_model

    (tmp_path / "in").mkdir()
    make_features(100).to_parquet(tmp_path / "in" / "a.parquet", index=False)
    out = tmp_path / "out"
    first = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), progress=False)
    # an overwrite run that died after committing a file under its own generation's name
    (out / "part-a-deadbeef00.parquet").write_bytes((out / first.files[0]["path"]).read_bytes())
    again = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), progress=False)
    assert again.partitions_run == 0
    assert not (out / "part-a-deadbeef00.parquet").exists()
    assert len(pd.read_parquet(out)) == 100  # the folder reads as the manifest says
