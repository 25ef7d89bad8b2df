"""The commit protocol: per-partition markers, the ``_SUCCESS`` manifest, clean-up.

Layout of an output folder::

    output/
      part-<slug>-<id>.parquet        committed data (in hive folders with partition_on)
      _committed/<slug>.json          one marker per committed input partition
      _staging/                       attempts in flight
      _SUCCESS                        the manifest, written when every partition is committed

1. A task writes each data file to ``_staging/`` under a unique name and moves
   it onto its deterministic final name (rename on local disk, server-side
   copy on S3): a file is visible whole or not at all, and two attempts of one
   partition (Dask re-runs tasks of a lost worker) land on the same names.
2. The task then writes the partition's marker (its fingerprint and files).
   A partition is committed once its marker exists.
3. When every partition of the job is committed, the client writes
   ``_SUCCESS`` listing every file, then deletes what the manifest does not
   list: stale data files, markers of partitions no longer in the input, and
   ``_staging/``. Readers of the folder then see exactly the manifest's files.

Names starting with ``_`` are skipped by Dask, pandas and pyarrow readers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import posixpath
import uuid
from collections.abc import Sequence, Set
from typing import Any

import fsspec

from dask_batchinfer.io.retry import RetryStats, retry

__all__ = [
    "COMMITTED",
    "MANIFEST",
    "STAGING",
    "OutputState",
    "Partition",
    "collect_garbage",
    "ensure_dir",
    "load_state",
    "read_json",
    "write_bytes",
    "write_json",
    "write_marker",
]

STAGING = "_staging"
COMMITTED = "_committed"
ERRORS = "_errors"
MANIFEST = "_SUCCESS"


@dataclasses.dataclass(frozen=True)
class Partition:
    """One input partition of a job.

    Attributes
    ----------
    number : int
        Its position in the input.
    slug : str
        A stable, file-name-safe name: from the input file, or ``"00012"``
        for a Dask DataFrame input.
    source : str or None
        The input file, when the input is a Parquet path.
    fingerprint : str
        Token of the input partition's identity and of everything that shapes
        its output (model, preprocessing, columns, package version).
    generation : str
        ``""`` normally; a fresh value in ``mode="overwrite"`` so new files
        never replace the files of the dataset being replaced.
    """

    number: int
    slug: str
    source: str | None
    fingerprint: str
    generation: str = ""

    @property
    def stem(self) -> str:
        """The base name of this partition's data files."""
        suffix = self.fingerprint[:10] if not self.generation else self.generation[:10]
        return f"part-{self.slug}-{suffix}"


def is_visible(relpath: str) -> bool:
    """Whether readers see ``relpath`` (no path part starts with ``_`` or ``.``)."""
    return not any(part.startswith(("_", ".")) for part in relpath.split("/"))


def write_json(
    fs: fsspec.AbstractFileSystem,
    root: str,
    relpath: str,
    payload: dict[str, Any],
    stats: RetryStats | None = None,
) -> None:
    """Write JSON to ``root/relpath`` atomically (stage, then move into place)."""
    text = json.dumps(payload, indent=1, sort_keys=True)
    write_bytes(fs, root, relpath, text.encode(), stats)


def write_bytes(
    fs: fsspec.AbstractFileSystem,
    root: str,
    relpath: str,
    data: bytes,
    stats: RetryStats | None = None,
) -> None:
    """Write ``data`` to ``root/relpath`` atomically (stage, then move into place)."""
    staged = posixpath.join(root, STAGING, f"{uuid.uuid4().hex}-{posixpath.basename(relpath)}")

    def put() -> None:
        ensure_dir(fs, posixpath.dirname(staged))
        fs.pipe_file(staged, data)

    retry(put, what=f"writing {staged}", stats=stats)
    move_into_place(fs, staged, posixpath.join(root, relpath), stats)


def move_into_place(
    fs: fsspec.AbstractFileSystem, staged: str, final: str, stats: RetryStats | None = None
) -> None:
    """Move a staged file onto its final name: a rename locally, a copy then delete on S3."""
    ensure_dir(fs, posixpath.dirname(final))
    retry(
        lambda: fs.copy(staged, final) if _is_object_store(fs) else fs.mv(staged, final),
        what=f"committing {final}",
        stats=stats,
    )
    if _is_object_store(fs):
        try:
            retry(lambda: fs.rm(staged), what=f"removing {staged}", stats=stats)
        except OSError:
            pass  # left for collect_garbage; _staging/ is invisible to readers


