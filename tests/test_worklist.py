"""The job work, without a cluster: which partitions are done, which run, when a job is finished."""

from __future__ import annotations

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.io.commit import Marker, OutputState
from dask_batchinfer.io.read import InputFile
from dask_batchinfer.job.worklist import partitions_of, worklist


def _files(*names: str) -> list[list[InputFile]]:
    return [[InputFile(f"/in/{n}", n, 100, "v1")] for n in names]


def _marker(partition, fingerprint=None, rows=10) -> Marker:
    files = ((f"{partition.stem}.parquet", rows),)
    return Marker(partition.slug, partition.source, fingerprint or partition.fingerprint, files,
                  rows)  # fmt: skip


def _state(*markers: Marker, manifest=None) -> OutputState:
    files = {path for m in markers for path, _ in m.files}
    return OutputState(manifest, {m.slug: m for m in markers}, files, exists=bool(markers))


def test_partitions_are_named_after_their_files_and_fingerprinted():
    parts = partitions_of([("read", 0), ("read", 1)], _files("a.parquet", "day=2/b.parquet"), "t")
    assert [p.slug for p in parts] == ["a", "day=2--b"]
    assert [p.source for p in parts] == ["/in/a.parquet", "/in/day=2/b.parquet"]
    again = partitions_of([("x", 0), ("x", 1)], _files("a.parquet", "day=2/b.parquet"), "t")
    assert [p.fingerprint for p in parts] == [p.fingerprint for p in again]  # keys do not matter
    other_job = partitions_of([0, 1], _files("a.parquet", "day=2/b.parquet"), "another token")
    assert parts[0].fingerprint != other_job[0].fingerprint
    changed = [[InputFile("/in/a.parquet", "a.parquet", 100, "v2")]]
    assert partitions_of([0], changed, "t")[0].fingerprint != parts[0].fingerprint
    numbered = partitions_of([("frame", 0), ("frame", 1)], None, "t")
    assert [p.slug for p in numbered] == ["00000", "00001"] and numbered[0].source is None


def test_resume_keeps_committed_partitions_and_counts_invalidated_ones():
    a, b, c = partitions_of([0, 1, 2], _files("a.parquet", "b.parquet", "c.parquet"), "t")
    state = _state(_marker(a), _marker(b, fingerprint="an older model"))
    work = worklist([a, b, c], state, "resume")
    assert [work.partitions[n].slug for n in work.done] == ["a"]
    assert [p.slug for p in work.todo] == ["b", "c"]
    assert work.invalidated == 1 and not work.finished
    assert work.known == {"a", "b"}  # the markers clean-up keeps: this job's partitions'
    overwrite = worklist([a, b, c], state, "overwrite")
    assert overwrite.done == {} and len(overwrite.todo) == 3 and overwrite.invalidated == 2


def test_a_committed_partition_whose_file_vanished_runs_again():
    (a,) = partitions_of([0], _files("a.parquet"), "t")
    state = _state(_marker(a))
    state.files.clear()  # deleted by hand
    assert [p.slug for p in worklist([a], state, "resume").todo] == ["a"]


def test_finished_only_when_the_manifest_is_this_jobs():
    parts = partitions_of([0, 1], _files("a.parquet", "b.parquet"), "t")
    markers = [_marker(p) for p in parts]
    work = worklist(parts, _state(*markers), "resume")
    assert not work.todo and not work.finished  # committed, but no manifest yet
    manifest = {"job_fingerprint": work.job_fingerprint,
                "files": [{"path": path} for m in markers for path, _ in m.files]}  # fmt: skip
    assert worklist(parts, _state(*markers, manifest=manifest), "resume").finished
    stale = dict(manifest, job_fingerprint="another job")
    assert not worklist(parts, _state(*markers, manifest=stale), "resume").finished
    assert worklist(parts, _state(*markers, manifest=manifest), "resume").quarantined_before() == 0


def test_the_manifest_is_read_only_when_the_job_may_be_finished():
    """A job with partitions to run never reads ``_SUCCESS`` (22 MB of JSON at 100,000
    partitions, held for the whole run); one with none left reads it once."""
    parts = partitions_of([0, 1], _files("a.parquet", "b.parquet"), "t")
    markers = [_marker(p) for p in parts]
    fingerprint = worklist(parts, _state(*markers), "resume").job_fingerprint
    reads = []

    def read():
        reads.append(1)
        return {"job_fingerprint": fingerprint,
                "files": [{"path": path} for m in markers for path, _ in m.files]}  # fmt: skip

    state = _state(markers[0])
    state.read_manifest = read
    assert len(worklist(parts, state, "resume").todo) == 1 and reads == []
    state = _state(*markers)
    state.read_manifest = read
    assert worklist(parts, state, "resume").finished and reads == [1]
    assert state.get_manifest()["job_fingerprint"] == fingerprint and reads == [1]


def test_mode_error_refuses_a_folder_that_is_not_empty():
    (a,) = partitions_of([0], _files("a.parquet"), "t")
    with pytest.raises(dbi.InputError, match="'out/' exists.*mode='error'"):
        worklist([a], _state(_marker(a)), "error", "out/")
    assert worklist([a], _state(), "error", "out/").todo == [a]


def test_marker_json_round_trip_and_foreign_files():
    (a,) = partitions_of([0], _files("a.parquet"), "t")
    marker = Marker(a.slug, a.source, a.fingerprint, (("x.parquet", 7),), 9,
                    (("_errors/x.parquet", 2),), rows_truncated=3)  # fmt: skip
    assert Marker.from_json(marker.to_json()) == marker
    assert (marker.rows_out, marker.rows_quarantined) == (7, 2)
    assert Marker.from_json({"slug": "a"}) is None  # not ours: treated as not committed
