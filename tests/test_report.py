"""The job report: text, HTML (finished, failed, resumed), saved files, plot and progress."""

from __future__ import annotations

import json
import logging
from html.parser import HTMLParser

import pandas as pd
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model


class _Cells(HTMLParser):
    """Collects ``data-key`` cells and counts SVG rects."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.rects = 0
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        attrs = dict(attrs)
        if tag == "rect" and "title" not in attrs:
            self.rects += 1
        if "data-key" in attrs:
            self._key = attrs["data-key"]
            self.values[self._key] = ""

    def handle_endtag(self, tag):  # noqa: ANN001
        self._key = None

    def handle_data(self, data):  # noqa: ANN001
        if self._key is not None:
            self.values[self._key] += data


def _cells(html: str) -> _Cells:
    parser = _Cells()
    parser.feed(html)
    return parser


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture
def inputs(tmp_path, write_inputs):
    """Writes ``files`` input files of ``rows`` rows each to ``tmp_path/in``.

    Returns
    -------
    callable
        ``inputs(files=4, rows=100, bad_row=None)``; ``bad_row`` makes f3 a
        string column with that row's value not a number.
    """

    def write(files: int = 4, rows: int = 100, bad_row: int | None = None) -> None:
        frame = make_features(files * rows, seed=11)
        if bad_row is not None:
            frame = frame.astype({"f3": "str"})
            frame.loc[bad_row, "f3"] = "n/a"
        write_inputs(tmp_path / "in", frame, files)

    return write


def test_finished_job_report_html_json_and_timeline(client, tmp_path, inputs):
    inputs()
    out = tmp_path / "out"
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), keep=["id"],
                         progress=False)  # fmt: skip
    cells = _cells(result._repr_html_())
    assert cells.values["status"] == "succeeded"
    for key in ("partitions", "partitions_run", "rows_in", "rows_out", "rows_quarantined"):
        assert _number(cells.values[key]) == getattr(result, key), key
    assert _number(cells.values["wall_seconds"]) == pytest.approx(result.wall_seconds, abs=0.01)
    assert cells.values["output"] == str(out)
    stages = {r["stage"] for r in result.timeline}
    assert stages == {"read", "preprocess", "infer", "write"}
    assert len(result.timeline) == 4 * 4 and cells.rects >= 16  # one bar per stage run
    assert result.read_seconds > 0 and result.infer_seconds > 0 and result.write_seconds > 0
    assert "stages      read" in str(result)
    saved = json.loads((out / "_report.json").read_text())
    assert saved["rows_out"] == 400 and saved["status"] == "succeeded"
    assert len(saved["timeline"]) == 16 and len(saved["files"]) == 4
    page = (out / "_report.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert _number(_cells(page).values["rows_out"]) == 400
    # reports sit beside the data without disturbing Parquet readers
    assert len(pd.read_parquet(out)) == 400
    assert not (out / "_staging").exists()


def test_failed_job_carries_and_saves_its_report(client, tmp_path, inputs):
    inputs(bad_row=250)
    out = tmp_path / "out"
    with pytest.raises(dbi.PartitionError) as info:
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), keep=["id"],
                    progress=False)  # fmt: skip
    result = info.value.result
    assert result.status == "failed" and "row 50 (id=250)" in result.error
    cells = _cells(result._repr_html_())
    assert cells.values["status"] == "failed" and "id=250" in cells.values["error"]
    assert _number(cells.values["partitions"]) == 4
    assert _number(cells.values["rows_out"]) == result.rows_out < 400
    saved = json.loads((out / "_report.json").read_text())
    assert saved["status"] == "failed" and "id=250" in saved["error"]
    assert "FAILED" in str(result)


def test_resumed_job_report(client, tmp_path, inputs, write_inputs):
    inputs()
    out = tmp_path / "out"
    dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), progress=False)
    write_inputs(tmp_path / "in", make_features(100, seed=12, start_id=400), 1, first=9)
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(out), progress=False)
    cells = _cells(result._repr_html_())
    assert (_number(cells.values["partitions_run"]), _number(cells.values["partitions_skipped"])) \
        == (1, 4)  # fmt: skip
    assert _number(cells.values["rows_in"]) == result.rows_in == 500
    assert {r["partition"] for r in result.timeline} == {4}  # only the new partition ran


def test_plot_writes_a_png(client, tmp_path, inputs):
    inputs(files=3)
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                         progress=False)  # fmt: skip
    figure = result.plot(str(tmp_path / "timeline.png"))
    data = (tmp_path / "timeline.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    timeline, bars = figure.axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()  # closed in pyplot: shown once
    legend = timeline.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(timeline.get_window_extent(renderer))  # never over the bars
    labels = [t.get_window_extent(renderer) for t in bars.get_yticklabels() if t.get_text()]
    assert len(labels) == 4
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1 :])


def test_no_op_rerun_says_nothing_to_do(client, tmp_path, inputs):
    inputs()
    run = {"output": str(tmp_path / "out"), "keep": ["id"], "progress": False}
    first = dbi.run_job(str(tmp_path / "in"), tiny_model(), **run)
    assert first.rows_computed == 400
    assert first.rows_per_second == pytest.approx(400 / first.wall_seconds)
    again = dbi.run_job(str(tmp_path / "in"), tiny_model(), **run)
    assert (again.partitions_run, again.rows_computed, again.rows_out) == (0, 0, 400)
    assert again.rows_per_second == 0.0
    text = str(again)
    assert "nothing to do: 4 partitions already committed" in text and "rows/s" not in text
    cells = _cells(again._repr_html_())
    assert "rows_per_second" not in cells.values
    assert cells.values["nothing_to_do"] == "4 partitions already committed"
    assert "rows/s over 400 rows computed" in str(first)


def test_saved_report_has_no_dead_dashboard_link_and_names_start_up_phases(client, tmp_path,
                                                                          inputs):  # fmt: skip
    import dataclasses

    inputs(files=2)
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                         progress=False)  # fmt: skip
    live = dataclasses.replace(result, dashboard_link="http://127.0.0.1:8787/status")
    assert 'href="http://127.0.0.1:8787/status"' in live._repr_html_()
    assert "8787" not in live.to_html() and "dashboard" not in live.to_html()
    cells = _cells(result._repr_html_())
    parts = ("workers_ready_seconds", "checks_seconds", "model_load_wall_seconds")
    shown = sum(_number(cells.values[key]) for key in parts)
    # the three parts are the phases from the cluster to the model loaded (each shown to 0.01 s);
    # startup_seconds also holds what came before the cluster (listing, the lease, the plan)
    phases = result.phases
    assert shown == pytest.approx(phases["model loaded"] - phases["cluster"], abs=0.02)
    assert "<h4" in result.to_html()  # section titles are headings (block), not inline text


def test_output_files_do_not_double_the_part_prefix(client, tmp_path):
    frame = make_features(200, seed=3)
    (tmp_path / "in").mkdir()
    for i, half in enumerate((frame.iloc[:100], frame.iloc[100:])):
        half.to_parquet(tmp_path / "in" / f"part-{i:03d}.parquet", index=False)
    result = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                         progress=False)  # fmt: skip
    names = sorted(f["path"] for f in result.files)
    assert [n.rsplit("-", 1)[0] for n in names] == ["part-000", "part-001"], names


def test_progress_log_lines(client, tmp_path, inputs, caplog):
    inputs(files=10, rows=20)
    with caplog.at_level(logging.INFO, logger="dask_batchinfer.progress"):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"),
                    progress="log")  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "dask_batchinfer.progress"]
    assert "event=start partitions=10" in lines[0]
    assert "event=end partitions=10/10 rows=200" in lines[-1]
    progress = [line for line in lines if "event=progress" in line]
    assert 5 <= len(progress) <= 10  # every 10%
    assert all("rows_per_s=" in line and "eta_s=" in line and "infer_share=" in line
               for line in progress)  # fmt: skip


def test_progress_bar_on_stderr(client, tmp_path, inputs, capsys):
    inputs(files=5, rows=20)
    dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"), progress="bar")
    err = capsys.readouterr().err
    assert "partitions" in err and "5/5" in err and "rows/s" in err
    assert "dashboard at http://127.0.0.1" in err


def test_progress_off_and_bad_value(client, tmp_path, inputs, capsys):
    inputs(files=2, rows=20)
    dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "out"), progress=False)
    assert "partitions" not in capsys.readouterr().err
    with pytest.raises(dbi.InputError, match="progress="):
        dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "o2"),
                    progress="loud")  # fmt: skip


_SCRIPT = """\
import logging
import sys

