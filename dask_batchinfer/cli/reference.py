"""``docs/reference.md``, generated: the job options, the commands' help, the configuration keys.

Everything here is made from the declarations (:mod:`dask_batchinfer.job.options`),
the parser (:mod:`dask_batchinfer.cli.flags`) and ``batchinfer.yaml``, so the
reference cannot drift from the code: ``tests/test_reference.py`` fails when
the file differs from what this prints. Regenerate with ``make docs``
(``python -m dask_batchinfer.cli.reference > docs/reference.md``).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from unittest import mock

from dask_batchinfer.cli.flags import build_parser
from dask_batchinfer.job.options import declared

__all__ = ["config_keys", "reference"]

_YAML = os.path.join(os.path.dirname(os.path.dirname(__file__)), "batchinfer.yaml")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def options_table() -> str:
    rows = [
        "| option | flag | job-file key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in declared():
        if not d.argument:
            continue
        default = f"`batchinfer.{d.config}`" if d.config else f"`{d.default!r}`"
        flag = f"`{d.flag_name}`" if d.flag_name else "see meaning"
        key = f"`{d.dest}`" if d.flag is not None else "-"
        rows.append(f"| `{d.name}` | {flag} | {key} | {default} | {_cell(d.help)} |")
    return "\n".join(rows)


def config_keys() -> Iterator[tuple[str, str, str]]:
    """``(key, default, meaning)`` of every ``batchinfer.*`` key, from ``batchinfer.yaml``
    (a key's meaning is the comment above it; a nested key is ``pools.model``)."""
    comment: list[str] = []
    parents: dict[int, str] = {}
    with open(_YAML) as f:
        for line in f.read().splitlines()[1:]:  # below "batchinfer:"
            stripped = line.strip()
            if stripped.startswith("#"):
                comment.append(stripped.lstrip("# "))
                continue
            match = re.match(r"( *)([\w-]+):\s*(.*)", line)
            if not match:
                continue
            indent, key, value = len(match.group(1)), match.group(2), match.group(3)
            parents = {i: k for i, k in parents.items() if i < indent}
            name = ".".join([*parents.values(), key])
            if value:
                yield name, value, " ".join(comment)
            else:  # a group: its keys carry their own comments
                parents[indent] = key
            comment = []


def config_table() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k}` | `{v}` | {_cell(m)} |" for k, v, m in config_keys()]
    return "\n".join(rows)


def command_help() -> str:
    """``--help`` of each command, at a fixed width."""
    parser = build_parser()
    blocks = []
    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        blocks.append(("dask-batchinfer --help", parser.format_help()))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    blocks.append((f"dask-batchinfer {name} --help", sub.format_help()))
    return "\n\n".join(f"### `{title}`\n\n```text\n{text.rstrip()}\n```" for title, text in blocks)


def reference() -> str:
    return f"""# Reference

Generated from the code by `make docs`; do not edit by hand (`tests/test_reference.py`
fails when this file and the code disagree). The user guide explains; this lists.

## Job options

The keywords of `run_job()` and `plan()`, the flags of `dask-batchinfer run` and
the keys of a job file (`--job FILE`) are one list, declared in
`dask_batchinfer/job/options.py`. `pools` has two flags: `--pool-resources
PREPROCESS MODEL` and `--no-pools`.

{options_table()}

## Commands

{command_help()}

## Configuration

Keys under `batchinfer` in `dask.config` (defaults from
`dask_batchinfer/batchinfer.yaml`), read on the client. Set them with
`dask.config.set({{"batchinfer.partition-size": "64MiB"}})`, in the environment
(`DASK_BATCHINFER__PARTITION_SIZE=64MiB`, `__` between levels) or in a YAML
file in `~/.config/dask/`.

{config_table()}
"""


if __name__ == "__main__":
    print(reference(), end="")
