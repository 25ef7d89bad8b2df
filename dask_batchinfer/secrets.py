"""Credentials in ``storage_options`` stay out of task graphs, logs and errors.

``run_job(..., storage_options={"key": ..., "secret": ...})`` splits the
options: the secret ones (``key``, ``secret``, ``token``, passwords, anything
named like an access key or credential, at any depth) go to the workers once,
in a worker plugin (:class:`dask_batchinfer.cluster.plugins.CredentialsPlugin`), and
the tasks carry only a reference to them. A task's
``repr`` (which distributed logs when a task fails) and the pickled graph
therefore never hold a credential. :func:`redact` scrubs them from text we
print. The safest path needs none of this: leave credentials out of
``storage_options`` and let s3fs find them on each worker (environment
variables, ``~/.aws`` profiles, instance roles).
"""

from __future__ import annotations

import functools
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "REFERENCE",
    "forget",
    "is_secret",
    "new_reference",
    "redact",
    "redact_exception",
    "redacting",
    "remember",
    "resolve",
    "split",
    "store",
]

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


def store(name: str, secret: Mapping[str, Any]) -> None:
    """Keep ``secret`` in this process under ``name`` for :func:`resolve` (a worker's vault)."""
    with _lock:
        _vault[name] = dict(secret)
    remember(secret)


def forget(name: str) -> None:
    """Drop the secret stored as ``name``."""
    with _lock:
        _vault.pop(name, None)


def new_reference() -> str:
    """A fresh name for one job's credentials."""
    return f"dask-batchinfer-credentials-{uuid.uuid4().hex}"


F = TypeVar("F", bound=Callable[..., Any])


def redacting(function: F) -> F:
    """Decorate ``function`` so that the errors it raises carry no known credential."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython shows the user's frame and the error
        try:
            return function(*args, **kwargs)
        except BaseException as err:
            redact_exception(err)
            raise

    return wrapper  # type: ignore[return-value]


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
