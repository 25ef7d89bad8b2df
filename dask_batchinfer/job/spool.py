"""The markers of the partitions a run committed, kept on the client's disk, not in memory.

The manifest lists every file, so the client must keep what each committed
partition wrote until the end. As objects that is 0.5-1 KB a partition (a
:class:`~dask_batchinfer.io.commit.Marker`, its tuples and strings), the largest
part of the client's memory growth at 100,000 partitions. A :class:`MarkerSpool`
writes each marker as a line of JSON to a temporary file and keeps, per
partition number, where its line starts (8 bytes) and whether it quarantined
rows (1 byte); the manifest then reads them back in input order, one at a time.
"""

from __future__ import annotations

import json
import tempfile
import threading
import weakref
from array import array
from collections.abc import Iterator
from typing import IO

from dask_batchinfer.io.commit import Marker

__all__ = ["MarkerSpool"]


class MarkerSpool:
    """Markers by partition number, in a temporary file (deleted when closed or collected)."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._at = array("q")  # per partition number: its line's offset, -1 if none
        self._errors = bytearray()  # per partition number: 1 if its marker has error files
        self._lock = threading.Lock()
        self.count = 0

    def open(self) -> None:
        """Create the file now: a job calls this before any work, so that a client without
        a writable temporary folder fails at once, naming it, not at its first commit."""
        with self._lock:
            self._create()

    def _create(self) -> None:
        if self._file is None:
            self._file = _temporary_file()
            # closed with the spool when a job never reached close() (no ResourceWarning)
            weakref.finalize(self, self._file.close)

    def add(self, number: int, marker: Marker) -> Marker | None:
        """Keep ``marker`` as partition ``number``'s; the one it replaces, if any."""
        line = json.dumps(marker.to_json(), separators=(",", ":")).encode() + b"\n"
        with self._lock:
            replaced = self._get(number)
            self._create()
            assert self._file is not None
            self._file.seek(0, 2)
            at = self._file.tell()
            self._file.write(line)
            if number >= len(self._at):
                grow = number + 1 - len(self._at)
                self._at.extend(array("q", [-1]) * grow)
                self._errors.extend(bytes(grow))
            self._at[number] = at
            self._errors[number] = 1 if marker.errors else 0
            self.count += replaced is None
        return replaced

    def get(self, number: int) -> Marker | None:
        """Partition ``number``'s marker, or None."""
        with self._lock:
            return self._get(number)

    def _get(self, number: int) -> Marker | None:
        if number >= len(self._at) or self._at[number] < 0 or self._file is None:
            return None
        self._file.seek(self._at[number])
        return Marker.from_json(json.loads(self._file.readline()))

    def has_errors(self, number: int) -> bool:
        """Whether partition ``number``'s marker lists files of quarantined rows."""
        return number < len(self._errors) and self._errors[number] == 1

    def numbers(self) -> Iterator[int]:
        """The partition numbers that have a marker, in order."""
        return (n for n, at in enumerate(self._at) if at >= 0)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and 0 <= number < len(self._at) and self._at[number] >= 0

    def close(self) -> None:
        """Delete the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._at = array("q")
            self._errors = bytearray()
            self.count = 0


def _temporary_file() -> IO[bytes]:
    try:
        return tempfile.TemporaryFile(prefix="batchinfer-markers-")
    except OSError as err:
        raise OSError(
            err.errno,
            f"the client keeps the markers of committed partitions in a temporary file and "
            f"cannot create one in {tempfile.gettempdir()!r} ({err.strerror}): point TMPDIR "
            f"at a writable folder with about 300 bytes per partition free",
        ) from err
