"""The result of a job: counts, timings and where the output is."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["JobResult"]


@dataclasses.dataclass
class JobResult:
    """What :func:`~dask_batchinfer.run_job` did.

    Attributes
    ----------
    output : str
        Where the Parquet dataset was written.
    model : str
        The model's name.
    partitions : int
        Input partitions processed.
    rows_in, rows_out : int
        Rows read and rows written.
    wall_seconds : float
        From the call to the committed manifest, cluster start included.
    model_load_seconds : dict of str to float
        Model load time on each worker that loaded it.
    model_loads : dict of str to int
        How many times each worker loaded the model (1 is the goal).
    files : list of dict
        Committed files: ``{"path", "rows", "partition"}``, paths relative to ``output``.
    infer_seconds, write_seconds : float
        Summed over partitions: time in preprocessing + inference, and in
        writing + committing.
    """

    output: str
    model: str
    partitions: int
    rows_in: int
    rows_out: int
    wall_seconds: float
    model_load_seconds: dict[str, float]
    model_loads: dict[str, int]
    files: list[dict[str, Any]]
    infer_seconds: float = 0.0
    write_seconds: float = 0.0
    started: str = ""
    finished: str = ""

    @property
    def rows_per_second(self) -> float:
        """Rows written per second of wall time."""
        return self.rows_out / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a plain dict (JSON-ready)."""
        return {
            "output": self.output,
            "model": self.model,
            "partitions": self.partitions,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "wall_seconds": round(self.wall_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "model_load_seconds": {w: round(s, 3) for w, s in self.model_load_seconds.items()},
            "model_loads": dict(self.model_loads),
            "files": len(self.files),
        }

    def __str__(self) -> str:
        loads = ", ".join(
            f"{worker} {seconds:.2f}s"
            for worker, seconds in sorted(self.model_load_seconds.items())
        )
        return "\n".join(
            [
                f"dask-batchinfer job: {self.model}",
                f"  output      {self.output}",
                f"  partitions  {self.partitions} ({len(self.files)} files)",
                f"  rows        {self.rows_in:,} in, {self.rows_out:,} out",
                f"  wall time   {self.wall_seconds:.2f} s  ({self.rows_per_second:,.0f} rows/s)",
                f"  model load  {loads or 'n/a'}",
            ]
        )
