"""The options are declared once: the API, the command, job files and docs/reference.md agree.

Each test fails when one of them drifts: a keyword added to ``run_job`` but not
declared, a flag added by hand, a reference file not regenerated, a
configuration key without its meaning.
"""

from __future__ import annotations

import inspect
import os

import dask.config
import pytest

import dask_batchinfer as dbi
from dask_batchinfer.cli.flags import build_parser, option_flags
from dask_batchinfer.cli.main import as_cli
from dask_batchinfer.cli.reference import config_keys, reference
from dask_batchinfer.errors import InputError
from dask_batchinfer.job.options import JobOptions, arguments, declared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Flags of ``run`` that are the command's own, not job options.
COMMAND_ONLY = set(
    "help input model task model_options batch_size preprocess job dry_run cluster cpu_workers "
    "model_workers "
    "pool_resources no_pools json quiet".split()
)


def test_reference_doc_is_generated_from_the_code():
    with open(os.path.join(ROOT, "docs", "reference.md")) as f:
        assert f.read() == reference(), "docs/reference.md is stale: run `make docs`"


def test_run_job_takes_exactly_the_declared_options_with_their_defaults():
    params = inspect.signature(dbi.run_job).parameters
    keywords = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "preprocess"]
    assert sorted(keywords) == sorted(arguments())
    for d in declared():
        if d.argument and d.name != "output":  # output: required
            assert params[d.name].default == d.default, d.name


def test_plan_takes_every_option_of_run_job_by_name():
    params = inspect.signature(dbi.plan).parameters
    assert any(p.kind is p.VAR_KEYWORD for p in params.values())
    typo = r"unknown option\(s\) \['partition_timout'\].*partition_timeout"
    with pytest.raises(InputError, match=typo):
        JobOptions.build(partition_timout=5)


def test_every_run_flag_is_a_declared_option_or_the_commands_own():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    dests = {a.dest for a in run._actions}
    flags = option_flags()
    assert dests - COMMAND_ONLY == {d.dest for d in flags.values()}
    by_dest = {a.dest: a for a in run._actions}
    for d in flags.values():
        assert d.flag_name in by_dest[d.dest].option_strings
        assert d.help in by_dest[d.dest].help


def test_error_messages_name_the_declared_flags():
    for name, d in option_flags().items():
        assert as_cli(f"{name}=3: expected something") == f"{d.flag_name} 3: expected something"


def test_every_configuration_key_is_explained_and_set():
    keys = dict((k, m) for k, _, m in config_keys())
    assert not [k for k, m in keys.items() if not m], "a batchinfer.yaml key without a comment"
    for d in declared():
        if d.config:
            assert d.config in keys, d.name
    loaded = {".".join(path).replace("_", "-") for path in _leaves(dask.config.get("batchinfer"))}
    assert set(keys) == loaded


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)
