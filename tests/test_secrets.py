"""Credentials passed in storage_options never show in graphs, logs, errors or outputs."""

from __future__ import annotations

import logging
import traceback

import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

import dask_batchinfer as dbi
from dask_batchinfer import secrets
from dask_batchinfer.testing import make_features, tiny_model

CANARY_KEY = "AKIACANARY7QX2ZL0KEY"
CANARY_SECRET = "canary-secret-4f1d9a7be2c0"
CANARY_TOKEN = "canary-session-token-9e8d7c"
CONTROL = "us-canary-control-1"  # a public option: it does travel with the tasks


class GraphScanner(SchedulerPlugin):
    """Pickles every task the scheduler receives and counts the needles in the bytes."""

    name = "graph-scanner"

    def __init__(self, needles: list[str]) -> None:
        self.needles = needles
        self.found = dict.fromkeys(needles, 0)
        self.tasks = 0

    def update_graph(self, scheduler, *, tasks, **kwargs):  # noqa: ANN001
        from distributed.protocol import pickle as dpickle

        for key in tasks:
            state = scheduler.tasks.get(key)
            if state is None or state.run_spec is None:
                continue
            self.tasks += 1
            blob = dpickle.dumps(state.run_spec) + repr(state.run_spec).encode()
            for needle in self.needles:
                self.found[needle] += blob.count(needle.encode())


def _options(endpoint: str) -> dict:
    return {
        "key": CANARY_KEY,
        "secret": CANARY_SECRET,
        "token": CANARY_TOKEN,
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": CONTROL},
    }


def _scan_bucket(fs, needles) -> dict[str, int]:
    counts = dict.fromkeys(needles, 0)
    for path in fs.find("batchinfer-test"):
        data = fs.cat_file(path)
        for needle in needles:
            counts[needle] += data.count(needle.encode())
    return counts


def test_split_and_resolve_round_trip():
    options = _options("http://x")
    public, secret = secrets.split(options)
    assert public == {"endpoint_url": "http://x", "client_kwargs": {"region_name": CONTROL}}
    assert secret == {"key": CANARY_KEY, "secret": CANARY_SECRET, "token": CANARY_TOKEN}
    inner_public, inner_secret = secrets.split(
        {"client_kwargs": {"aws_secret_access_key": "s3cr3t!", "a": 1}}
    )
    assert inner_public == {"client_kwargs": {"a": 1}}
    assert inner_secret == {"client_kwargs": {"aws_secret_access_key": "s3cr3t!"}}
    with pytest.raises(RuntimeError, match="not registered on this worker"):
        secrets.resolve({**public, secrets.REFERENCE: "missing"})
    secrets.remember(secret)
    assert CANARY_SECRET not in secrets.redact(f"failed with secret={CANARY_SECRET} here")
    assert secrets.redact("{'token': 'abc123xyz'}") == "{'token': '***'}"


def test_canary_credentials_appear_nowhere(client, s3, tmp_path, caplog, write_inputs):
    fs, base = s3
    endpoint = base["endpoint_url"]
    needles = [CANARY_KEY, CANARY_SECRET, CANARY_TOKEN, CONTROL]
    scanner = GraphScanner(needles)
    client.register_plugin(scanner)
    write_inputs("batchinfer-test/in", make_features(200, seed=9), 2, fs=fs)
    spec = tiny_model()
    texts: list[str] = []
    try:
        # Everything of ours and of distributed down to DEBUG; the rest at INFO
        # (botocore's own DEBUG wire log prints signed request headers, which
        # name the access key id and session token: keep it off in production).
        with (
            caplog.at_level(logging.INFO),
            caplog.at_level(logging.DEBUG, logger="dask_batchinfer"),
            caplog.at_level(logging.DEBUG, logger="distributed"),
        ):
            result = dbi.run_job("s3://batchinfer-test/in", spec, output="s3://batchinfer-test/out",
                                 keep=["id"], storage_options=_options(endpoint))  # fmt: skip
            texts += [str(result), repr(result), str(result.summary())]
            # a plan takes the same credentials, through the same plugin
            planned = dbi.plan("s3://batchinfer-test/in", spec, keep=["id"],
                               storage_options=_options(endpoint))  # fmt: skip
            assert planned.rows == 200 and planned.rows_exact
            texts += [str(planned), repr(planned)]
            # a forced failure: a row the model cannot read, in a third file
            broken = make_features(100, seed=10, start_id=200).astype({"f3": "str"})
            broken.loc[broken.index[7], "f3"] = "n/a"
            write_inputs("batchinfer-test/in", broken, 1, fs=fs, first=2)
            with pytest.raises(dbi.PartitionError) as info:
                dbi.run_job("s3://batchinfer-test/in", spec, output="s3://batchinfer-test/out",
                            keep=["id"], storage_options=_options(endpoint))  # fmt: skip
            texts += ["".join(traceback.format_exception(info.value))]
            # and a storage failure: a missing bucket, named in the error
            with pytest.raises(Exception) as missing:
                dbi.run_job("s3://batchinfer-test/in", spec, output="s3://no-such-bucket-x/out",
                            storage_options=_options(endpoint))  # fmt: skip
            texts += ["".join(traceback.format_exception(missing.value))]
        found = client.run_on_scheduler(
            lambda dask_scheduler: (
                dask_scheduler.plugins["graph-scanner"].found,
                dask_scheduler.plugins["graph-scanner"].tasks,
            )
        )
    finally:
        client.unregister_scheduler_plugin("graph-scanner")
    in_graph, tasks = found
    assert tasks > 0 and in_graph[CONTROL] > 0  # the scanner sees storage options in tasks
    assert "no-such-bucket-x" in texts[-1]
    texts += [r.getMessage() for r in caplog.records]
    for worker_logs in client.get_worker_logs().values():
        texts += [message for _, message in worker_logs]
    texts += [message for _, message in client.get_scheduler_logs()]
    assert any("Compute Failed" in t for t in texts)  # the failure was logged with its task
    stored = _scan_bucket(fs, needles)
    for secret in (CANARY_KEY, CANARY_SECRET, CANARY_TOKEN):
        assert in_graph[secret] == 0, f"{secret} in the task graph"
        assert stored[secret] == 0, f"{secret} in the output (manifest, markers, data)"
        assert not [t for t in texts if secret in t], f"{secret} in an error, log or report"
    # and the credentials do not linger on the workers after the jobs
    assert all(v == {} for v in client.run(lambda: dict(secrets._vault)).values())
