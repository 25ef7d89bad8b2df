"""A smoke test that keeps the benchmark code working (no timing assertions)."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    monkeypatch.setenv("DASK_BATCHINFER__PARTITION_SIZE", "16MiB")  # the product's default
    from benchmarks import run

    monkeypatch.setattr(run, "DATA", str(tmp_path / "data"))
    # 2 variant processes at a time: half of each run's time is waiting (start-up)
    # one workload keeps the suite's code working; `make bench-smoke` runs them all
    report = run.main(["--smoke", "--no-ray", "--jobs", "2", "--workloads", "W1-h256",
                       "--results", str(tmp_path / "results")])  # fmt: skip
    for name in ("W1-h256",):
        w = report["workloads"][name]
        assert w["ours"]["model_loads"] >= 1
        assert w["correctness"]["same_ids"] and w["correctness"]["max_abs_diff"] <= 1e-5
        assert {"ours_vs_l0", "ours_vs_l1_steady", "memory_growth"} <= set(w["ratios"])
    assert report["small_files"]["files"] == 100
    saved = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert set(saved["workloads"]) == {"W1-h256"}
    assert "| W1-h256 |" in (tmp_path / "results" / "smoke.md").read_text()
    assert (tmp_path / "results" / "smoke.png").stat().st_size > 1000
    assert sys.modules["benchmarks.workloads"]
