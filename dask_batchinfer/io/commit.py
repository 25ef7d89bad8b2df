"""The commit protocol: per-partition markers, the ``_SUCCESS`` manifest, clean-up.

The folder's names are in :mod:`dask_batchinfer.io.layout`.

1. A task writes each data file to ``_staging/`` under a unique name and moves
   it onto its deterministic final name (rename on local disk, server-side
   copy on S3): a file is visible whole or not at all, and two attempts of one
   partition (Dask re-runs tasks of a lost worker) land on the same names.
2. The task then writes the partition's :class:`Marker` (its fingerprint,
   files and row counts). A partition is committed once its marker exists.
3. When every partition of the job is committed, the client's
   :class:`Committer` writes ``_SUCCESS`` listing every file, then deletes
   what the manifest does not list: stale data files, markers of partitions
   no longer in the input, and ``_staging/``. Readers of the folder then see
   exactly the manifest's files.

Workers run step 1 and 2 (:func:`write_marker`); the client runs the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from typing import Any

import fsspec

from dask_batchinfer.io.fs import (
    ensure_dir,
    is_local,
    list_files,
    read_json,
    read_jsons,
    read_leading_strings,
    remove_empty_dirs,
    url_to_fs,
    write_bytes,
    write_json,
    write_text,
)
from dask_batchinfer.io.layout import (
    COMMITTED,
    ERRORS,
    LOCK,
    MANIFEST,
    REPORT_HTML,
    REPORT_JSON,
    STAGING,
    is_visible,
)
from dask_batchinfer.io.lease import Lease
from dask_batchinfer.io.retry import RetryStats, retry

__all__ = [
    "MANIFEST_HEAD",
    "Committer",
    "Marker",
    "OutputState",
    "Partition",
    "load_state",
    "manifest_digest",
    "write_marker",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
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
        name = self.slug if self.slug.startswith("part-") else f"part-{self.slug}"
        return f"{name}-{suffix}"  # input part-000.parquet: part-000-<id>, not part-part-000


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """A committed partition: ``_committed/<slug>.json``.

    ``files`` and ``errors`` are ``(path relative to the output, rows)`` pairs
    of the data files and of the quarantined rows' files.
    """

    slug: str
    source: str | None
    fingerprint: str
    files: tuple[tuple[str, int], ...]
    rows_in: int
    errors: tuple[tuple[str, int], ...] = ()
    rows_truncated: int = 0

    @property
    def rows_out(self) -> int:
        return sum(rows for _, rows in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(rows for _, rows in self.errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "files": [{"path": path, "rows": rows} for path, rows in self.files],
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "errors": [path for path, _ in self.errors],
            "error_rows": [rows for _, rows in self.errors],
            "rows_quarantined": self.rows_quarantined,
            "rows_truncated": self.rows_truncated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Marker | None:
        """The marker in ``data``, or None when it is not one of ours."""
        try:
            errors = list(data.get("errors", []))
            error_rows = data.get("error_rows")
            if error_rows is None:  # written before error_rows: one file per partition
                error_rows = [int(data.get("rows_quarantined", 0))] * min(len(errors), 1)
            return cls(
                slug=str(data["slug"]),
                source=data.get("source"),
                fingerprint=str(data["fingerprint"]),
                files=tuple((str(f["path"]), int(f["rows"])) for f in data.get("files", [])),
                rows_in=int(data["rows_in"]),
                errors=tuple(zip(errors, map(int, error_rows), strict=True)),
                rows_truncated=int(data.get("rows_truncated", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def write_marker(
    fs: fsspec.AbstractFileSystem, root: str, marker: Marker, stats: RetryStats | None = None
) -> None:
    """Commit a partition: write its marker, after its files are in place."""
    write_json(fs, root, f"{COMMITTED}/{marker.slug}.json", marker.to_json(), stats)


@dataclasses.dataclass
class OutputState:
    """What an output folder holds now."""

    manifest: dict[str, Any] | None
    markers: dict[str, Marker]
    files: set[str]  # visible files, relative to the root
    exists: bool
    error_files: set[str] = dataclasses.field(default_factory=set)  # quarantined rows
    #: Reads ``manifest`` when :meth:`get_manifest` first asks (None: ``manifest`` is it).
    read_manifest: Callable[[], dict[str, Any] | None] | None = dataclasses.field(
        default=None, repr=False
    )
    #: Reads the manifest's first members (``MANIFEST_HEAD``), from its first kilobytes.
    read_head: Callable[[], dict[str, str] | None] | None = dataclasses.field(
        default=None, repr=False
    )

    def get_manifest(self) -> dict[str, Any] | None:
        """The ``_SUCCESS`` manifest, read when first asked: at 100,000 partitions it is
        22 MB of JSON and 100 MB parsed, which a job with partitions to run never needs."""
        if self.read_manifest is not None:
            self.manifest, self.read_manifest = self.read_manifest(), None
        return self.manifest

    def manifest_matches(
        self, job_fingerprint: str, digest: Callable[[], str] | None = None
    ) -> bool:
        """Whether the manifest is this job's and every file it lists is there.

        ``digest()``: :func:`manifest_digest` of the job's markers, each checked (its files
        there). A manifest whose head carries the same digest lists those files: only its
        head is read (at 100,000 partitions the whole is 23 MB, 72 MB parsed). One without
        (written before 2026-12) is read whole."""
        if digest is not None and self.read_head is not None:
            head = self.read_head() or {}
            if "files_digest" in head:
                fingerprint = head.get("job_fingerprint")
                return fingerprint == job_fingerprint and head["files_digest"] == digest()
        manifest = self.get_manifest()
        if not manifest or manifest.get("job_fingerprint") != job_fingerprint:
            return False
        return all(f["path"] in self.files for f in manifest.get("files", []))

    def committed(self, partition: Partition) -> Marker | None:
        """The marker of ``partition`` if it is committed with the same fingerprint."""
        marker = self.markers.get(partition.slug)
        if marker is None or marker.fingerprint != partition.fingerprint:
            return None
        if not all(path in self.files for path, _ in marker.files):
            return None  # a file was deleted by hand: run the partition again
        if not all(path in self.error_files for path, _ in marker.errors):
            return None
        return marker


def load_state(fs: fsspec.AbstractFileSystem, root: str) -> OutputState:
    """List ``root`` once and read its markers (its manifest when first asked)."""
    fs.invalidate_cache(root)
    if not retry(lambda: fs.exists(root), what=f"checking {root}"):
        return OutputState(None, {}, set(), exists=False)
    paths = list_files(fs, root)
    found: list[str] = []  # markers, as listed
    files: set[str] = set()
    errors: set[str] = set()
    manifest = exists = False
    for path in paths:  # one pass, no copies of the listing (200,000 names at 100,000 partitions)
        rel = posixpath.relpath(path, root)
        exists = exists or rel != LOCK  # a lease alone is not content
        if rel.startswith(f"{COMMITTED}/") and rel.endswith(".json"):
            found.append(path)
        elif rel.startswith(f"{ERRORS}/"):
            errors.add(rel)
        elif is_visible(rel):
            files.add(rel)
        manifest = manifest or rel == MANIFEST
    del paths
    markers = {}
    for data in read_jsons(fs, found):
        marker = Marker.from_json(data) if data is not None else None
        if marker is not None:
            markers[marker.slug] = marker
    path = posixpath.join(root, MANIFEST)
    reader = functools.partial(read_json, fs, path) if manifest else None
    head = functools.partial(read_leading_strings, fs, path, MANIFEST_HEAD) if manifest else None
    return OutputState(None, markers, files, exists, errors, read_manifest=reader, read_head=head)


#: The manifest's first members (``job/record.manifest`` writes them first): what a re-run
#: of a finished job reads of it.
MANIFEST_HEAD = ("job_fingerprint", "files_digest")


def manifest_digest(markers: Iterable[Marker]) -> str:
    """A digest of what ``markers`` list (slug, data files, files of quarantined rows), in
    input order. The manifest's head carries that of the markers it was made from."""
    md5 = hashlib.md5(usedforsecurity=False)
    for m in markers:
        md5.update(json.dumps([m.slug, m.files, m.errors], separators=(",", ":")).encode())
        md5.update(b"\n")
    return md5.hexdigest()


