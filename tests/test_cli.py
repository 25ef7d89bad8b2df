"""The dask-batchinfer command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dask_batchinfer.testing import make_features


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "dask_batchinfer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_help_explains_every_option():
    out = _cli("run", "--help").stdout
    for option in (
        "--input",
        "--output",
        "--model",
        "--scheduler",
        "--batch-size",
        "--keep",
        "--partition-on",
        "--preprocess",
        "--mode",
        "--cluster",
        "--pool-resources",
    ):
        assert option in out
    assert (
        "module:attribute" in out.replace("MODULE:ATTR", "module:attribute").lower()
        or "mypkg" in out
    )
    assert "demo" in _cli("--help").stdout


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [[], ["--cluster", "mixed", "--cpu-workers", "1"]])
def test_run_on_parquet_starts_its_own_cluster(tmp_path, cluster):
    frame = make_features(500, seed=9)
    (tmp_path / "in").mkdir()
    frame.iloc[:200].to_parquet(tmp_path / "in" / "a.parquet", index=False)
    frame.iloc[200:].to_parquet(tmp_path / "in" / "b.parquet", index=False)
    done = _cli(
        "run",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        "dask_batchinfer.testing:tiny_model",
        "--keep",
        "id",
        "--batch-size",
        "64",
        "--json",
        *cluster,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("event=end partitions=2/2 ") == 1, done.stderr  # logged, once
    summary = json.loads(done.stdout)
    assert (summary["rows_in"], summary["rows_out"], summary["partitions"]) == (500, 500, 2)
    assert set(summary["model_loads"].values()) == {1}  # once per model worker
    if cluster:  # mixed: only the one model worker loads it
        assert len(summary["model_loads"]) == 1
    back = pd.read_parquet(tmp_path / "out")
    assert sorted(back["id"]) == list(range(500))
    assert np.isfinite(back["score"]).all()


def test_usage_errors_exit_2_with_a_message(tmp_path):
    done = _cli(
        "run",
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "no_such_module_xyz:spec",
    )
    assert done.returncode == 2
    assert "no_such_module_xyz" in done.stderr and "Traceback" not in done.stderr
    done = _cli(
        "run",
        "--input",
        str(tmp_path / "missing"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "dask_batchinfer.testing:tiny_model",
    )
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert _cli("run").returncode == 2  # argparse: required options missing


@pytest.mark.parametrize("kind", ["toml", "yaml"])
def test_job_file_round_trip_and_command_line_wins(cluster, tmp_path, kind, write_inputs):
    write_inputs(tmp_path / "in", make_features(300, seed=14), 3)
    options = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out-file"),
               "model": "dask_batchinfer.testing:tiny_model", "keep": ["id"],
               "batch_size": 32, "on_error": "quarantine", "progress": "log",
               "scheduler": cluster.scheduler_address}  # fmt: skip
    if kind == "toml":
        lines = [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        (tmp_path / "job.toml").write_text("\n".join(lines) + "\n")
    else:
        import yaml

        (tmp_path / "job.yaml").write_text(yaml.safe_dump(options))
    done = _cli("run", "--job", str(tmp_path / f"job.{kind}"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["output"] == str(tmp_path / "out-file") and summary["rows_out"] == 300
    assert set(summary["batch_size"].values()) == {32}
    assert "event=end partitions=3/3" in done.stderr  # progress=log from the file
    assert "event=finished status=succeeded" in done.stderr
    # an option on the command line wins over the file
    done = _cli("run", "--job", str(tmp_path / f"job.{kind}"), "--output",
                str(tmp_path / "out-cli"), "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out-cli" / "_SUCCESS").exists() and done.stdout == ""
    assert "event=" not in done.stderr  # --quiet


def test_job_file_errors_exit_2(tmp_path):
    (tmp_path / "job.toml").write_text('input = "x"\nouptut = "y"\n')
    done = _cli("run", "--job", str(tmp_path / "job.toml"))
    assert done.returncode == 2 and "ouptut" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "bad.toml").write_text("input = \n")
    done = _cli("run", "--job", str(tmp_path / "bad.toml"))
    assert done.returncode == 2 and "cannot parse" in done.stderr
    done = _cli("run", "--input", "x")
    assert done.returncode == 2 and "--output" in done.stderr and "--model" in done.stderr


def test_status_of_complete_partial_failed_and_missing_outputs(cluster, tmp_path, write_inputs):
    write_inputs(tmp_path / "in", make_features(300, seed=14), 3)
    out = tmp_path / "out"
    run = ["run", "--input", str(tmp_path / "in"), "--output", str(out), "--model",
           "dask_batchinfer.testing:tiny_model", "--scheduler", cluster.scheduler_address,
           "--quiet"]  # fmt: skip
    assert _cli(*run).returncode == 0
    done = _cli("status", str(out), "--json")
    summary = json.loads(done.stdout)
    assert done.returncode == 0 and summary["state"] == "complete"
    assert (summary["partitions_committed"], summary["rows_out"]) == (3, 300)
    assert summary["last_run"]["status"] == "succeeded"
    assert "COMPLETE" in _cli("status", str(out)).stdout
    (out / "_SUCCESS").unlink()  # as if the driver died before the manifest
    done = _cli("status", str(out))
    assert done.returncode == 4 and "PARTIAL" in done.stdout and "3 partitions" in done.stdout
    bad = make_features(100, seed=15, start_id=300).astype({"f2": "str"})
    bad.loc[bad.index[4], "f2"] = "oops"
    write_inputs(tmp_path / "in", bad, 1, first=3)
    assert _cli(*run).returncode == 1
    done = _cli("status", str(out))
    assert done.returncode == 4 and "FAILED" in done.stdout and "at row 4" in done.stdout
    assert _cli("status", str(tmp_path / "nothing")).returncode == 2


def test_dry_run_prints_a_plan_and_writes_nothing(cluster, tmp_path, write_inputs):
    write_inputs(tmp_path / "in" / "day=a", make_features(100, seed=13), 1)
    write_inputs(tmp_path / "in" / "day=b", make_features(300, seed=14), 3)
    done = _cli("run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--model", "dask_batchinfer.testing:tiny_model", "--scheduler",
                cluster.scheduler_address, "--dry-run", "--json", "--keep", "id", "day",
                "--filters", '[["day", "==", "b"]]')  # fmt: skip
    assert done.returncode == 0, done.stderr
    planned = json.loads(done.stdout)
    assert planned["partitions"] == 3 and planned["rows"] == 300  # the job's window only
    assert str(planned["recommended_batch_size"]) in planned["batch_sizes"]
    assert not (tmp_path / "out").exists()


def test_errors_name_command_line_flags_not_python_keywords(tmp_path, capsys):
    """The command line's errors say --keep, --format, --no-pools: what the user types."""
    from dask_batchinfer.cli.main import as_cli, main

    make_features(40).rename(columns={"id": "user_id"}).to_parquet(tmp_path / "in.parquet")
    args = ["run", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
            "--model", "dask_batchinfer.testing:tiny_model", "--cluster", "auto"]  # fmt: skip
    assert main([*args, "--keep", "userid"]) == 2
    err = capsys.readouterr().err
    assert "--keep userid:" in err and "did you mean 'user_id'" in err and "keep=" not in err
    (tmp_path / "csv").mkdir()
    make_features(10).to_csv(tmp_path / "csv" / "a.csv", index=False)
    args[2] = str(tmp_path / "csv")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--format csv" in err and "format=" not in err, err
    # the cluster without pools the user named; the switch the message names exists
    message = "the cluster lacks the model pool: ... (or pass pools=False to run every stage)"
    assert "--no-pools" in as_cli(message)
    assert as_cli("ModelSpec(batch_size=-3) must be") == "ModelSpec(batch_size=-3) must be"
    args[2] = str(tmp_path / "in.parquet")
    assert main([*args, "--no-pools", "--quiet"]) == 0
    assert len(pd.read_parquet(tmp_path / "out")) == 40


def test_pool_errors_say_which_pools_are_missing(client):
    import dask_batchinfer as dbi
    from dask_batchinfer.cluster.local import detect_pools

    with pytest.raises(dbi.InputError, match="lacks the preprocessing and the model pools"):
        detect_pools(client, {"preprocess": "CPU", "model": "GPU"})
