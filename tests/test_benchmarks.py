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


def test_image_suite_variants_agree_and_report(client, tmp_path, monkeypatch):
    """The image suite's code (``benchmarks/images.py``) in this process: the same PNGs through
    dask-batchinfer (on the session's cluster) and the hand loop give the same probabilities,
    and the report names both with their ratios."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import images

    images.write_pngs(str(tmp_path / "png"), 60)
    got = {}
    for variant in ("ours", "hand"):
        out = str(tmp_path / f"png-{variant}-60")
        assert images.VARIANTS[variant](str(tmp_path / "png"), out)["rows"] == 60
        got[variant] = images._outputs(out)
    assert got["ours"].shape == (60, 10)
    assert abs(got["ours"] - got["hand"]).max() < 1e-5
    run = {"cold_seconds": 2.0, "peak_pss": 2**30, "rows": 60}
    runs = {(v, n): [dict(run, rows=n)] for v in ("ours", "hand") for n in (30, 60)}
    monkeypatch.setattr(images, "SIZES", {"smoke": (30, 60)})
    args = images.argparse.Namespace(mode="smoke")
    report = images._report(args, 1, ["ours", "hand"], runs, str(tmp_path))
    assert report["max_abs_diff_vs_hand"]["ours"] < 1e-5
    images._write(report, str(tmp_path / "results"))
    text = (tmp_path / "results" / "images-smoke.md").read_text()
    assert "| dask-batchinfer |" in text and "dask-batchinfer / hand loop" in text


def test_text_suite_careful_loop_agrees_with_ours_and_reports(tmp_path, monkeypatch):
    """``benchmarks/text.py``: the careful loop (``encode`` per file, the text L1) and our
    pipeline (``run_model``, what a worker runs) give the same vectors; the report names
    every system with its ratios against ours."""
    import pandas as pd

    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import text, variant, workloads
    from benchmarks.workloads import WORKLOADS
    from dask_batchinfer.pipeline.infer import run_model

    workload = WORKLOADS[text.WORKLOAD]
    assert workload.hand_loop == "encode"
    workload.write(str(tmp_path / "in"), 40, 20)
    done = variant.l1(workload, str(tmp_path / "in"), str(tmp_path / "text-l1-40"))
    assert done["rows"] == 40 and len(os.listdir(tmp_path / "text-l1-40")) == 2
    frame = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "in").iterdir())])
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ours = run_model(workload.spec(), frame.reset_index(drop=True))
    got = np.asarray(ours["embedding"].tolist(), dtype=np.float32)
    (tmp_path / "text-ours-40").mkdir()
    pq.write_table(pa.table({"id": frame["id"].to_numpy(), "out": workloads.fixed_size_lists(got)}),
                   tmp_path / "text-ours-40" / "part.parquet")  # fmt: skip
    careful = text._vectors(str(tmp_path / "text-l1-40"))
    assert careful.shape == got.shape == (40, 384)
    assert abs(careful - got).max() < 1e-5
    monkeypatch.setattr(text, "SIZES", {"smoke": (20, 40)})
    runs = {(v, n): [{"cold_seconds": 2.0 + n / (10 if v == "ours" else 8), "rows": n,
                      "peak_pss": 2**30}] for v in ("ours", "l1") for n in (20, 40)}  # fmt: skip
    args = text.argparse.Namespace(mode="smoke", note=None)
    report = text._report(args, 1, ["ours", "l1"], runs, str(tmp_path))
    assert report["variants"]["ours"]["steady_docs_per_s"] == pytest.approx(10)
    assert report["max_abs_diff_vs_l1"]["ours"] < 1e-5
    text._write(report, str(tmp_path / "results"))
    shown = (tmp_path / "results" / "text-smoke.md").read_text()
    assert "| dask-batchinfer |" in shown and "1.25x its docs/s steady" in shown


@pytest.mark.slow
def test_startup_profile_lists_every_phase_in_order(tmp_path, monkeypatch, capsys):
    """``benchmarks/profile_startup.py``: a cold job in its own process, phase by phase."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks import profile_startup, run

    monkeypatch.setattr(run, "DATA", str(tmp_path / "data"))
    summary = profile_startup.main(["--rows", "4000", "--files", "2", "--reps", "1", "--no-loop",
                                    "--second-job"])  # fmt: skip
    phases = list(summary["phases"])
    order = ["dask_batchinfer imported", "run_job: cluster", "run_job: model loaded",
             "run_job: first commit", "run_job: report saved", "run_job returned",
             "process exited"]  # fmt: skip
    assert [p for p in phases if p in order] == order
    assert "second job: model loaded (from its call)" in phases
    assert "run_job: last commit" in capsys.readouterr().out
