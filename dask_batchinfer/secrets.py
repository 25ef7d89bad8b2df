"""Credentials in ``storage_options`` stay out of task graphs, logs and errors.

``run_job(..., storage_options={"key": ..., "secret": ...})`` splits the
options: the secret ones (``key``, ``secret``, ``token``, passwords, anything
named like an access key or credential, at any depth) go to the workers once,
in a worker plugin, and the tasks carry only a reference to them. A task's
``repr`` (which distributed logs when a task fails) and the pickled graph
therefore never hold a credential. :func:`redact` scrubs them from text we
print. The safest path needs none of this: leave credentials out of
``storage_options`` and let s3fs find them on each worker (environment
variables, ``~/.aws`` profiles, instance roles).
"""

from __future__ import annotations

import os
import pickle
import re
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["REFERENCE", "is_secret", "redact", "resolve", "split"]

REFERENCE = "__dask_batchinfer_credentials__"
_NAMES = ("secret", "token", "password", "passwd", "credential", "access_key", "private_key")
_vault: dict[str, dict[str, Any]] = {}
_known: set[str] = set()  # secret values seen in this process, for redact()
_lock = threading.Lock()


def is_secret(name: str) -> bool:
    """Whether an option called ``name`` holds a credential."""
    lowered = name.lower()
    return lowered in ("key", "pass", "pwd") or any(word in lowered for word in _NAMES)


def split(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(public, secret)`` halves of nested ``options``; merging them gives ``options`` back."""
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, Mapping):
            inner_public, inner_secret = split(value)
            public[name] = inner_public
            if inner_secret:
                secret[name] = inner_secret
        elif is_secret(str(name)) and value is not None:
            secret[name] = value
        else:
            public[name] = value
    return public, secret


def _merge(public: Mapping[str, Any], secret: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(public)
    for name, value in secret.items():
        if isinstance(value, Mapping):
            merged[name] = _merge(merged.get(name) or {}, value)
        else:
            merged[name] = value
    return merged


def _values(secret: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for value in secret.values():
        if isinstance(value, Mapping):
            found.extend(_values(value))
        elif value is not None and len(str(value)) >= 4:
            found.append(str(value))
    return found


def remember(secret: Mapping[str, Any]) -> None:
    """Note ``secret``'s values so that :func:`redact` hides them in this process."""
    with _lock:
        _known.update(_values(secret))


def redact(text: str) -> str:
    """``text`` with every credential this process has seen replaced by ``***``."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        text = text.replace(value, "***")
    return re.sub(
        r"(?i)(['\"]?(?:key|secret|token|password)['\"]?\s*[:=]\s*)(['\"])[^'\"]+(['\"])",
        r"\1\2***\3",
        text,
    )


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


class CredentialsPlugin(WorkerPlugin):
    """A worker plugin that hands the secret options to tasks on each worker.

    Pickled, it holds the options masked with a one-time pad (also inside),
    so that they never appear verbatim in the bytes that distributed may log
    at DEBUG level or keep in memory dumps. That is masking, not encryption:
    anyone who can unpickle the plugin can read them, as the workers must.
    """

    def __init__(self, name: str, secret: Mapping[str, Any]) -> None:
        self.name = name
        self._secret = dict(secret)

    def __repr__(self) -> str:  # never print the secret
        return f"CredentialsPlugin({self.name!r})"

    def __getstate__(self) -> dict[str, Any]:
        data = pickle.dumps(self._secret)
        pad = os.urandom(len(data))
        return {"name": self.name, "pad": pad, "masked": _xor(data, pad)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self._secret = pickle.loads(_xor(state["masked"], state["pad"]))

    def setup(self, worker: Any) -> None:
        with _lock:
            _vault[self.name] = self._secret
        remember(self._secret)

    def teardown(self, worker: Any) -> None:
        with _lock:
            _vault.pop(self.name, None)


def new_reference() -> str:
    """A fresh name for one job's credentials."""
    return f"dask-batchinfer-credentials-{uuid.uuid4().hex}"


def register(client: Any, name: str, secret: Mapping[str, Any]) -> None:
    """Send ``secret`` to every worker of ``client`` (and to late joiners) as ``name``."""
    responses = client.register_plugin(CredentialsPlugin(name, secret), name=name) or {}
    failed = {w: r for w, r in responses.items() if r.get("status") != "OK"}
    if failed:
        worker, response = next(iter(failed.items()))
        raise RuntimeError(
            f"could not send the storage credentials to {len(failed)} worker(s), e.g. "
            f"{worker}: {redact(str(response.get('exception') or response))}"
        )


def redact_exception(err: BaseException) -> None:
    """Scrub known credentials from ``err``'s message and from the errors it chains to."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        except Exception:  # noqa: BLE001 - an exception type with read-only args
            pass
        current = current.__cause__ or current.__context__


def unregister(client: Any, name: str) -> None:
    try:
        client.unregister_worker_plugin(name)
    except Exception:  # noqa: BLE001 - best effort: the workers may be gone
        pass


def resolve(options: Mapping[str, Any]) -> dict[str, Any]:
    """The full options for a task: a credentials reference swapped for the secrets."""
    name = options.get(REFERENCE)
    if name is None:
        return dict(options)
    public = {k: v for k, v in options.items() if k != REFERENCE}
    with _lock:
        secret = _vault.get(name)
    if secret is None:
        raise RuntimeError(
            f"storage credentials {name!r} are not registered on this worker; run the job "
            f"through run_job(), which sends them to every worker"
        )
    return _merge(public, secret)
