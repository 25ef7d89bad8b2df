"""A Jupyter kernel survives its jobs: a memory-hungry partition fails the job, not the kernel.

The notebook is executed by nbclient in a real IPython kernel, as JupyterLab
runs it. In a kernel the default engine runs the model in worker processes
(``batchinfer.engine: auto``), so a worker that exceeds
``batchinfer.memory-limit`` is restarted by its nanny and the job ends in a
``PartitionError`` naming the file; the kernel's variables and the next job
carry on.
"""

from __future__ import annotations

import os

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CELLS = [
    """import os, time, dask
import dask_batchinfer as dbi
from dask_batchinfer.testing import make_features, memory_hungry_model, tiny_model
# one worker death per submission instead of four: the test's time, not its logic
dask.config.set({"batchinfer.memory-limit": "2GiB", "distributed.scheduler.allowed-failures": 0})
state = {"answer": 41}
os.makedirs("in", exist_ok=True)
for i in range(2):
    make_features(200, seed=i, start_id=200 * i).to_parquet(f"in/in-{i}.parquet")""",
    """start = time.perf_counter()
first = dbi.run_job("in", tiny_model(), output="out-1", keep=["id"], progress=False)
print("FIRST", round(time.perf_counter() - start, 2), first.rows_out)""",
    """dbi.run_job("in", memory_hungry_model(gib=5), output="out-hungry", progress=False)""",
    """start = time.perf_counter()
second = dbi.run_job("in", tiny_model(seed=1), output="out-2", keep=["id"], progress=False)
print("SECOND", round(time.perf_counter() - start, 2), second.rows_out, state["answer"] + 1)""",
    """second.plot()""",
]


@pytest.mark.slow
def test_the_kernel_survives_a_partition_that_exhausts_worker_memory(tmp_path):
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = NotebookClient(notebook, timeout=240, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    client.execute()
    outputs = [cell.outputs for cell in notebook.cells]
    errors = [o for cell in outputs for o in cell if o.output_type == "error"]
    assert [e.ename for e in errors] == ["PartitionError"], errors  # the hungry job, only
    message = errors[0].evalue
    assert "in-0.parquet" in message or "in-1.parquet" in message
    assert "killed 2 workers" in message and "batchinfer.memory-limit" in message
    texts = ["".join(o.text for o in cell if o.get("name") == "stdout") for cell in outputs]
    assert texts[1].startswith("FIRST") and texts[1].split()[2] == "400"
    # after the failure: same kernel, same variables, the next job runs on the kept workers
    assert texts[3].startswith("SECOND") and texts[3].split()[2:] == ["400", "42"]
    images = [o for o in outputs[4] if "image/png" in o.get("data", {})]
    assert len(images) == 1, outputs[4]  # result.plot() shows its figure once