def ensure_dir(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Create a local folder; nothing on object stores.

    (s3fs's ``makedirs`` creates a missing *bucket*: a typo in a bucket name
    must fail, not create one.)
    """
    if not _is_object_store(fs):
        fs.makedirs(path, exist_ok=True)


def _is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return not {"file", "local"} & set(protocols)


def write_marker(
    fs: fsspec.AbstractFileSystem,
    root: str,
    partition: Partition,
    *,
    files: list[tuple[str, int]],
    rows_in: int,
    errors: Sequence[tuple[str, int]] = (),
    stats: RetryStats | None = None,
) -> None:
    """Mark ``partition`` committed: its fingerprint and files, written last."""
    write_json(
        fs,
        root,
        f"{COMMITTED}/{partition.slug}.json",
        {
            "slug": partition.slug,
            "source": partition.source,
            "fingerprint": partition.fingerprint,
            "files": [{"path": path, "rows": rows} for path, rows in files],
            "rows_in": rows_in,
            "rows_out": sum(rows for _, rows in files),
            "errors": [path for path, _ in errors],
            "rows_quarantined": sum(rows for _, rows in errors),
        },
        stats,
    )


@dataclasses.dataclass
class OutputState:
    """What an output folder holds now."""

    manifest: dict[str, Any] | None
    markers: dict[str, dict[str, Any]]
    files: set[str]  # visible files, relative to the root
    exists: bool
    error_files: set[str] = dataclasses.field(default_factory=set)  # quarantined rows

    def committed(self, partition: Partition) -> dict[str, Any] | None:
        """The marker of ``partition`` if it is committed with the same fingerprint."""
        marker = self.markers.get(partition.slug)
        if marker is None or marker.get("fingerprint") != partition.fingerprint:
            return None
        if not all(f["path"] in self.files for f in marker.get("files", [])):
            return None  # a file was deleted by hand: run the partition again
        if not all(path in self.error_files for path in marker.get("errors", [])):
            return None
        return marker


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open(path, "r") as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # absent, or not ours: treated as not committed
    return data if isinstance(data, dict) else None


def load_state(fs: fsspec.AbstractFileSystem, root: str) -> OutputState:
    """List ``root`` once and read its manifest and markers."""
    fs.invalidate_cache(root)
    if not retry(lambda: fs.exists(root), what=f"checking {root}"):
        return OutputState(None, {}, set(), exists=False)
    paths = retry(lambda: fs.find(root), what=f"listing {root}")
    relpaths = [posixpath.relpath(p, root) for p in paths]
    markers = {}
    for rel in relpaths:
        if rel.startswith(f"{COMMITTED}/") and rel.endswith(".json"):
            marker = read_json(fs, posixpath.join(root, rel))
            if marker is not None and "slug" in marker:
                markers[marker["slug"]] = marker
    manifest = read_json(fs, posixpath.join(root, MANIFEST)) if MANIFEST in relpaths else None
    files = {rel for rel in relpaths if is_visible(rel)}
    errors = {rel for rel in relpaths if rel.startswith(f"{ERRORS}/")}
    return OutputState(manifest, markers, files, exists=bool(relpaths), error_files=errors)


def collect_garbage(
    fs: fsspec.AbstractFileSystem,
    root: str,
    *,
    keep_files: set[str],
    keep_slugs: set[str],
    state: OutputState,
    keep_errors: Set[str] = frozenset(),
) -> int:
    """Delete visible data files not in ``keep_files``, markers of other slugs, and staging.

    Returns the number of data files deleted.
    """
    stale = sorted(rel for rel in state.files if rel.endswith(".parquet") and rel not in keep_files)
    doomed = (
        [posixpath.join(root, rel) for rel in stale]
        + [posixpath.join(root, rel) for rel in sorted(state.error_files - keep_errors)]
        + [
            posixpath.join(root, COMMITTED, f"{slug}.json")
            for slug in sorted(set(state.markers) - keep_slugs)
        ]
    )
    for path in doomed:
        retry(functools.partial(fs.rm, path), what=f"removing {path}")
    staging = posixpath.join(root, STAGING)
    if fs.exists(staging):
        try:
            fs.rm(staging, recursive=True)
        except OSError:
            pass  # a straggling attempt still writes there; readers skip "_" folders
    _remove_empty_dirs(fs, root)
    return len(stale)


def _remove_empty_dirs(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Remove empty hive folders left by deleted files (local disk; S3 has no folders)."""
    if _is_object_store(fs):
        return
    import os

    for dirpath, _, _ in os.walk(root, topdown=False):
        if dirpath != root and not os.listdir(dirpath):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
