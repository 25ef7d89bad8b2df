"""S3 failures: injected 500s are retried and counted; permanent errors fail fast."""

from __future__ import annotations

import pytest
from s3faults import FaultProxy

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model


def test_injected_put_failures_are_retried(client, s3, s3_server, write_inputs):
    fs, _ = s3
    write_inputs("batchinfer-test/in", make_features(1000, seed=11), 8, fs=fs)

    with FaultProxy(s3_server, put_failure_rate=0.3, seed=1) as proxy:
        # botocore's own retries off, so every injected 500 reaches our retry layer
        options = {
            "endpoint_url": proxy.url,
            "config_kwargs": {"retries": {"total_max_attempts": 1}},
        }
        result = dbi.run_job(
            "s3://batchinfer-test/in",
            tiny_model(seed=3),
            output="s3://batchinfer-test/out",
            keep=["id"],
            storage_options=options,
        )
    assert proxy.injected >= 5, (proxy.puts, proxy.injected)
    assert result.retries >= proxy.injected - 2  # a few faults hit client-side calls
    assert result.retries > 0 and "retries" in str(result)
    fs.invalidate_cache()
    back = dbi.read_output(
        "s3://batchinfer-test/out", storage_options={"endpoint_url": s3_server}
    ).compute()
    assert sorted(back["id"]) == list(range(1000))
    assert not [p for p in fs.find("batchinfer-test/out") if "/_staging/" in p]


def test_missing_bucket_fails_fast_naming_it(client, s3):
    _, options = s3
    df = make_features(10)
    import dask.dataframe as dd

    with pytest.raises(FileNotFoundError, match="no-such-bucket-xyz/out"):
        dbi.run_job(
            dd.from_pandas(df, npartitions=2),
            tiny_model(),
            output="s3://no-such-bucket-xyz/out",
            storage_options=options,
        )