class Committer:
    """The client's side of the protocol for one output folder.

    Parameters
    ----------
    output : str
        The output folder (local path or URL).
    storage_options : mapping
        fsspec options, credentials included (the client's full options).
    """

    def __init__(self, output: str, storage_options: Mapping[str, Any]) -> None:
        self.output = output
        self.fs, self.root = url_to_fs(output, storage_options)
        self.state = OutputState(None, {}, set(), exists=False)

    def lease(self, job: str) -> Lease:
        """The job's lease on the folder: ``with committer.lease(job):`` (see io/lease.py)."""
        return Lease(self.fs, self.root, job)

    def load(self) -> OutputState:
        """Read the folder's manifest and markers (once per job)."""
        self.state = load_state(self.fs, self.root)
        return self.state

    def check_writable(self) -> None:
        """Write and delete a probe: a wrong bucket or missing permission fails before any work."""
        probe = posixpath.join(self.root, STAGING, f"probe-{uuid.uuid4().hex}")

        def put() -> None:
            ensure_dir(self.fs, posixpath.dirname(probe))
            self.fs.pipe_file(probe, b"")

        retry(put, what=f"writing to output {self.output!r} ({probe})")
        retry(lambda: self.fs.rm(probe), what=f"removing {probe}")

    def write_manifest(self, manifest: Iterable[str], stats: RetryStats | None = None) -> None:
        """Write ``_SUCCESS`` from the pieces of its JSON text: from now on the folder reads
        as its ``files``."""
        write_text(self.fs, self.root, MANIFEST, manifest, stats)

    def restore_manifest(
        self, keep_slugs: Set[str], keep_files: Set[str], keep_errors: Set[str]
    ) -> int:
        """Back to the manifest after a later run died having committed files of its own:
        keep the job's markers and the files they list (the manifest's, when it matches)."""
        if not (self.state.files - keep_files or set(self.state.markers) - keep_slugs):
            return 0
        return self.collect_garbage(keep_files, keep_slugs, keep_errors)

    def collect_garbage(
        self, keep_files: Set[str], keep_slugs: Set[str], keep_errors: Set[str] = frozenset()
    ) -> int:
        """Delete visible data files not in ``keep_files``, other slugs' markers and staging.

        Returns the number of data files deleted.
        """
        fs, root, state = self.fs, self.root, self.state
        stale = sorted(
            rel for rel in state.files if rel.endswith(".parquet") and rel not in keep_files
        )
        doomed = (
            [posixpath.join(root, rel) for rel in stale]
            + [posixpath.join(root, rel) for rel in sorted(state.error_files - set(keep_errors))]
            + [
                posixpath.join(root, COMMITTED, f"{slug}.json")
                for slug in sorted(set(state.markers) - set(keep_slugs))
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
        remove_empty_dirs(fs, root)
        return len(stale)

    def save_report(
        self, payload: Mapping[str, Any], html: str, stats: RetryStats | None = None
    ) -> None:
        """Write ``_report.json`` and ``_report.html`` beside the output (atomically)."""
        write_json(self.fs, self.root, REPORT_JSON, payload, stats)
        write_bytes(self.fs, self.root, REPORT_HTML, html.encode(), stats)
        self.drop_empty_staging()

    def drop_empty_staging(self) -> None:
        """Remove ``_staging/`` on local disk when it is empty (object stores have no folders)."""
        if is_local(self.fs):
            try:
                os.rmdir(posixpath.join(self.root, STAGING))
            except OSError:
                pass

    @contextlib.contextmanager
    def tidy_on_failure(self) -> Iterator[None]:
        """When the job fails, remove ``_staging/`` if nothing is left in it (local disk).

        Committed partitions stay (a re-run resumes from them); a straggling task
        that still writes (the executor waits a few seconds for them) keeps the folder,
        and the next run's clean-up removes it.
        """
        try:
            yield
        except BaseException:
            self.drop_empty_staging()
            raise
