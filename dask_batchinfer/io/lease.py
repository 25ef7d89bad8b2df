"""One job per output folder: a lease in ``_lock``, renewed while the job runs.

A job creates ``output/_lock`` with an atomic create-if-absent before it reads
the folder's state: ``O_EXCL`` on local disk, a conditional put
(``If-None-Match: *``) on S3. The lease holds the job id, host, pid, start
time and a heartbeat that a background thread renews every quarter of
``batchinfer.lease-timeout``. A second job finds the lease and fails at once
with :class:`~dask_batchinfer.OutputLockedError` naming the holder. A lease is
taken over when its heartbeat is older than the timeout (its driver died on
another machine) or at once when its process is gone from this machine.

Filesystems without an exclusive create (``pipe_file`` without ``mode``)
fall back to write-then-read-back: the lease is written only when absent and
read back, and a job whose id is not the one read back stops. Two jobs
starting within the same few milliseconds there can both see their own lease;
the heartbeat check then stops one of them at its next renewal, before it
commits. An S3-compatible server that silently ignores ``If-None-Match`` is not
detected: two jobs on it can both take the lease.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import posixpath
import socket
import threading
import time
from typing import Any

import fsspec

from dask_batchinfer import _config
from dask_batchinfer.errors import OutputLockedError
from dask_batchinfer.io.fs import is_local, read_json
from dask_batchinfer.io.layout import LOCK
from dask_batchinfer.io.retry import retry

__all__ = ["Lease", "lease_timeout", "read_lease"]

logger = logging.getLogger(__name__)


def lease_timeout() -> float:
    """``batchinfer.lease-timeout`` in seconds."""
    from dask.utils import parse_timedelta

    return float(parse_timedelta(_config.get("lease-timeout"), default="s"))


def read_lease(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """The lease in ``root/_lock``, or None."""
    path = posixpath.join(root, LOCK)
    fs.invalidate_cache(path)
    return retry(lambda: read_json(fs, path), what=f"reading the lease {path}")


def is_alive(lease: dict[str, Any], timeout: float) -> bool:
    """Whether the lease's job may still run: a recent heartbeat and, on this host, its process."""
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return False  # its driver is gone from this machine
        except PermissionError:
            pass  # another user's live process
    return time.time() - float(lease.get("heartbeat", 0)) < timeout


def describe(lease: dict[str, Any]) -> str:
    age = time.time() - float(lease.get("heartbeat", 0))
    return (
        f"job {lease.get('job')!r} on {lease.get('host')} (pid {lease.get('pid')}, started "
        f"{lease.get('started')}, last heartbeat {age:.0f} s ago)"
    )


class Lease:
    """The lease of one job on one output folder (a context manager).

    Parameters
    ----------
    fs, root : filesystem and folder of the output
    job : str
        The job's id.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, job: str) -> None:
        self.fs, self.root, self.job = fs, root, job
        self.path = posixpath.join(root, LOCK)
        self.timeout = lease_timeout()
        self.lost: str | None = None  # why the lease was lost, if it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.record = {
            "job": job,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def _payload(self) -> bytes:
        return json.dumps(self.record | {"heartbeat": time.time()}).encode()

    def _create(self) -> None:
        """Create the lock file if absent; ``FileExistsError`` when it exists."""
        if is_local(self.fs):
            self.fs.makedirs(self.root, exist_ok=True)
            # Written aside, then linked into place: the lock appears with its content or not
            # at all (with O_EXCL alone another job could read it empty, take that for a
            # released lease, and give up after three tries under load).
            staged = f"{self.path}.{self.job}.tmp"
            with open(staged, "wb") as f:
                f.write(self._payload())
            try:
                os.link(staged, self.path)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system: exclusive create instead
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "wb") as out:
                    out.write(self._payload())
            finally:
                os.unlink(staged)
            return
        try:
            retry(
                lambda: self.fs.pipe_file(self.path, self._payload(), mode="create"),
                what=f"creating the lease {self.path}",
            )
        except FileExistsError:
            raise
        except OSError as err:
            if "PreconditionFailed" in str(err) or "412" in str(err):
                raise FileExistsError(self.path) from err
            raise
        except TypeError:  # a filesystem without exclusive writes: write if absent, read back
            if self.fs.exists(self.path):
                raise FileExistsError(self.path) from None
            self.fs.pipe_file(self.path, self._payload())
            held = read_lease(self.fs, self.root)
            if not held or held.get("job") != self.job:
                raise FileExistsError(self.path) from None

    def acquire(self) -> None:
        """Take the lease, or raise :class:`OutputLockedError` naming the job that holds it."""
        for attempt in range(3):
            try:
                self._create()
                break
            except FileExistsError:
                holder = read_lease(self.fs, self.root)
                if holder is None:
                    time.sleep(0.1 * (attempt + 1))
                    continue  # released meanwhile (or unreadable): try again
                if holder.get("job") == self.job:
                    break  # ours: a retried create whose first attempt went through
                if is_alive(holder, self.timeout):
                    raise OutputLockedError(
                        f"another job is writing to {self.root!r}: {describe(holder)}. Wait for "
                        f"it to finish, or, if it is dead, remove {self.path} (its lease would "
                        f"be taken over {self.timeout:.0f} s after its last heartbeat)",
                        holder=holder,
                    ) from None
                logger.warning("taking over the stale lease of %s", describe(holder))
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(self.path)
        else:
            raise OutputLockedError(f"could not take the lease {self.path}: it keeps changing")
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{self.job}")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                holder = read_lease(self.fs, self.root)
                if holder is None or holder.get("job") != self.job:
                    self.lost = f"lease {self.path} taken by {describe(holder or {})}"
                    logger.error("%s", self.lost)
                    return
                self.fs.pipe_file(self.path, self._payload())
            except Exception:  # noqa: BLE001 - a storage hiccup: try again next beat
                logger.warning("could not renew the lease %s", self.path, exc_info=True)

    def check(self) -> None:
        """Raise :class:`OutputLockedError` if another job took the lease over."""
        if self.lost:
            raise OutputLockedError(self.lost)
        holder = read_lease(self.fs, self.root)
        if holder is not None and holder.get("job") != self.job:
            raise OutputLockedError(f"lease {self.path} taken over by {describe(holder)}")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this job's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = read_lease(self.fs, self.root)
            if holder is not None and holder.get("job") == self.job:
                retry(lambda: self.fs.rm(self.path), what=f"releasing the lease {self.path}")
        except Exception:  # noqa: BLE001 - a stale lease is taken over by the next job
            logger.warning("could not release the lease %s", self.path, exc_info=True)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
