"""What the ``dask-batchinfer`` command loads: job files, and objects named ``module:attribute``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from dask_batchinfer.errors import InputError
from dask_batchinfer.model.spec import ModelSpec

__all__ = ["json_list", "json_object", "load_job_file", "load_object", "model_from_reference"]


def load_object(reference: str, what: str) -> Any:
    """Import ``module:attribute`` (``module.sub:obj.attr`` works too), looking in the
    current folder first, as ``python -m`` does (and uvicorn, celery)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise InputError(
            f"--{what} {reference!r}: expected module:attribute, e.g. mypkg.models:ranker"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"--{what} {reference!r}: cannot import {module_name!r}: {err}") from err
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise InputError(f"--{what} {reference!r}: {module_name} has no {attribute!r}") from err
    return obj


def model_from_reference(
    reference: str, task: str | None = None, options: dict[str, Any] | None = None
) -> ModelSpec:
    """A ModelSpec, or a function returning one, named as ``module:attribute``; with
    ``task``, ``reference`` is a Hugging Face model folder (``from_transformers``)."""
    if task is not None:
        from dask_batchinfer.model.hf_tasks import from_transformers

        try:
            return from_transformers(reference, task, **(options or {}))
        except TypeError as err:  # an option from_transformers does not take
            raise InputError(f"--model-options: {err}") from err
    if options:
        raise InputError("--model-options are for a Hugging Face model folder with --task")
    obj = load_object(reference, "model")
    if not isinstance(obj, ModelSpec) and callable(obj):
        obj = obj()
    if not isinstance(obj, ModelSpec):
        raise InputError(
            f"--model {reference!r} is a {type(obj).__name__}; it must be a ModelSpec or a "
            f"function returning one"
        )
    return obj


def _json(text: str, kind: type, example: str) -> Any:
    """``text`` parsed as JSON, which must be a ``kind`` (the error shows ``example``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, kind):
        noun = "object" if kind is dict else "list"
        raise argparse.ArgumentTypeError(f"expected a JSON {noun}, e.g. {example}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object given on the command line."""
    return _json(text, dict, "'{\"anon\": false}'")


def json_list(text: str) -> list[Any]:
    """An argparse type: a JSON list given on the command line (e.g. ``--filters``)."""
    return _json(text, list, '\'[["date", "==", "x"]]\'')


def load_job_file(path: str, known: set[str]) -> dict[str, Any]:
    """Options from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) job file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise InputError(f"--job {path!r}: cannot read it: {err}") from err
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(raw.decode())
        elif path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(raw)
        else:
            raise InputError(f"--job {path!r}: expected a .toml, .yaml or .yml file")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"--job {path!r}: cannot parse it: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"--job {path!r}: expected a table of options at the top level")
    data = data.get("job", data) if isinstance(data.get("job"), dict) else data
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"--job {path!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    for name in ("keep", "partition_on"):
        if isinstance(options.get(name), str):
            options[name] = [options[name]]
    return options
