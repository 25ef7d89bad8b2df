"""Retry transient storage errors with exponential backoff.

Transient: connection resets and time-outs, and server-side errors (S3 5xx,
which s3fs raises as ``OSError`` with ``EREMOTEIO``/``EBUSY`` and the botocore
error as ``__cause__``). Permanent errors (access denied, no such bucket or
key) fail at once with a message naming the path.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["RetryStats", "is_transient", "retry"]

T = TypeVar("T")
logger = logging.getLogger(__name__)

_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EBUSY,
    errno.EAGAIN,
    getattr(errno, "EREMOTEIO", 121),
}
_PERMANENT = (
    PermissionError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
)


def _http_status(err: BaseException) -> int | None:
    for candidate in (err, err.__cause__, err.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def is_transient(err: BaseException) -> bool:
    """Whether retrying the storage call that raised ``err`` may succeed."""
    if isinstance(err, _PERMANENT):
        return False
    status = _http_status(err)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS


class RetryStats:
    """Counts retries made by :func:`retry` (one instance per task)."""

    def __init__(self) -> None:
        self.retries = 0


def retry(
    call: Callable[[], T],
    *,
    what: str,
    stats: RetryStats | None = None,
    attempts: int = 6,
    base_delay: float = 0.1,
    max_delay: float = 5.0,
) -> T:
    """Run ``call()``; retry transient errors with jittered exponential backoff.

    Raises the last error (as ``OSError`` naming ``what`` when it is not
    already one of ours) once ``attempts`` are spent, or at once for a
    permanent error.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:
            if attempt == attempts or not is_transient(err):
                if isinstance(err, OSError) and not is_transient(err):
                    raise type(err)(f"{what}: {err}") from err
                raise
            if stats is not None:
                stats.retries += 1
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            logger.warning(
                "transient error on %s (attempt %d/%d): %s", what, attempt, attempts, err
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