from distributed import Client

import dask_batchinfer as dbi
from dask_batchinfer.testing import tiny_model

if __name__ == "__main__":
    if sys.argv[3] == "basicConfig":
        logging.basicConfig(level=logging.INFO, format="user %(name)s %(message)s")
    with dbi.local_cluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster):
        dbi.run_job(sys.argv[1], tiny_model(), output=sys.argv[2])
    logging.getLogger("dask_batchinfer.progress").info("after the job")
"""


@pytest.mark.slow
@pytest.mark.parametrize("logging_setup", ["none", "basicConfig"])
def test_script_outside_a_terminal_logs_progress_once(tmp_path, inputs, logging_setup):
    """``python script.py 2>err`` (cron): log lines on stderr, not doubled if logging is set up."""
    import os
    import subprocess
    import sys

    inputs(files=10, rows=20)
    (tmp_path / "script.py").write_text(_SCRIPT)
    root = os.path.dirname(os.path.dirname(dbi.__file__))  # this checkout's package
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DASK_BATCHINFER__PARTITION_SIZE": "1B",
           "PYTHONPATH": path}  # fmt: skip
    with open(tmp_path / "err", "w") as err:  # a file: not a terminal
        done = subprocess.run(
            [sys.executable, str(tmp_path / "script.py"), str(tmp_path / "in"),
             str(tmp_path / "out"), logging_setup],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
            timeout=180, cwd=tmp_path,
        )  # fmt: skip
    text = (tmp_path / "err").read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if "logger=dask_batchinfer.progress" in line
             or line.startswith("user dask_batchinfer.progress")]  # fmt: skip
    assert sum("event=start partitions=10 " in line for line in lines) == 1, text
    progress = [line for line in lines if "event=progress" in line]
    assert 5 <= len(progress) <= 10, text  # every 10%, each once
    assert len({line.split("event=")[1] for line in progress}) == len(progress), text
    assert all("partitions=" in line and "/10 " in line for line in progress), text
    assert sum("event=end partitions=10/10 rows=200" in line for line in lines) == 1, text
    # the handler is the job's only: gone after it, unless the user set logging up
    assert ("after the job" in text) == (logging_setup == "basicConfig"), text


def test_one_file_reads_in_the_singular_and_the_spec_prints_on_one_line(client, tmp_path):
    make_features(50).to_parquet(tmp_path / "one.parquet")
    run = {"output": str(tmp_path / "out"), "progress": False}
    first = dbi.run_job(str(tmp_path / "one.parquet"), tiny_model(), **run)
    assert "; 1 file" in str(first) and "1 files" not in str(first)
    again = dbi.run_job(str(tmp_path / "one.parquet"), tiny_model(), **run)
    assert "nothing to do: 1 partition already committed" in str(again)
    text = repr(tiny_model())
    assert "\n" not in text and len(text) < 200 and "0x" not in text, text
    assert text.startswith("ModelSpec('tiny-mlp-8x16-seed0', load=make_mlp")
    assert "outputs={'score': 'float32'}" in text and "inputs[8]" in text
    text = repr(dbi.sentence_encoder())
    assert "prepare=_Tokenize" in text and "0x" not in text and len(text) < 250, text


def test_timeline_labels_name_workers_whole_or_short_and_unambiguous():
    from dask_batchinfer.report.html import timeline_svg, worker_labels

    labels = worker_labels(["tcp://127.0.0.1:40123", "inproc://192.0.2.2/19988/4", "None",
                            "tcp://ip-10-0-0-5.eu-west-1.compute.internal:40123"])  # fmt: skip
    assert labels["tcp://127.0.0.1:40123"] == "127.0.0.1:40123"
    assert labels["inproc://192.0.2.2/19988/4"] == "in-process 4"
    assert labels["None"] == "client"
    assert labels["tcp://ip-10-0-0-5.eu-west-1.compute.internal:40123"].endswith("internal:40123")
    twins = worker_labels(["tcp://a-very-long-host-name-number-one.example:1",
                           "tcp://b-very-long-host-name-number-one.example:1"])  # fmt: skip
    assert len(set(twins.values())) == 2  # cut names that would collide stay whole
    svg = timeline_svg([{"stage": "infer", "partition": 0, "worker": "inproc://192.0.2.2/1/4",
                         "start": 0.0, "end": 1.0}])  # fmt: skip
    assert ">in-process 4</text>" in svg and "<title>inproc://192.0.2.2/1/4</title>" in svg
