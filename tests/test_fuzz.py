"""Fuzzing: random schemas and values through validation and inference.

Whatever the input, dask-batchinfer either returns one output row per input
row (or sets rows aside, accounted for) or raises one of its own errors
(``BatchInferError``): never a bare exception from pandas, pyarrow or torch.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import dask_batchinfer as dbi
from dask_batchinfer.pipeline.infer import infer_features
from dask_batchinfer.pipeline.preprocess import preprocess_partition
from dask_batchinfer.testing import feature_columns, tiny_model

NAMES = [*feature_columns(8), "id", "text", "extra"]
KINDS = ["float32", "float64", "int64", "bool", "numeric_str", "any_str", "mixed_object",
         "datetime", "bytes", "lists", "all_null", "nullable_int", "category"]  # fmt: skip
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _column(draw, kind: str, rows: int) -> pd.Series | list:
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    if kind in ("float32", "float64"):
        return pd.Series(draw(st.lists(floats, min_size=rows, max_size=rows)), dtype=kind)
    if kind == "int64":
        values = draw(st.lists(st.integers(-(2**40), 2**40), min_size=rows, max_size=rows))
        return pd.Series(values, dtype="int64")
    if kind == "bool":
        return pd.Series(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=bool)
    if kind == "numeric_str":
        values = draw(st.lists(floats.map(str), min_size=rows, max_size=rows))
        return pd.Series(values, dtype="str")
    if kind == "any_str":
        return pd.Series(draw(st.lists(st.text(max_size=8), min_size=rows, max_size=rows)))
    if kind == "mixed_object":
        value = st.one_of(st.none(), floats, st.integers(-5, 5), st.text(max_size=4))
        return pd.Series(draw(st.lists(value, min_size=rows, max_size=rows)), dtype=object)
    if kind == "datetime":
        start = datetime.datetime(2026, 1, 1)
        return pd.Series(pd.date_range(start, periods=rows, freq="h"))
    if kind == "bytes":
        return pd.Series(draw(st.lists(st.binary(max_size=6), min_size=rows, max_size=rows)))
    if kind == "lists":
        value = st.lists(st.integers(0, 9), max_size=3)
        return pd.Series(draw(st.lists(value, min_size=rows, max_size=rows)), dtype=object)
    if kind == "all_null":
        return pd.Series([None] * rows, dtype=object)
    if kind == "nullable_int":
        value = st.one_of(st.none(), st.integers(-100, 100))
        return pd.Series(draw(st.lists(value, min_size=rows, max_size=rows)), dtype="Int64")
    categories = draw(st.lists(st.sampled_from(["1.5", "a", "2"]), min_size=rows, max_size=rows))
    return pd.Series(categories, dtype="category")


@st.composite
def frames(draw) -> pd.DataFrame:
    rows = draw(st.integers(0, 10))
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    # most examples carry every feature, so that inference itself gets exercised
    if draw(st.booleans()):
        names = list(dict.fromkeys([*feature_columns(8), *names]))
    data = {}
    for name in names:
        kind = draw(st.sampled_from(["float32"] * 6 + KINDS))
        data[name] = _column(draw, kind, rows)
    return pd.DataFrame(data, index=pd.RangeIndex(rows))


@SETTINGS
@given(frame=frames(), keep=st.lists(st.sampled_from(NAMES), unique=True, max_size=2),
       batch_size=st.integers(1, 8))  # fmt: skip
def test_predict_fails_only_with_our_errors(frame, keep, batch_size):
    import dask.dataframe as dd

    try:
        ddf = dd.from_pandas(frame, npartitions=2 if len(frame) > 1 else 1)
        ddf.compute(scheduler="sync")
    except Exception:  # noqa: BLE001 - dask cannot hold this frame (e.g. non-UTF-8 bytes
        reject()  # with convert-string on): not ours to test
    spec = tiny_model().with_options(batch_size=batch_size)
    try:
        out = dbi.predict(ddf, spec, keep=keep).compute(scheduler="sync")
    except dbi.BatchInferError as err:  # and it names what is wrong: a column or a partition
        columns = {*frame.columns, *keep, *feature_columns(8)}
        assert "partition" in str(err) or [c for c in columns if repr(c) in str(err)], str(err)
        return
    assert len(out) == len(frame)
    assert list(out.columns) == [*keep, "score"]


@SETTINGS
@given(frame=frames(), on_error=st.sampled_from(["raise", "quarantine"]))
def test_quarantine_accounts_for_every_row(frame, on_error):
    keep = [c for c in ("id", "text") if c in frame.columns]
    whole = not set(feature_columns(8)) <= set(frame.columns)  # the partition's shape is wrong
    try:
        prepared = preprocess_partition(frame, keep=keep, number=0, on_error=on_error)
        result, bad = infer_features(
            prepared.features, prepared.kept, model=tiny_model(), number=0, on_error=on_error,
            positions=prepared.positions,
        )  # fmt: skip
    except dbi.PartitionError as err:
        # quarantine sets bad rows aside and never raises for them: only a partition whose
        # columns are missing fails whole; "raise" names the partition (and row) it stops at
        assert on_error == "raise" or whole, str(err)
        assert "partition 0" in str(err)
        return
    assert len(result) + len(bad) + len(prepared.bad) == len(frame)
    assert sorted(bad["row"]) == sorted(set(bad["row"]))
    if on_error == "raise":
        assert len(bad) == 0


@SETTINGS
@given(
    option=st.sampled_from(["batch_size", "token_budget", "device", "precision"]),
    value=st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5),
                    st.booleans(), st.lists(st.integers(), max_size=2)),
)  # fmt: skip
def test_spec_options_validated(option, value):
    valid = {  # what each option accepts (tiny_model has no lengths=: no token budget)
        "batch_size": value is None or (type(value) is int and value >= 1),
        "token_budget": value is None,
        "device": value in ("auto", "cpu", "cuda") or str(value).startswith("cuda:"),
        "precision": value in ("fp32", "bf16", "fp16", "auto"),
    }[option]
    try:
        spec = tiny_model().with_options(**{option: value})
    except dbi.InputError as err:
        assert not valid, (option, value)  # refused only what is wrong, naming the option
        assert option in str(err)
        return
    assert valid, (option, value)  # nothing invalid gets through
    assert spec.token


def _four_rows():
    import dask.dataframe as dd

    frame = pd.DataFrame({f: np.zeros(4, "float32") for f in feature_columns(8)})
    return dd.from_pandas(frame, npartitions=1)


# 0 and None are valid (a count of zero, no limit); 1.0 is not a fraction below 1
@pytest.mark.parametrize("bad", [-1, 2.5, 1.0, -0.1, float("nan"), "8", True, [1]])
def test_run_job_options_validated_before_anything_runs(tmp_path, bad):
    with pytest.raises(dbi.InputError, match="max_bad_rows"):
        dbi.run_job(_four_rows(), tiny_model(), output=str(tmp_path / "o"), max_bad_rows=bad,
                    mode="resume")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_run_job_mode_validated_before_anything_runs(tmp_path):
    with pytest.raises(dbi.InputError, match="mode='sometimes'"):
        dbi.run_job(_four_rows(), tiny_model(), output=str(tmp_path / "o"), mode="sometimes")
    assert not (tmp_path / "o").exists()
