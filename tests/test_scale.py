"""What a job costs the scheduler and the client per partition, and what it keeps (#27).

Counted, not timed: tasks and graphs the scheduler received (a scheduler
plugin), the size of the result and of the report at many partitions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from graphs import covered, job_graphs

import dask_batchinfer as dbi
from dask_batchinfer.cluster.engine import reaches_workers


def _zeros(batch: pd.DataFrame) -> np.ndarray:
    return np.zeros(len(batch), np.float32)


NULL = dbi.from_callable(_zeros, input_columns=["x"], outputs={"y": "float32"}, name="null")


def _row_groups(path, groups: int, rows: int = 10) -> None:
    table = pa.table(
        {"id": np.arange(groups * rows), "x": np.random.default_rng(0).random(groups * rows)}
    )
    pq.write_table(table, path, row_group_size=rows)


def test_quick_partitions_share_tasks_that_read_them_and_refills_are_graphs_of_several(
    client, tmp_path
):
    """A Parquet partition's read runs inside its task (no read task beside it); partitions
    far quicker than a task's cost (a null model on 10 rows) go several to a task, each
    exactly once; refills arrive as graphs of several tasks."""
    import dask

    _row_groups(tmp_path / "in.parquet", 60)
    with dask.config.set({"batchinfer.partition-size": "10 rows"}):
        result, refills = job_graphs(
            client,
            lambda: dbi.run_job(
                str(tmp_path / "in.parquet"), NULL, output=str(tmp_path / "out"), progress=False
            ),
        )
    assert result.partitions_run == 60 and result.rows_out == 600
    tasks = [k for g in refills for k in g]
    assert all(k.startswith(f"process-batchinfer-{result.job}-") for k in tasks), tasks
    ran = sorted(n for k in tasks for n in covered(k, result.job))
    assert ran == list(range(60))  # each once, all in their tasks
    assert len(tasks) < 60 / 2, tasks  # bundled
    assert len(refills) < len(tasks), [len(g) for g in refills]  # several tasks per graph


def _slow(batch: pd.DataFrame) -> np.ndarray:
    import time

    time.sleep(0.3)  # longer than a bundle's aim (BUNDLE_SECONDS)
    return np.zeros(len(batch), np.float32)


def test_slow_partitions_get_a_task_each(client, tmp_path):
    import dask

    _row_groups(tmp_path / "in.parquet", 8)
    slow = dbi.from_callable(_slow, input_columns=["x"], outputs={"y": "float32"}, name="slow")
    with dask.config.set({"batchinfer.partition-size": "10 rows"}):
        result, refills = job_graphs(
            client,
            lambda: dbi.run_job(
                str(tmp_path / "in.parquet"), slow, output=str(tmp_path / "out"), progress=False
            ),
        )
    tasks = [k for g in refills for k in g]
    assert result.partitions_run == 8 and len(tasks) == 8, tasks


def test_results_come_from_the_workers_when_the_client_reaches_them(client):
    """Direct gathers (no scheduler hop) when a worker answers; through the scheduler when
    none does, or when the client says so."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert reaches_workers(client, workers)
    assert not reaches_workers(client, {"tcp://127.0.0.1:1": {}})  # nothing listens there
    client.direct_to_workers = False
    try:
        assert not reaches_workers(client, workers)
    finally:
        client.direct_to_workers = None


def test_the_result_and_report_list_a_bounded_sample_and_the_manifest_every_file(
    client, tmp_path, monkeypatch
):
    """At many files, ``result.files`` and ``_report.json`` list the first FILES_SHOWN and
    count them all; the ``_SUCCESS`` manifest lists every one (what resume and readers use)."""
    import json

    import dask

    from dask_batchinfer.job import record

    monkeypatch.setattr(record, "FILES_SHOWN", 10)
    _row_groups(tmp_path / "in.parquet", 40)
    with dask.config.set({"batchinfer.partition-size": "10 rows"}):
        result = dbi.run_job(
            str(tmp_path / "in.parquet"), NULL, output=str(tmp_path / "out"), progress=False
        )
    assert result.files_total == 40 and len(result.files) == 10
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["files_total"] == 40 and len(report["files"]) == 10
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.name for p in (tmp_path / "out").glob("part-*.parquet")}
    assert len(listed) == 40 and {p.rsplit("/", 1)[-1] for p in listed} == on_disk
    assert "40 files" in str(result)


