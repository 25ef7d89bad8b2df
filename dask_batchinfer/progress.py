"""Live progress of a job: partitions committed of total, rows/s, ETA, time per stage.

Three displays, picked by ``run_job(progress=...)`` (default ``"auto"``):

- ``"bar"``: a tqdm bar; in Jupyter a widget (when ipywidgets is installed),
  in a terminal a text bar on stderr.
- ``"log"``: a ``key=value`` log line (logger ``dask_batchinfer.progress``)
  at every 10% and at the end: readable in CI logs and easy to grep.
- ``False``/``"off"``: nothing.

``"auto"`` is a bar in Jupyter or a terminal, and log lines otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError

if TYPE_CHECKING:
    from dask_batchinfer.pipeline.stages import PartitionStats

__all__ = ["Progress", "make_progress", "resolve_mode"]

logger = logging.getLogger("dask_batchinfer.progress")
MODES = ("auto", "bar", "log", "off")


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def resolve_mode(progress: bool | str | None) -> str:
    """The display for ``run_job(progress=...)``: ``"bar"``, ``"log"`` or ``"off"``."""
    if progress is None:
        progress = _config.get("progress")
    if isinstance(progress, str) and progress.lower() in ("false", "0", "no", "none", "quiet"):
        progress = False
    if progress is True:
        progress = "auto"
    if progress is False or progress is None:
        return "off"
    if progress not in MODES:
        raise InputError(f"progress={progress!r}: expected True, False or one of {MODES}")
    if progress != "auto":
        return str(progress)
    if _in_notebook() or sys.stderr.isatty():
        return "bar"
    return "log"


class Progress:
    """Counts committed partitions and shows them (see the module docstring)."""

    def __init__(self, total: int, *, mode: str, job: str = "", dashboard_link: str = "") -> None:
        self.total = total
        self.mode = mode
        self.job = job
        self.done = 0
        self.rows = 0
        self.stages = {"read+preprocess": 0.0, "infer": 0.0, "write": 0.0}
        self.started = time.perf_counter()
        self._next_decile = 1  # log at every 10% of the partitions
        self._bar: Any = None
        if mode == "bar":
            self._bar = self._make_bar(dashboard_link)
        elif mode == "log":
            logger.info(
                "job=%s event=start partitions=%d dashboard=%s", job, total, dashboard_link or "-"
            )

    def _make_bar(self, dashboard_link: str) -> Any:
        widget = False
        if _in_notebook():
            try:
                import ipywidgets  # noqa: F401

                widget = True
            except ImportError:
                pass
        if widget:
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
        if dashboard_link:
            print(f"dask-batchinfer: dashboard at {dashboard_link}", file=sys.stderr)
        return tqdm(total=self.total, unit="part", desc="partitions", dynamic_ncols=True)

    @property
    def rows_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.done:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed / self.done * (self.total - self.done)

    def stage_shares(self) -> dict[str, float]:
        """Share of the workers' busy time per stage so far."""
        busy = sum(self.stages.values()) or 1.0
        return {stage: seconds / busy for stage, seconds in self.stages.items()}

    def update(self, stats: PartitionStats) -> None:
        """One partition committed, with its statistics from the worker."""
        self.done += 1
        self.rows += stats.rows_in
        self.stages["read+preprocess"] += stats.read_seconds + stats.preprocess_seconds
        self.stages["infer"] += stats.infer_seconds
        self.stages["write"] += stats.write_seconds
        if self._bar is not None:
            shares = self.stage_shares()
            self._bar.set_postfix_str(
                f"{self.rows_per_second:,.0f} rows/s | "
                + " ".join(f"{k} {v:.0%}" for k, v in shares.items()),
                refresh=False,
            )
            self._bar.update(1)
        elif self.mode == "log" and self.done * 10 >= self._next_decile * self.total:
            self._next_decile = self.done * 10 // max(self.total, 1) + 1
            self._log("progress")

    def heartbeat(self, slowest: str, age: float) -> None:
        """Nothing committed for a while: say which partition in flight is the oldest."""
        if self._bar is not None:
            self._bar.set_postfix_str(f"waiting on {slowest} for {age:.0f} s", refresh=True)
        elif self.mode == "log":
            logger.info("job=%s event=heartbeat partitions=%d/%d slowest=%s age_s=%.0f",
                        self.job, self.done, self.total, json.dumps(slowest), age)  # fmt: skip

    def _log(self, event: str) -> None:
        eta = self.eta_seconds
        shares = " ".join(
            f"{k.replace('+', '_')}_share={v:.2f}" for k, v in self.stage_shares().items()
        )
        logger.info(
            "job=%s event=%s partitions=%d/%d rows=%d rows_per_s=%.1f eta_s=%s %s",
            self.job, event, self.done, self.total, self.rows, self.rows_per_second,
            "-" if eta is None else f"{eta:.1f}", shares,
        )  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            self._log("end")


def make_progress(
    progress: bool | str | None, *, total: int, job: str = "", dashboard_link: str = ""
) -> Progress:
    """A :class:`Progress` for ``run_job(progress=...)``."""
    return Progress(total, mode=resolve_mode(progress), job=job, dashboard_link=dashboard_link)
