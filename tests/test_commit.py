"""The commit protocol, one suite for every storage backend (local disk and S3).

Each test runs twice: on a local folder and on the moto S3 server on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import random
import signal
import threading
import time

import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import (
    make_features,
    read_call_log,
    set_call_log,
    slow_model,
    tiny_model,
)


@dataclasses.dataclass
class Store:
    """A storage backend under test: a filesystem, a base URL and fsspec options."""

    fs: fsspec.AbstractFileSystem
    base: str  # local folder or s3://bucket
    options: dict

    def url(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def path(self, *parts: str) -> str:
        return self.fs._strip_protocol(self.url(*parts))

    def versions(self, folder: str) -> dict[str, str]:
        """Every file under ``folder`` with its ETag (S3) or mtime_ns (local)."""
        self.fs.invalidate_cache()
        found = self.fs.find(self.path(folder), detail=True)
        return {
            path: str(info.get("ETag") or os.stat(path).st_mtime_ns) for path, info in found.items()
        }

    def visible_parquet(self, folder: str) -> set[str]:
        self.fs.invalidate_cache()
        root = self.path(folder)
        return {
            posixpath.relpath(p, root)
            for p in self.fs.find(root)
            if p.endswith(".parquet") and "/_" not in "/" + posixpath.relpath(p, root)
        }

    def read(self, folder: str) -> pd.DataFrame:
        """Read ``folder`` the way a user would, with dd.read_parquet on the folder."""
        self.fs.invalidate_cache()
        return dd.read_parquet(self.url(folder), storage_options=self.options).compute()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The backend under test; S3 gets a freshly reset moto server."""
    if request.param == "local":
        return Store(fsspec.filesystem("file"), str(tmp_path), {})
    fs, options = request.getfixturevalue("s3")
    return Store(fs, "s3://batchinfer-test", options)


@pytest.fixture
def call_log(client, tmp_path):
    """A file to which slow_model appends a line per model call, on every worker."""
    path = str(tmp_path / "calls.log")
    client.run(set_call_log, path)
    yield path
    client.run(set_call_log, None)


