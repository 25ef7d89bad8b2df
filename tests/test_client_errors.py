"""Errors raised on the client point at the fix, and a notebook shows them short.

Every case of the catalogue below is a mistake a user makes before any task
runs. Each must (1) say what is wrong where the user can see it (the file, the
columns it really has, the closest name) and (2) hide the package's own frames
from IPython's traceback (``__tracebackhide__``), so that a notebook shows the
user's line and the line that raised; ``%xmode Verbose`` with
``InteractiveTB.skip_hidden = False`` shows everything.
"""

from __future__ import annotations

import os
import sys

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model

PACKAGE = os.path.dirname(dbi.__file__)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An input whose id column is ``user_id`` (one file ``in.parquet``)."""
    folder = tmp_path_factory.mktemp("client-errors")
    make_features(50).rename(columns={"id": "user_id"}).to_parquet(folder / "in.parquet")
    return folder


def _typo_model():
    return tiny_model().with_options(input_columns=["f0", "f1", "f2", "f_3", "f4", "f5", "f6"])


def _catalogue(folder):
    """(name, call, substrings the message must hold)."""
    source, out = str(folder / "in.parquet"), str(folder / "out")
    run = dict(output=out, progress=False)
    columns = "['user_id', 'f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7']"
    return [
        ("input column", lambda: dbi.run_job(source, _typo_model(), **run),
         ["in.parquet", "'f_3'", "did you mean 'f3'", columns]),
        ("keep", lambda: dbi.run_job(source, tiny_model(), keep=["userid"], **run),
         ["keep=['userid']", "in.parquet", "did you mean 'user_id'", columns]),
        ("partition_on", lambda: dbi.run_job(source, tiny_model(), partition_on="scor", **run),
         ["partition_on=['scor']", "did you mean 'score'", columns]),
        ("columns", lambda: dbi.run_job(source, tiny_model(), columns=["f8"], **run),
         ["columns=['f8']", "in.parquet", columns]),
        ("filters", lambda: dbi.run_job(source, tiny_model(), filters=[("f_7", ">", 0)], **run),
         ["'f_7'", "did you mean 'f7'", "in.parquet"]),
        ("on_error", lambda: dbi.run_job(source, tiny_model(), on_error="skip", **run),
         ["on_error", "'skip'", "quarantine"]),
        ("missing input", lambda: dbi.run_job(str(folder / "nope"), tiny_model(), **run),
         ["nope"]),
        ("not a spec", lambda: dbi.run_job(source, object(), **run), ["ModelSpec"]),
        ("batch size", lambda: tiny_model().with_options(batch_size=-3),
         ["batch_size=-3", "positive integer"]),
        ("plan", lambda: dbi.plan(source, _typo_model()),
         ["in.parquet", "did you mean 'f3'"]),
        ("plan partition_on", lambda: dbi.plan(source, tiny_model(), partition_on=["scor"]),
         ["partition_on=['scor']", "did you mean 'score'"]),
        ("predict keep", lambda: dbi.predict(_frame(folder), tiny_model(), keep=["userid"]),
         ["did you mean 'user_id'"]),
    ]  # fmt: skip


def _frame(folder):
    import dask.dataframe as dd
    import pandas as pd

    return dd.from_pandas(pd.read_parquet(folder / "in.parquet"), npartitions=2)


def _frames(err):
    tb, frames = err.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


@pytest.mark.parametrize("case", range(12))
def test_client_errors_name_the_fix_and_hide_the_package_frames(folder, case):
    name, call, expected = _catalogue(folder)[case]
    with pytest.raises((dbi.InputError, dbi.ModelLoadError)) as caught:
        call()
    message = str(caught.value)
    for text in expected:
        assert text in message, (name, text, message)
    inside = [f for f in _frames(caught.value)[:-1] if f.f_code.co_filename.startswith(PACKAGE)]
    shown = [f"{f.f_code.co_filename}:{f.f_code.co_name}" for f in inside
             if not f.f_locals.get("__tracebackhide__")]  # fmt: skip
    assert not shown, (name, shown)  # every package frame but the raising one is hidden


def test_a_notebook_traceback_shows_the_users_line_and_the_error(folder):
    from IPython.core.ultratb import VerboseTB

    with pytest.raises(dbi.InputError) as caught:
        dbi.run_job(str(folder / "in.parquet"), tiny_model(), keep=["userid"],
                    output=str(folder / "out"), progress=False)  # fmt: skip
    err = caught.value
    text = VerboseTB(theme_name="nocolor").text(type(err), err, err.__traceback__)
    assert "skipping hidden" in text and "did you mean 'user_id'" in text
    assert "secrets.py" not in text and "job/run.py" not in text
    full = VerboseTB(theme_name="nocolor")
    full.skip_hidden = False
    assert "secrets.py" in full.text(type(err), err, err.__traceback__)  # one setting away
    assert sys.modules["dask_batchinfer"]  # (the package stays importable after)


def test_a_script_without_the_main_guard_is_told_the_fix(tmp_path):
    """Worker processes import the script again (spawn): starting them from unguarded
    top-level code is refused at once, naming the line and the guard, not a lease error."""
    import subprocess

    body = (
        "import dask.dataframe as dd\n"
        "import dask_batchinfer as dbi\n"
        "from dask_batchinfer.testing import make_features, tiny_model\n"
        "ddf = dd.from_pandas(make_features(100), npartitions=2)\n"
        "{indent}print(dbi.run_job(ddf, tiny_model(), output='out', progress=False).rows_out)\n"
    )
    root = os.path.dirname(PACKAGE)
    outcomes = {}
    guard = 'if __name__ == "__main__":\n    '
    for name, text in (("bare", body.format(indent="")), ("guarded", body.format(indent=guard))):
        (tmp_path / f"{name}.py").write_text(text)
        outcomes[name] = subprocess.run(
            [sys.executable, f"{name}.py"], capture_output=True, text=True, timeout=180,
            cwd=tmp_path / ".", env={**os.environ, "PYTHONPATH": root},
        )  # fmt: skip
    bare = outcomes["bare"]
    assert bare.returncode != 0
    assert "line 5" in bare.stderr and 'if __name__ == "__main__":' in bare.stderr
    assert "OutputLockedError" not in bare.stderr and "Nanny failed" not in bare.stderr
    assert outcomes["guarded"].returncode == 0 and outcomes["guarded"].stdout.strip() == "100"
