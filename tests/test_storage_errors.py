"""A storage outage while reading input is a storage error, not a bad input file.

Only a file that is not valid Parquet is an ``InputError`` (exit code 2,
"usage error"); an outage keeps its ``OSError`` type and the CLI exits 1
("job failed"), naming the file either way.
"""

from __future__ import annotations

import json

import pytest
from s3faults import FaultProxy

import dask_batchinfer as dbi
from dask_batchinfer.cli.main import EXIT_FAILED, main
from dask_batchinfer.testing import make_features, tiny_model


def _options(proxy: FaultProxy) -> dict:
    # botocore's own retries off, so that every failed GET reaches our retry layer
    return {"endpoint_url": proxy.url, "config_kwargs": {"retries": {"total_max_attempts": 1}}}


def _outage(path: str) -> bool:
    return "/in/in-002.parquet" in path  # every read of this object's data fails


def test_exhausted_read_retries_keep_their_storage_type(client, s3, s3_server, write_inputs):
    fs, _ = s3
    write_inputs("batchinfer-test/in", make_features(400, seed=13), files=4, fs=fs)
    with FaultProxy(s3_server, put_failure_rate=0.0, fail_get=_outage) as proxy:
        options = _options(proxy)
        with pytest.raises(OSError, match=r"in-002\.parquet") as info:
            dbi.run_job("s3://batchinfer-test/in", tiny_model(),
                        output="s3://batchinfer-test/out", storage_options=options,
                        progress=False)  # fmt: skip
    assert not isinstance(info.value, dbi.InputError), repr(info.value)
    assert proxy.failed_gets >= 6  # our retries, all spent
    assert info.value.result.status == "failed"  # the report names the failure too
    fs.invalidate_cache()
    assert not fs.exists("batchinfer-test/out/_SUCCESS")


def test_cli_exits_job_failed_on_an_outage(client, s3, s3_server, write_inputs, capsys):
    fs, _ = s3
    write_inputs("batchinfer-test/in", make_features(400, seed=13), files=4, fs=fs)
    with FaultProxy(s3_server, put_failure_rate=0.0, fail_get=_outage) as proxy:
        code = main(["run", "--input", "s3://batchinfer-test/in",
                     "--output", "s3://batchinfer-test/out",
                     "--model", "dask_batchinfer.testing:tiny_model",
                     "--scheduler", client.scheduler.address, "--quiet",
                     "--storage-options", json.dumps(_options(proxy))])  # fmt: skip
    assert code == EXIT_FAILED, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "job failed" in err and "in-002.parquet" in err