def assert_output(store: Store, folder: str, frame: pd.DataFrame, scores: np.ndarray) -> None:
    """The folder holds every row of ``frame`` exactly once with its expected score, and only
    the manifest's files."""
    back = store.read(folder).sort_values("id").reset_index(drop=True)
    want = pd.DataFrame({"id": frame["id"].to_numpy(), "score": scores})
    want = want.sort_values("id").reset_index(drop=True)
    assert back["id"].is_unique, "duplicated rows"
    assert back["id"].tolist() == want["id"].tolist(), "lost or extra rows"
    np.testing.assert_allclose(back["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-5)
    import json

    with store.fs.open(store.path(folder, "_SUCCESS")) as f:
        manifest = json.load(f)
    assert {f["path"] for f in manifest["files"]} == store.visible_parquet(folder)
    assert not store.fs.exists(store.path(folder, "_staging"))


def run(store: Store, folder: str = "in", out: str = "out", seed: int = 0, **kwargs):
    spec = kwargs.pop("model", None) or tiny_model(seed=seed)
    return dbi.run_job(
        store.url(folder),
        spec,
        output=store.url(out),
        keep=["id"],
        storage_options=store.options,
        **kwargs,
    )


def test_job_commits_and_rerun_writes_nothing(client, store, write_inputs, expected_scores):
    frame = make_features(600, seed=1)
    write_inputs(store.path("in"), frame, files=6, fs=store.fs)
    first = run(store)
    assert (first.partitions_run, first.partitions_skipped) == (6, 0)
    assert_output(store, "out", frame, expected_scores(frame, 0))
    before = store.versions("out")

    again = run(store)
    assert (again.partitions_run, again.partitions_skipped) == (0, 6)
    assert again.rows_out == 600 and again.model_loads == {}
    assert store.versions("out") == before  # no object rewritten, nothing added or removed


def test_a_finished_jobs_rerun_checks_the_manifest_from_its_head(
    client, store, write_inputs, expected_scores, monkeypatch
):
    """A re-run of a finished job reads only the manifest's head, whose digest of the
    markers' files stands for its whole list (23 MB at 100,000 partitions); a manifest
    without a digest (written before it) is read whole; one whose digest disagrees with
    the markers is written again from them."""
    import json
    import re

    from dask_batchinfer.io import commit

    frame = make_features(400, seed=8)
    write_inputs(store.path("in"), frame, files=4, fs=store.fs)
    run(store)
    success = store.path("out", "_SUCCESS")
    text = store.fs.cat_file(success).decode()
    digest = json.loads(text)["files_digest"]
    whole, read_json = [], commit.read_json
    monkeypatch.setattr(
        commit, "read_json", lambda fs, path: whole.append(path) or read_json(fs, path)
    )

    def rerun(manifest: str | None = None) -> dict:
        if manifest is not None:
            store.fs.pipe_file(success, manifest.encode())
        before = store.versions("out")
        again = run(store)
        assert (again.partitions_run, again.partitions_skipped, again.rows_out) == (0, 4, 400)
        return {"rewritten": store.versions("out") != before, "whole reads": len(whole)}

    assert rerun() == {"rewritten": False, "whole reads": 0}
    without = re.sub(r'\n "files_digest": "[0-9a-f]+",', "", text)
    assert "files_digest" not in without
    assert rerun(without) == {"rewritten": False, "whole reads": 1}
    assert rerun(text.replace(digest, "0" * 32)) == {"rewritten": True, "whole reads": 1}
    assert json.loads(store.fs.cat_file(success))["files_digest"] == digest
    assert_output(store, "out", frame, expected_scores(frame, 0))


def test_resume_runs_only_uncommitted_partitions(
    client, store, call_log, write_inputs, expected_scores
):
    frame = make_features(800, seed=2)
    write_inputs(store.path("in"), frame, files=8, fs=store.fs)
    spec = slow_model(delay=0, seed=0)
    run(store, model=spec)
    # a crash before the manifest, with 3 partitions not yet committed
    store.fs.rm(store.path("out", "_SUCCESS"))
    markers = sorted(store.fs.find(store.path("out", "_committed")))
    for marker in random.Random(0).sample(markers, 3):
        store.fs.rm(marker)
    calls_before = read_call_log(call_log)[1]

    resumed = run(store, model=spec)
    assert (resumed.partitions_run, resumed.partitions_skipped) == (3, 5)
    assert read_call_log(call_log)[1] - calls_before == 300  # model rows computed again
    assert_output(store, "out", frame, expected_scores(frame, 0))


def test_new_input_files_run_alone(client, store, write_inputs, expected_scores):
    old = make_features(500, seed=3)
    write_inputs(store.path("in"), old, files=5, fs=store.fs)
    run(store)
    new = make_features(200, seed=4, start_id=500)
    write_inputs(store.path("in"), new, files=2, fs=store.fs, first=5)

    result = run(store)
    assert (result.partitions_run, result.partitions_skipped, result.partitions_invalidated) == (
        2,
        5,
        0,
    )
    assert result.rows_in == 700
    both = pd.concat([old, new])
    assert_output(store, "out", both, expected_scores(both, 0))


def test_changes_invalidate_exactly_the_affected_partitions(
    client, store, write_inputs, expected_scores
):
    frame = make_features(600, seed=5)
    write_inputs(store.path("in"), frame, files=6, fs=store.fs)
    run(store)

    changed = frame.copy()
    changed.loc[200:299, "f0"] += 1.0  # rows of in-002
    write_inputs(store.path("in"), changed.iloc[200:300], files=1, fs=store.fs, first=2)
    result = run(store)
    assert (result.partitions_run, result.partitions_skipped, result.partitions_invalidated) == (
        1,
        5,
        1,
    )
    assert result.files_removed == 1
    assert_output(store, "out", changed, expected_scores(changed, 0))

    other_model = run(store, seed=9)
    assert (other_model.partitions_run, other_model.partitions_invalidated) == (6, 6)
    assert_output(store, "out", changed, expected_scores(changed, 9))


def test_stale_files_of_an_earlier_larger_run_disappear(
    client, store, write_inputs, expected_scores
):
    big = make_features(1000, seed=6)
    write_inputs(store.path("big"), big, files=10, fs=store.fs)
    run(store, folder="big")
    with store.fs.open(store.path("out", "part.0.parquet"), "wb") as f:  # dask-style leftover
        big.iloc[:10].to_parquet(f)
    small = make_features(300, seed=7)
    write_inputs(store.path("in"), small, files=3, fs=store.fs)

    result = run(store)
    assert result.files_removed == 11
    # readers of the folder see the manifest's files only
    assert_output(store, "out", small, expected_scores(small, 0))
    assert len(store.fs.find(store.path("out", "_committed"))) == 3


def test_modes(client, store, write_inputs, expected_scores):
    frame = make_features(300, seed=8)
    write_inputs(store.path("in"), frame, files=3, fs=store.fs)
    with pytest.raises(dbi.InputError, match="mode="):
        run(store, mode="append")
    first = run(store, mode="error")
    with pytest.raises(dbi.InputError, match="exists and is not empty"):
        run(store, mode="error")

    old_files = {f["path"] for f in first.files}
    result = run(store, mode="overwrite")
    assert result.partitions_run == 3
    assert not old_files & {f["path"] for f in result.files}, "overwrite reused file names"
    assert result.files_removed == 3
    assert_output(store, "out", frame, expected_scores(frame, 0))
    assert run(store).partitions_run == 0  # a resume after an overwrite reuses its output


def test_output_inside_input_is_refused_before_any_change(client, store, write_inputs):
    frame = make_features(100)
    write_inputs(store.path("in"), frame, files=2, fs=store.fs)
    before = store.versions("in")
    for output in (store.url("in", "out"), store.url("in")):
        with pytest.raises(dbi.InputError, match="overlap"):
            dbi.run_job(store.url("in"), tiny_model(), output=output, storage_options=store.options)
    assert store.versions("in") == before


def test_read_output_reads_the_manifest(client, store, write_inputs):
    frame = make_features(400, seed=10)
    frame["country"] = pd.array(np.array(["FR", "DE"])[np.arange(400) % 2], dtype="str")
    write_inputs(store.path("in"), frame, files=4, fs=store.fs)
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        dbi.read_output(store.url("in"), storage_options=store.options)
    run(store, partition_on=["country"])
    back = dbi.read_output(store.url("out"), storage_options=store.options).compute()
    back = back.sort_values("id")
    assert back["id"].tolist() == list(range(400))
    assert back["country"].astype(str).tolist() == frame["country"].tolist()


@pytest.fixture(scope="module")
def kill_client(private_client):
    """3 worker processes of their own for the worker-kill tests, shared by them: a killed
    worker's nanny starts a new one, and each test waits for all 3 first."""
    import logging

    with private_client(n_workers=3, silence_logs=logging.CRITICAL) as client:
        yield client


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_after", "victim_index"),
    [(2, 0), (8, 1)],  # early (most partitions still to run) and later (in-flight work lost)
)
def test_worker_killed_mid_job(store, kill_client, kill_after, victim_index, write_inputs,
                               expected_scores):  # fmt: skip
    """SIGKILL one worker process while the job runs: nothing lost, nothing duplicated."""
    c = kill_client
    frame = make_features(3000, seed=kill_after)
    write_inputs(store.path("in"), frame, files=30, fs=store.fs)

    def committed() -> int:
        store.fs.invalidate_cache()
        try:
            return len(store.fs.find(store.path("out", "_committed")))
        except FileNotFoundError:
            return 0

    c.wait_for_workers(3)  # a worker killed by the previous test is back
    victim = sorted(c.run(os.getpid).values())[victim_index]
    kill: dict = {}  # what the killer saw when it fired
    job_returned = threading.Event()  # set once run() is back: the killer must not fire
    lock = threading.Lock()  # the killer's last look at job_returned, and its kill, as one

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not job_returned.is_set():
            if committed() >= kill_after:
                with lock:
                    if job_returned.is_set():
                        return
                    kill["worker_pids"] = set(c.run(os.getpid).values())
                    os.kill(victim, signal.SIGKILL)
                    kill["at"] = time.monotonic()
                kill["committed"] = committed()  # counted after the kill: an upper bound
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        result = run(store, model=slow_model(delay=0.05, seed=0, batch_size=50), client=c)
    finally:
        with lock:
            job_returned.set()
            returned_at = time.monotonic()
        thread.join()
    assert "at" in kill, f"the job finished before the kill: {kill}"
    assert kill["at"] < returned_at
    assert victim in kill["worker_pids"], "the victim was no longer a worker when it was killed"
    assert kill_after <= kill["committed"] < 30, f"the kill did not land mid-job: {kill}"
    assert result.rows_out == 3000 and result.partitions_run == 30
    assert_output(store, "out", frame, expected_scores(frame, 0))


@pytest.mark.slow
@pytest.mark.parametrize("store", ["local"], indirect=True)  # the client's side: any store
def test_a_result_lost_with_its_worker_before_the_gather_is_waited_for(
    store, kill_client, write_inputs, expected_scores, monkeypatch
):
    """A partition that finished, then lost its result with its worker before the client
    gathered it, is computed again and committed: never dropped from the job's counts and
    manifest while the job reports success (the client saw "lost", not an error)."""
    from dask_batchinfer.job.executor import Executor

    c = kill_client
    frame = make_features(600, seed=5)
    write_inputs(store.path("in"), frame, files=6, fs=store.fs)
    c.wait_for_workers(3)
    collect, lost = Executor._collect, []

    def kill_before_gather(self, done, flying):
        finished = [f for f in done if f in flying and f.status == "finished"]
        if finished and not lost:  # kill the worker holding the first finished result
            holder = c.who_has(finished[0])[finished[0].key][0]
            os.kill(c.run(os.getpid, workers=[holder])[holder], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while finished[0].status == "finished" and time.monotonic() < deadline:
                time.sleep(0.005)
            lost.append(finished[0].status)
        return collect(self, done, flying)

    monkeypatch.setattr(Executor, "_collect", kill_before_gather)
    result = run(store, model=slow_model(delay=0.5, seed=0, batch_size=50), client=c)
    assert lost == ["lost"], "the kill did not land between the finish and the gather"
    assert result.rows_out == 600 and result.partitions_run == 6 and result.files_total == 6
    assert_output(store, "out", frame, expected_scores(frame, 0))


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_partition_the_client_never_counted_fails_the_job_without_success(
    client, store, write_inputs, expected_scores, monkeypatch
):
    """The last line of defence against a bookkeeping bug like the one above: a partition
    run but never counted by the client fails the job, naming it, with no ``_SUCCESS``; the
    re-run resumes and commits a complete, correct output."""
    from dask_batchinfer.job.tally import Tally

    frame = make_features(400, seed=6)
    write_inputs(store.path("in"), frame, files=4, fs=store.fs)
    add = Tally.add
    monkeypatch.setattr(Tally, "add", lambda self, stats: stats.number == 2 or add(self, stats))
    with pytest.raises(dbi.PartitionError, match=r"partition 2 .* never committed") as err:
        run(store)
    assert err.value.partition == 2 and err.value.source.endswith("in-002.parquet")
    assert not store.fs.exists(store.path("out", "_SUCCESS"))
    monkeypatch.setattr(Tally, "add", add)
    again = run(store)
    assert (again.partitions_run, again.partitions_skipped, again.rows_out) == (0, 4, 400)
    assert_output(store, "out", frame, expected_scores(frame, 0))


def test_the_manifests_first_members_are_read_from_its_first_kilobytes(tmp_path):
    """``read_leading_strings`` finds the object's own string members among its first
    ``limit`` bytes (one ranged read), never a nested member of the same name, nor one
    further in; None for a missing file."""
    import json

    import fsspec

    from dask_batchinfer.io.fs import read_leading_strings

    local = fsspec.filesystem("file")
    path = tmp_path / "_SUCCESS"
    nested = {"job_fingerprint": "nested", "files_digest": "nested"}
    head = {"summary": nested, "job_fingerprint": "abc", "files": ["x"] * 2000, "files_digest": "d"}
    path.write_text(json.dumps(head, indent=1))
    found = read_leading_strings(local, str(path), ("job_fingerprint", "files_digest"), 200)
    assert found == {"job_fingerprint": "abc"}  # files_digest lies past the first 200 bytes
    assert read_leading_strings(local, str(path), ["files_digest"], 100_000) == {
        "files_digest": "d"
    }
    assert read_leading_strings(local, str(tmp_path / "missing"), ["files_digest"]) is None


def test_markers_are_read_many_at_a_time_in_order(tmp_path, monkeypatch):
    """``read_jsons`` reads its paths in batches (one ``cat`` each: concurrent on object
    stores), in order, None for a missing file or one that is not a JSON object."""
    import json

    import fsspec

    from dask_batchinfer.io import fs as fsmod

    monkeypatch.setattr(fsmod, "READ_BATCH", 3)
    local = fsspec.filesystem("file")
    paths = []
    for i in range(7):
        path = tmp_path / f"m{i}.json"
        path.write_text("[1]" if i == 4 else "{" if i == 5 else json.dumps({"i": i}))
        paths.append(str(path))
    paths.insert(2, str(tmp_path / "missing.json"))
    calls = []
    cat = local.cat
    monkeypatch.setattr(local, "cat", lambda p, **kw: calls.append(len(p)) or cat(p, **kw))
    got = list(fsmod.read_jsons(local, paths))
    assert got == [{"i": 0}, {"i": 1}, None, {"i": 2}, {"i": 3}, None, None, {"i": 6}]
    assert calls == [3, 3, 2]


def test_empty_folders_are_removed_and_the_rest_kept(tmp_path):
    """Clean-up removes folders left empty at any depth (hive folders whose stale files went)
    and keeps every folder that holds a file, and the output folder itself."""
    from dask_batchinfer.io.fs import remove_empty_dirs

    (tmp_path / "country=FR" / "city=Paris").mkdir(parents=True)
    (tmp_path / "country=FR" / "city=Lyon").mkdir()
    (tmp_path / "country=FR" / "city=Lyon" / "part-1.parquet").write_bytes(b"x")
    (tmp_path / "country=DE" / "city=Berlin" / "empty").mkdir(parents=True)
    (tmp_path / "part-0.parquet").write_bytes(b"x")
    remove_empty_dirs(fsspec.filesystem("file"), str(tmp_path))
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["country=FR", "country=FR/city=Lyon", "country=FR/city=Lyon/part-1.parquet",
                    "part-0.parquet"]  # fmt: skip
    (tmp_path / "country=FR" / "city=Lyon" / "part-1.parquet").unlink()
    (tmp_path / "part-0.parquet").unlink()
    remove_empty_dirs(fsspec.filesystem("file"), str(tmp_path))
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []
