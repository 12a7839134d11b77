"""The arguments of KV and alarm calls, checked and encoded as the database takes them.

Keys are ``str`` and go to the database as their UTF-8 bytes, which order as the strings'
code points do; values are encoded with opendo's codec. Every limit is Cloudflare's (see
docs/reference/api.md, "Limits"), and an argument past one is refused before anything is
written, with a message naming the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..core.codec import encode
from ..core.errors import StorageError

__all__ = [
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Keys",
    "Range",
    "alarm_ms",
    "check_key",
    "get_keys",
    "list_range",
    "put_items",
]

MAX_KEYS = 128  # keys in one multi-key call
MAX_KEY_BYTES = 2048
MAX_VALUE_BYTES = 2 * 1024 * 1024  # a key and its encoded value; SQLite's limit on a row here

Keys = bytes | list[bytes]  # one encoded key, or several
Range = tuple[bytes | None, bytes | None, bool, int | None]  # start, end, reverse, limit


def check_key(key: Any, method: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"storage.{method}(): keys must be str, got {type(key).__name__}")
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_BYTES:
        raise StorageError(
            f"storage.{method}(): a key is {len(raw)} bytes of UTF-8; the limit is {MAX_KEY_BYTES}"
        )
    return raw


def _check_keys(keys: Any, method: str) -> list[bytes]:
    keys = list(keys)
    if len(keys) > MAX_KEYS:
        raise StorageError(
            f"storage.{method}(): {len(keys)} keys in one call; the limit is {MAX_KEYS}"
        )
    return [check_key(k, method) for k in keys]


def get_keys(key: Any, method: str) -> Keys:
    """The keys of ``get`` or ``delete``: one str, or a list (or tuple) of them."""
    if isinstance(key, str):
        return check_key(key, method)
    if not isinstance(key, list | tuple):
        raise TypeError(
            f"storage.{method}() takes a str or a list of str, got {type(key).__name__}"
        )
    return _check_keys(key, method)


def _encode_value(key: bytes, value: Any, method: str) -> bytes:
    data = encode(value)
    if len(key) + len(data) > MAX_VALUE_BYTES:
        raise StorageError(
            f"storage.{method}(): the value for {key.decode('utf-8', 'replace')!r} is "
            f"{len(data)} bytes encoded; key and value together may take {MAX_VALUE_BYTES}"
        )
    return data


def put_items(key: Any, value: Any, method: str) -> list[tuple[bytes, bytes]]:
    """The entries of ``put``: a key and a value, or a dict of them."""
    if isinstance(key, str):
        raw = check_key(key, method)
        return [(raw, _encode_value(raw, value, method))]
    if isinstance(key, Mapping):
        if len(key) > MAX_KEYS:
            raise StorageError(
                f"storage.{method}(): {len(key)} entries in one call; the limit is {MAX_KEYS}"
            )
        items = []
        for k, v in key.items():
            raw = check_key(k, method)
            items.append((raw, _encode_value(raw, v, method)))
        return items
    raise TypeError(
        f"storage.{method}() takes a str key and a value, or a dict, got {type(key).__name__}"
    )


def list_range(
    start: str | None,
    start_after: str | None,
    end: str | None,
    prefix: str | None,
    reverse: bool,
    limit: int | None,
    method: str,
) -> Range:
    """The options of ``list`` as one range of keys: ``start <= key < end`` (``start_after``
    and ``prefix`` narrow it), in order or reversed, at most ``limit``."""
    if start is not None and start_after is not None:
        raise StorageError(f"storage.{method}(): start and start_after cannot be combined")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise StorageError(f"storage.{method}(): limit must be a positive int, got {limit!r}")
    low = check_key(start, method) if start is not None else None
    if start_after is not None:
        low = check_key(start_after, method) + b"\0"  # the least key after it
    high = check_key(end, method) if end is not None else None
    if prefix is not None:
        raw = check_key(prefix, method)
        if raw:
            low = raw if low is None else max(low, raw)
            upper = _successor(raw)
            if upper is not None:
                high = upper if high is None else min(high, upper)
    return low, high, bool(reverse), limit


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def alarm_ms(when: datetime | int | float, method: str) -> int:
    if isinstance(when, datetime):
        return round(when.timestamp() * 1000)
    if isinstance(when, int | float) and not isinstance(when, bool):
        if when != when or not -(2**63) <= when < 2**63:
            raise StorageError(f"storage.{method}(): {when!r} is not a time")
        return round(when)
    raise TypeError(
        f"storage.{method}() takes a datetime or epoch milliseconds, got {type(when).__name__}"
    )