def test_the_timeline_keeps_an_even_sample_of_partitions_and_every_sum():
    """10,000 partitions' statistics: the tally keeps the stage records of at most
    ``limit`` partitions, spread over the input, while its sums count all of them."""
    from dask_batchinfer.io.commit import Marker
    from dask_batchinfer.job.tally import Tally
    from dask_batchinfer.pipeline.stages import PartitionStats

    tally = Tally(limit=300)
    for n in range(10_000):
        stats = PartitionStats(n, f"p{n}", rows_in=100, worker="w", infer_seconds=0.5)
        stats.timeline = [{"stage": "infer", "partition": n, "start": n, "end": n + 1.0}]
        stats.marker = Marker(f"p{n}", None, "f", ((f"part-{n}.parquet", 100),), 100)
        stats.finished = float(n)
        tally.add(stats)
    kept = sorted({r["partition"] for r in tally.timeline()})
    assert 150 < len(kept) <= 300 and tally.timeline_partitions == len(kept)
    assert kept[0] == 0 and kept[-1] > 9_000  # the whole input, not its start
    assert len({b - a for a, b in zip(kept, kept[1:], strict=False)}) == 1  # evenly
    assert tally.partitions == 10_000 and tally.rows_computed == 1_000_000
    assert tally.sums["infer_seconds"] == 5_000 and len(tally.markers) == 10_000
    assert (tally.first_commit, tally.last_commit, tally.first_read) == (0.0, 9_999.0, 0)


def test_a_path_input_never_materialises_its_whole_graph(tmp_path):
    """Each partition's read task is made when it is submitted (Dask's own per-partition
    builder), equal to the one in the input's graph; the whole graph is not held. A Dask
    DataFrame whose partitions are several tasks falls back to its graph."""
    import dask
    import dask.dataframe as dd

    from dask_batchinfer.cluster.local import Pools
    from dask_batchinfer.job.options import JobOptions
    from dask_batchinfer.job.prepare import prepare
    from dask_batchinfer.job.tasks import TaskGraphs

    _row_groups(tmp_path / "in.parquet", 30)
    single = Pools(None, None, 2, 2)
    with dask.config.set({"batchinfer.partition-size": "10 rows"}):
        job = prepare(str(tmp_path / "in.parquet"), NULL, None, JobOptions.build(output="o"))
    ddf = job.ddf.optimize()
    graphs = TaskGraphs(ddf, single, job.settings("j"))
    assert graphs.graph == {} and graphs.expr is not None
    whole = dict(ddf.__dask_graph__())
    for n in (0, 17, 29):
        made = graphs._read(n)
        assert made.key == ddf.__dask_keys__()[n]
        pd.testing.assert_frame_equal(made(), whole[made.key]())
    frame = pd.DataFrame({"x": np.arange(40.0)})
    stacked = dd.from_pandas(frame, npartitions=4).map_partitions(lambda f: f * 2).optimize()
    fallback = TaskGraphs(stacked, single, job.settings("j"))
    assert fallback.expr is None and len(fallback.graph) == 8


def test_the_marker_spool_keeps_markers_on_disk_by_number_and_counts_a_rerun_once():
    """Markers go to the client's disk, come back by partition number and in input order;
    a partition committed twice (a rerun after a worker died) is counted once, as its
    last marker; the partitions that quarantined rows are flagged."""
    from dask_batchinfer.io.commit import Marker
    from dask_batchinfer.job.tally import Tally
    from dask_batchinfer.pipeline.stages import PartitionStats

    tally = Tally()
    for n, rows, errors in [(5, 10, ()), (2, 20, (("_errors/p2.parquet", 3),)), (5, 11, ())]:
        stats = PartitionStats(n, f"p{n}", rows_in=rows, worker="w")
        stats.marker = Marker(f"p{n}", None, "f", ((f"part-{n}.parquet", rows),), rows, errors)
        stats.finished = 1.0
        tally.add(stats)
    spool = tally.markers
    assert len(spool) == 2 and list(spool.numbers()) == [2, 5] and 3 not in spool
    assert spool.get(5).files == (("part-5.parquet", 11),) and spool.get(4) is None
    assert spool.has_errors(2) and not spool.has_errors(5)
    assert tally.counts == {"rows_in": 31, "rows_out": 31, "rows_quarantined": 3,
                            "rows_truncated": 0, "files": 2, "error_files": 1}  # fmt: skip
    spool.close()
    assert len(spool) == 0 and spool.get(2) is None


