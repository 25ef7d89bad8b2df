"""plan(): a sample's measurements project the full job (generous tolerance, no absolute times)."""

from __future__ import annotations

import json

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.report.projection import Plan
from dask_batchinfer.testing import make_features, slow_model, tiny_model


def test_plan_projects_the_known_model_cost_and_the_measured_run(client, tmp_path, write_inputs):
    write_inputs(tmp_path / "in", make_features(24 * 400, seed=13), files=24)
    spec = slow_model(delay=0.03, batch_size=50)  # 0.03 s per batch: the model dominates
    planned = dbi.plan(str(tmp_path / "in"), spec, keep=["id"], client=client,
                       batch_sizes=[25, 50])  # fmt: skip
    assert planned.sample_partitions == 4 and planned.sample_rows == 1600  # 2 per thread
    assert planned.recommended_batch_size == 50  # half the batches, half the sleeping
    assert planned.rows == pytest.approx(9600, rel=0.05)  # estimated from file sizes
    assert planned.uncertainty is not None and planned.uncertainty < 0.3
    assert not (tmp_path / "out").exists()  # a plan writes nothing
    result = dbi.run_job(str(tmp_path / "in"), spec.with_options(batch_size=50),
                         output=str(tmp_path / "out"), keep=["id"], client=client,
                         progress=False)  # fmt: skip
    measured = result.wall_seconds - result.startup_seconds
    # the model's own cost is known: 192 batches of 50 rows x 0.03 s on 2 threads. A sleep
    # only lengthens under load, so this floor holds on any machine, however busy
    floor = 9600 / 50 * 0.03 / 2
    assert planned.projected_seconds >= 0.95 * floor and measured >= 0.95 * floor
    # load on a shared machine slows the sample and the run alike: within a factor of 2
    assert 0.5 * measured <= planned.projected_seconds <= 2 * measured, (
        planned.projected_seconds, measured)  # fmt: skip
    written = sum((tmp_path / "out" / f["path"]).stat().st_size for f in result.files)
    assert planned.output_bytes == pytest.approx(written, rel=0.30)
    # more workers, less time; one worker, about twice the two-worker time
    assert planned.project(1) == pytest.approx(2 * planned.projected_seconds, rel=0.1)
    assert planned.project(8) < planned.project(2)


def test_plan_projects_the_job_at_the_specs_batch_size(client, tmp_path, write_inputs):
    """The projection is of the job as configured; the faster batch size is a separate figure."""
    write_inputs(tmp_path / "in", make_features(12 * 200, seed=15), files=12)
    spec = slow_model(delay=0.02, batch_size=20)  # 10 batches a partition; 1 at 200
    planned = dbi.plan(str(tmp_path / "in"), spec, keep=["id"], client=client,
                       batch_sizes=[200])  # fmt: skip
    assert sorted(planned.batch_sizes) == [20, 200]  # the spec's is always tried
    assert (planned.batch_size, planned.recommended_batch_size) == (20, 200)
    assert planned.stage_seconds_per_row["infer"] == pytest.approx(1 / planned.batch_sizes[20],
                                                                   rel=0.01)  # fmt: skip
    assert planned.projected_seconds > 3 * planned.recommended_projected_seconds
    assert planned.project(2) == pytest.approx(planned.projected_seconds)
    assert planned.project(2, batch_size=200) == pytest.approx(
        planned.recommended_projected_seconds)  # fmt: skip
    with pytest.raises(dbi.InputError, match="batch_size=64"):
        planned.project(2, batch_size=64)
    summary = planned.summary()
    assert (summary["batch_size"], summary["recommended_batch_size"]) == (20, 200)
    assert summary["projected_seconds"] > summary["recommended_projected_seconds"]
    lines = {line.split()[0]: line for line in str(planned).splitlines()[1:]}
    assert "at batch size 20, the spec's" in lines["projected"]
    assert "at batch size 200" in lines["recommended"]
    assert "batch_size=200" in lines["recommended"]
    html = planned._repr_html_()
    assert "Projected (batch size 20, the spec&#x27;s)" in html
    assert 'data-key="recommended_projected_seconds"' in html
    # the job as configured takes about the projected time (a loose bound, not a speed test)
    result = dbi.run_job(str(tmp_path / "in"), spec, output=str(tmp_path / "out"), keep=["id"],
                         client=client, progress=False)  # fmt: skip
    measured = result.wall_seconds - result.startup_seconds
    assert measured / 3 < planned.projected_seconds < 3 * measured, (
        planned.projected_seconds, planned.recommended_projected_seconds, measured)  # fmt: skip


def _plan(batch_size: int, recommended: int) -> Plan:
    """A plan of 4 partitions of 100 rows on 2 threads; inference 1 ms a row at 10, 0.5 at 40."""
    return Plan(partitions=4, rows=400, rows_exact=True, sample_partitions=4, sample_rows=400,
                threads=2, workers=2, cluster_seconds=0.0, model_load_seconds=0.0,
                stage_seconds_per_row={"read": 0.0, "preprocess": 0.0, "infer": 1e-3,
                                       "write": 0.0},
                batch_sizes={10: 1000.0, 40: 2000.0}, batch_size=batch_size,
                recommended_batch_size=recommended, uncertainty=None, output_bytes=0,
                infer_seconds_per_row={10: 1e-3, 40: 5e-4})  # fmt: skip


def test_plan_projection_at_each_batch_size_without_a_cluster():
    slow = _plan(batch_size=10, recommended=40)
    assert slow.projected_seconds == pytest.approx(0.2)  # 2 waves of 100 rows at 1 ms
    assert slow.recommended_projected_seconds == pytest.approx(0.1)
    assert "\n  recommended 0.1 s at batch size 40" in str(slow)
    fast = _plan(batch_size=40, recommended=40)
    assert "\n  recommended" not in str(fast)  # one projection: the job's is the fastest
    assert "recommended_projected_seconds" not in fast._repr_html_()


def test_plan_renders_and_validates(client, tmp_path, write_inputs):
    write_inputs(tmp_path / "in", make_features(300, seed=13), files=1)
    planned = dbi.plan(str(tmp_path / "in"), tiny_model(), client=client, batch_sizes=[64, 256])
    assert planned.sample_partitions == 1 and planned.uncertainty is None
    assert planned.rows_exact and planned.rows == 300
    text = str(planned)
    assert "recommended" in text and "spread unknown" in text
    html = planned._repr_html_()
    assert 'data-key="projected_seconds"' in html and "recommended" in html
    assert json.loads(json.dumps(planned.summary(), default=str))["partitions"] == 1
    with pytest.raises(dbi.InputError, match="batch_sizes"):
        dbi.plan(str(tmp_path / "in"), tiny_model(), client=client, batch_sizes=[0])
    with pytest.raises(dbi.InputError, match=r"columns=\['nope'\]: .* no column\(s\) \['nope'\]"):
        dbi.plan(str(tmp_path / "in"), tiny_model(), client=client, columns=["nope"])
    with pytest.raises(dbi.InputError, match="format='xml'"):
        dbi.plan(str(tmp_path / "in"), tiny_model(), client=client, format="xml")
    with pytest.raises(dbi.InputError, match=r"unknown option\(s\) \['kep'\]; known: .*'keep'"):
        dbi.plan(str(tmp_path / "in"), tiny_model(), client=client, kep=["id"])
