"""Live progress of a job: partitions committed of total, rows/s, ETA, time per stage.

Three displays, picked by ``run_job(progress=...)`` (default ``"auto"``):

- ``"bar"``: a tqdm bar; in Jupyter a widget (when ipywidgets is installed),
  in a terminal a text bar on stderr.
- ``"log"``: a ``key=value`` log line (logger ``dask_batchinfer.progress``)
  at every 10% and at the end: readable in CI logs and easy to grep.
- ``False``/``"off"``: nothing.

``"auto"`` is a bar in Jupyter or a terminal, and log lines otherwise.

Log lines need a handler: Python shows only warnings of a logger that has none
on its way up to the root. When neither the program (``logging.basicConfig``,
the command's set-up) nor anything else gave one, a job that logs its progress
puts a stderr handler on ``dask_batchinfer.progress`` for its duration, so
``python script.py 2>job.log`` under cron logs as the command does.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from dask_batchinfer import _config
from dask_batchinfer.errors import InputError

if TYPE_CHECKING:
    from dask_batchinfer.pipeline.stages import PartitionStats

__all__ = ["LOG_FORMAT", "Progress", "make_progress", "resolve_mode", "stderr_handler"]

logger = logging.getLogger("dask_batchinfer.progress")
PROGRESS_MODES = ("auto", "bar", "log", "off")
LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def stderr_handler() -> logging.Handler:
    """A handler writing one ``key=value`` line per record to stderr (the command's format)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


class _FallbackHandler:
    """A stderr handler on the progress logger while jobs log and nothing else would show it.

    Shared by the jobs that run at the same time; the last one to end removes
    it. A level set by the user on our loggers is kept; otherwise the logger
    is at INFO while the handler is there.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._handler: logging.Handler | None = None
        self._level = logging.NOTSET

    def acquire(self) -> bool:
        """Count one more job; True when it must :meth:`release` the handler."""
        with self._lock:
            if not self._users and logger.hasHandlers():
                return False  # the program set logging up: its handlers show our lines
            if not self._users:
                self._handler, self._level = stderr_handler(), logger.level
                logger.addHandler(self._handler)
                if _level_below_root() == logging.NOTSET:
                    logger.setLevel(logging.INFO)
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users and self._handler is not None:
                logger.removeHandler(self._handler)
                logger.setLevel(self._level)
                self._handler = None


def _level_below_root() -> int:
    """The level set on ``dask_batchinfer.progress`` or a parent other than the root."""
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:
        if current.level:
            return current.level
        current = current.parent
    return logging.NOTSET


_fallback = _FallbackHandler()


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
    if progress not in PROGRESS_MODES:
        raise InputError(f"progress={progress!r}: expected True, False or one of {PROGRESS_MODES}")
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
        self._fallback = self._closed = False
        if mode == "bar":
            self._bar = self._make_bar(dashboard_link)
        elif mode == "log":
            self._fallback = _fallback.acquire()
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
            return _widget_bar(self.total, dashboard_link)
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
            logger.info(
                "job=%s event=heartbeat partitions=%d/%d slowest=%s age_s=%.0f",
                self.job,
                self.done,
                self.total,
                json.dumps(slowest),
                age,
            )

    def _log(self, event: str) -> None:
        eta = self.eta_seconds
        shares = " ".join(
            f"{k.replace('+', '_')}_share={v:.2f}" for k, v in self.stage_shares().items()
        )
        logger.info(
            "job=%s event=%s partitions=%d/%d rows=%d rows_per_s=%.1f eta_s=%s %s",
            self.job,
            event,
            self.done,
            self.total,
            self.rows,
            self.rows_per_second,
            "-" if eta is None else f"{eta:.1f}",
            shares,
        )

    def close(self) -> None:
        """The end line or the bar's last state; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            self._log("end")
        if self._fallback:
            _fallback.release()


def _widget_bar(total: int, dashboard_link: str) -> Any:
    """tqdm's notebook bar with the dashboard link beside it (in the widget, not on stderr,
    which Jupyter shows in a pink box, as if something had failed)."""
    import html

    import ipywidgets
    from IPython.display import display
    from tqdm.notebook import tqdm

    bar = tqdm(total=total, unit="part", desc="partitions", display=False)
    parts = [bar.container]
    if dashboard_link:
        link = html.escape(dashboard_link, quote=True)
        parts.append(
            ipywidgets.HTML(f'<a href="{link}" target="_blank" title="{link}">dashboard</a>')
        )
    display(ipywidgets.HBox(parts))
    return bar


def make_progress(
    progress: bool | str | None, *, total: int, job: str = "", dashboard_link: str = ""
) -> Progress:
    """A :class:`Progress` for ``run_job(progress=...)``."""
    return Progress(total, mode=resolve_mode(progress), job=job, dashboard_link=dashboard_link)