def test_a_marker_spool_never_closed_closes_its_file_when_collected():
    """A job that stopped before ``close()`` (an executor used on its own, an error) leaves
    no open file behind, and no ResourceWarning from the garbage collector."""
    import gc
    import warnings

    from dask_batchinfer.io.commit import Marker
    from dask_batchinfer.job.spool import MarkerSpool

    spool = MarkerSpool()
    spool.add(0, Marker("p0", None, "f", (("part-0.parquet", 1),), 1, ()))
    file = spool._file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del spool
        gc.collect()
    assert file.closed
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_job_of_many_partitions_keeps_a_few_bytes_of_each_on_the_client(tmp_path):
    """What the client holds of 10,000 partitions (their plan, fingerprints and worklist,
    and the markers of every one committed), and what writing the manifest of all of them
    takes at its peak, stay a few bytes per partition (Python allocations, traced): as
    objects (a list of pieces, of ``Partition``, a dict of markers, the manifest as one
    dict) it was over 2 KB each."""
    import json
    import tracemalloc

    import dask

    from dask_batchinfer.io.commit import Marker, OutputState
    from dask_batchinfer.job.options import JobOptions
    from dask_batchinfer.job.prepare import prepare
    from dask_batchinfer.job.record import RunInfo, build_result, manifest
    from dask_batchinfer.job.tally import Tally
    from dask_batchinfer.job.worklist import partitions_of, worklist
    from dask_batchinfer.pipeline.stages import PartitionStats

    n = 10_000
    (tmp_path / "in").mkdir()
    for f in range(10):
        _row_groups(tmp_path / "in" / f"part-{f}.parquet", n // 10)
    options = JobOptions.build(output=str(tmp_path / "out"))
    with dask.config.set({"batchinfer.partition-size": "10 rows", "batchinfer.min-partitions": n}):
        prepare(str(tmp_path / "in" / "part-0.parquet"), NULL, None, options)  # imports
        tracemalloc.start()
        try:
            job = prepare(str(tmp_path / "in"), NULL, None, options)
            partitions = partitions_of(None, job.groups, job.token())
            work = worklist(partitions, OutputState(None, {}, set(), exists=False), "resume")
            tally = Tally()
            for p in work.todo:
                stats = PartitionStats(p.number, p.slug, rows_in=10, worker="w")
                stats.marker = Marker(p.slug, p.source, p.fingerprint,
                                      ((f"{p.stem}.parquet", 10),), 10)  # fmt: skip
                stats.finished = 1.0
                tally.add(stats)
            held = tracemalloc.get_traced_memory()[0]
            result = build_result(output="o", mode="resume", model=NULL, work=work,
                                  tally=tally, run=RunInfo(job="j"))  # fmt: skip
            tracemalloc.reset_peak()
            with open(tmp_path / "manifest.json", "w") as sink:
                for piece in manifest(result, work, tally, NULL, "p"):
                    sink.write(piece)
            peak = tracemalloc.get_traced_memory()[1] - held
        finally:
            tracemalloc.stop()
    assert len(work.partitions) == n and result.rows_in == 10 * n and result.files_total == n
    assert held / n < 300, f"{held / n:.0f} bytes held per partition"
    assert peak / n < 100, f"{peak / n:.0f} bytes per partition to write the manifest"
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert len(written["files"]) == len(written["input"]) == n and written["errors"] == []
    assert [f["partition"] for f in written["files"]] == [i["slug"] for i in written["input"]]
    assert written["files"][0]["path"] == f"{work.partitions[0].stem}.parquet"
    assert written["rows_in"] == 10 * n and written["job_fingerprint"] == work.job_fingerprint


def test_a_client_without_a_temporary_folder_fails_before_any_work(client, tmp_path, monkeypatch):
    """The markers wait in a temporary file on the client: a temporary folder that cannot be
    written fails the job before any partition runs, naming the folder and ``TMPDIR``."""
    import tempfile

    import pytest

    _row_groups(tmp_path / "in.parquet", 4)
    missing = str(tmp_path / "no-such-folder")
    monkeypatch.setattr(tempfile, "tempdir", missing)
    with pytest.raises(OSError, match=f"cannot create one in '{missing}'.*TMPDIR"):
        dbi.run_job(str(tmp_path / "in.parquet"), NULL, output=str(tmp_path / "out"),
                    client=client, progress=False)  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.parquet"))
    assert not (tmp_path / "out" / "_committed").exists() or not list(
        (tmp_path / "out" / "_committed").iterdir()
    )


def test_a_local_output_is_listed_one_entry_at_a_time_as_fs_find_names_it(tmp_path):
    """The resume's listing of a local output: every file under the root, nested folders
    included (a link to a folder as a file, not followed), named as ``fs.find`` names them,
    without fsspec's entry of details per file (at 100,000 partitions, the resume's peak)."""
    import tracemalloc

    import fsspec

    from dask_batchinfer.io.fs import list_files

    root = tmp_path / "out"
    (root / "_committed").mkdir(parents=True)
    (root / "year=2026" / "month=12").mkdir(parents=True)
    for i in range(10_000):
        (root / "_committed" / f"part-{i:05d}.json").touch()
    (root / "year=2026" / "month=12" / "part-0.parquet").touch()
    (root / "_SUCCESS").touch()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "linked.parquet").touch()
    (root / "link").symlink_to(outside)
    local = fsspec.filesystem("file")
    assert sorted(list_files(local, str(root))) == sorted(local.find(str(root)))
    tracemalloc.start()
    try:
        count = sum(1 for _ in list_files(local, str(root)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 10_003
    assert peak < 1_000_000, f"{peak:,} bytes traced listing 10,003 files"  # fs.find: 8.5 MB
