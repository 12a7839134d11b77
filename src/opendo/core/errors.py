"""Errors that cross the boundary between a caller and a Durable Object."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DurableObjectError",
    "DurableObjectResetError",
    "OwnerGoneError",
    "DurableObjectStartError",
    "StorageError",
    "as_remote",
]


class DurableObjectError(Exception):
    """An error from a Durable Object or from the runtime that hosts it.

    ``remote`` is True when user code in the object raised it; ``retryable`` says a retry is
    safe (for idempotent work); ``overloaded`` says not to retry.
    """

    remote: bool = False
    retryable: bool = False
    overloaded: bool = False


class DurableObjectResetError(DurableObjectError):
    """The object was reset (a failed write, ``abort()``, a failed ``block_concurrency_while``)
    while this call was in flight."""

    retryable = True


class DurableObjectStartError(DurableObjectError):
    """The object failed to start (its constructor raised, or a ``block_concurrency_while``
    it started failed or timed out), so the event was never delivered to it.

    A retry is safe (the event did not run) and may succeed: ``retry_after`` says in how many
    seconds the next attempt to construct the object will be made (0: at the next event).
    """

    retryable = True

    def __init__(self, message: str, *, reason: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class OwnerGoneError(DurableObjectError):
    """The process or node that owned the object is gone: the event never reached it (a
    ``Forwarder`` raises this; the runtime then claims the object again)."""

    retryable = True


class ConfigError(Exception):
    """A problem in the project's configuration; the message says where and what."""


class StorageError(Exception):
    """A storage call was refused: bad arguments, a limit, or a storage that is gone."""


class StorageUnavailableError(DurableObjectError, StorageError):
    """The object's storage cannot be used: a write to it failed to reach the disk, and what
    it wrote last may be lost, so it is not read again until the server restarts."""


def as_remote(exc: BaseException) -> BaseException:
    """The error a caller sees for ``exc`` raised inside an object.

    The type and message are kept (the object's traceback is not: it stays in the object's
    log), and the copy is marked ``remote = True``.
    """
    if not isinstance(exc, Exception):
        return exc
    copy: Exception
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        copy = DurableObjectError(f"{type(exc).__name__}: {exc}")
    try:
        copy.remote = True  # type: ignore[attr-defined]
    except AttributeError:
        fallback = DurableObjectError(f"{type(exc).__name__}: {exc}")
        fallback.remote = True
        return fallback
    return copy
