"""plan(): a sample's measurements project the full job (generous tolerance, no absolute times)."""

from __future__ import annotations

import json

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, slow_model, tiny_model


def test_plan_projects_the_measured_run_within_30_percent(client, tmp_path, write_inputs):
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
    assert planned.projected_seconds == pytest.approx(measured, rel=0.30), (
        planned.projected_seconds, measured)  # fmt: skip
    written = sum((tmp_path / "out" / f["path"]).stat().st_size for f in result.files)
    assert planned.output_bytes == pytest.approx(written, rel=0.30)
    # more workers, less time; one worker, about twice the two-worker time
    assert planned.project(1) == pytest.approx(2 * planned.projected_seconds, rel=0.1)
    assert planned.project(8) < planned.project(2)


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
    with pytest.raises(dbi.InputError, match="credentials"):
        dbi.plan(str(tmp_path / "in"), tiny_model(), client=client,
                 storage_options={"secret": "x"})  # fmt: skip
