"""What users look at, rendered in a real browser: the saved job reports and a notebook.

Headless Chromium through selenium renders ``_report.html`` of a finished, a
failed and a resumed job, and the HTML export of notebook 02 as executed here,
and checks what a reader would: headings are headings and sit above their
content, no console errors, the numbers shown equal the result object's, one
timeline bar per partition and stage. Screenshots go to the test's temporary
folder. The rendering tests skip, saying why, where Chromium, chromedriver or
selenium is missing (``apt-get install -y chromium chromium-driver``; ``.ci/run``
installs them); the notebook is executed in any case (it is excluded from
nbmake's collection so that it runs once).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, tiny_model

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NIGHTLY = NOTEBOOKS / "02_nightly_recommendations.ipynb"
SECTIONS = ("Counts", "Wall time", "Busy time per stage (summed over partitions)")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (selenium WebDriver) that keeps the console log."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no Chromium/chromedriver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1400"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, path: Path, screenshot: Path):
    """Load ``path``, save a screenshot, and return the console's errors."""
    driver.get(path.as_uri())
    driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000  # a page was drawn, not a blank
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _heading_tops(driver, tag: str) -> list[tuple[str, float, float]]:
    """Each ``tag`` heading's text, its bottom edge and the top edge of what follows it."""
    return driver.execute_script(
        "return Array.from(document.getElementsByTagName(arguments[0])).map(h => {"
        "  const next = h.nextElementSibling;"
        "  return [h.textContent.trim(), h.getBoundingClientRect().bottom,"
        "          next ? next.getBoundingClientRect().top : Infinity];"
        "});",
        tag,
    )


def _shown(driver, key: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-key="{key}"]').text


def _check_report(driver, result: dbi.JobResult, screenshot: Path) -> None:
    from selenium.webdriver.common.by import By

    assert not _open(driver, Path(result.output) / "_report.html", screenshot)
    headings = _heading_tops(driver, "h4")
    assert set(SECTIONS) <= {text for text, _, _ in headings}
    for text, bottom, below in headings:
        assert below >= bottom - 0.5, f"{text!r} is not above its content"
    for key in ("partitions", "partitions_run", "partitions_skipped", "rows_in", "rows_out"):
        assert int(_shown(driver, key).replace(",", "")) == getattr(result, key), key
    assert _shown(driver, "status") == result.status
    bars = driver.find_elements(By.CSS_SELECTOR, 'svg rect[data-stage="infer"]')
    assert sorted(int(b.get_attribute("data-partition")) for b in bars) == sorted(
        r["partition"] for r in result.timeline if r["stage"] == "infer"
    )
    assert len(bars) == sum(r["stage"] == "infer" for r in result.timeline)
    # each lane names its worker whole (or shortened, unambiguous), left of the bars
    from dask_batchinfer.report.html import worker_labels

    workers = sorted({str(r["worker"]) for r in result.timeline})
    lanes = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg text[data-worker]')).map(t =>"
        " [t.getAttribute('data-worker'), t.textContent, t.getBBox().x + t.getBBox().width]);"
    )
    expected = worker_labels(workers)
    assert [w for w, _, _ in lanes] == workers
    for worker, text, right in lanes:
        assert text.endswith(expected[worker]) and right < 158, (worker, text, right)
    if result.timeline:  # the timeline's heading is above the chart
        assert any(text.startswith("Timeline") for text, _, _ in headings)
    links = [a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")]
    assert not [href for href in links if "status" in href]  # no dead dashboard link


def test_saved_reports_render_in_a_browser(browser, client, tmp_path, write_inputs):
    frame = make_features(400, seed=11)
    write_inputs(tmp_path / "in", frame, 4)
    run = {"keep": ["id"], "progress": False}
    finished = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "ok"), **run)
    assert len(finished.timeline) == 16
    _check_report(browser, finished, tmp_path / "finished.png")

    write_inputs(tmp_path / "in", make_features(100, seed=12, start_id=400), 1, first=9)
    resumed = dbi.run_job(str(tmp_path / "in"), tiny_model(), output=str(tmp_path / "ok"), **run)
    assert (resumed.partitions_run, resumed.partitions_skipped) == (1, 4)
    _check_report(browser, resumed, tmp_path / "resumed.png")

    bad = frame.astype({"f3": "str"})
    bad.loc[250, "f3"] = "n/a"
    write_inputs(tmp_path / "bad", bad, 4)
    with pytest.raises(dbi.PartitionError) as info:
        dbi.run_job(str(tmp_path / "bad"), tiny_model(), output=str(tmp_path / "failed"), **run)
    failed = info.value.result
    _check_report(browser, failed, tmp_path / "failed.png")
    assert "id=250" in _shown(browser, "error")


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """Notebook 02 executed as Jupyter would (a kernel, widgets kept), and its folder."""
    import nbformat
    from nbclient import NotebookClient

    folder = tmp_path_factory.mktemp("nightly")
    notebook = nbformat.read(NIGHTLY, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}},
                            store_widget_state=True)  # fmt: skip
    client.execute()  # raises CellExecutionError, naming the cell, if a cell fails
    return notebook, folder


def test_notebook_prints_plain_values(nightly):
    notebook, _ = nightly
    texts = ["".join(o.get("text", "")) for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]  # fmt: skip
    assert not [t for t in texts if "np.int" in t or "np.float" in t], texts


def test_notebooks_hold_no_shell_residue():
    """A markdown cell that starts with ``!`` or ``%`` renders as literal text."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            text = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                assert not text.startswith(("!", "%", "$ ")), f"{path.name} cell {i}: {text[:40]!r}"


def test_notebook_shows_the_dashboard_in_its_widget_not_on_stderr(nightly):
    notebook, _ = nightly
    stderr = [o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("name") == "stderr"]  # fmt: skip
    assert not [text for text in stderr if "dashboard" in text], stderr
    widgets = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = [w["state"].get("value", "") for w in widgets.values()]
    assert [v for v in values if isinstance(v, str) and 'href="http' in v and "dashboard" in v]


def test_notebook_renders_in_a_browser(nightly, browser, tmp_path):
    from nbconvert import HTMLExporter
    from selenium.webdriver.common.by import By

    notebook, _ = nightly
    notebook.metadata.pop("widgets", None)  # live widgets need the widget manager's CDN
    empty = "data:text/javascript,"  # no math, no widgets: no CDN scripts (offline machine)
    exporter = HTMLExporter(template_name="lab", mathjax_url=empty, require_js_url=empty)
    body, _ = exporter.from_notebook_node(notebook)
    page = tmp_path / "nightly.html"
    page.write_text(body)
    assert not _open(browser, page, tmp_path / "nightly.png")
    titles = [h.text.rstrip("¶") for h in browser.find_elements(By.CSS_SELECTOR, "h1")]
    assert titles == ["Nightly recommendations, with an incremental run"]
    sections = [h.text.rstrip("¶") for h in browser.find_elements(By.CSS_SELECTOR, "h2")]
    assert sections[:4] == [
        "1. A two-tower model",
        "2. Day 1: the users we have",
        "3. Day 2: new users only",
        "4. What a scheduler sees",
    ]
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "!#" not in text and "!Check" not in text
    # the report of night 1, rendered in its cell: headings above their tables
    headings = _heading_tops(browser, "h4")
    assert set(SECTIONS) <= {t for t, _, _ in headings}
    assert all(below >= bottom - 0.5 for _, bottom, below in headings)
    assert os.path.getsize(tmp_path / "nightly.png") > 50_000
