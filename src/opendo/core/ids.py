"""Durable Object ids.

An id is 32 bytes, printed as 64 lowercase hex digits:

    body (16 bytes) | tag = HMAC-SHA256(namespace key, body)[:16]

``body`` is HMAC-SHA256(namespace key, "name:" + name)[:16] for ids made from a name (so the
same name always gives the same id in one namespace, and different ids in different
namespaces), and 16 random bytes for unique ids. The tag lets ``id_from_string`` reject a
malformed id, or an id of another namespace, without any lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["DurableObjectId", "NamespaceKey"]

_BODY = 16
_NAMED_CACHE = 4096
_UNIQUE_FLAG = 0x80  # top bit of the body's first byte: set for unique ids, clear for named ones


class NamespaceKey:
    """The secret that makes one namespace's ids its own."""

    __slots__ = ("_key", "label", "_named")

    def __init__(self, label: str) -> None:
        self.label = label
        self._key = hashlib.sha256(b"opendo-namespace\x00" + label.encode()).digest()
        self._named: dict[str, DurableObjectId] = {}  # recently made from a name

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_BODY]

    def from_name(self, name: str) -> DurableObjectId:
        known = self._named.get(name)
        if known is not None:
            return known
        if not isinstance(name, str):
            raise TypeError(f"id_from_name() expects a str, got {type(name).__name__}")
        digest = hmac.new(self._key, b"name:" + name.encode(), hashlib.sha256).digest()
        body = bytes([digest[0] & ~_UNIQUE_FLAG & 0xFF]) + digest[1:_BODY]
        id = DurableObjectId(body + self._tag(body), name=name, namespace=self)
        if len(self._named) >= _NAMED_CACHE:
            self._named.clear()
        self._named[name] = id
        return id

    def new_unique(self) -> DurableObjectId:
        raw = secrets.token_bytes(_BODY)
        body = bytes([raw[0] | _UNIQUE_FLAG]) + raw[1:]
        return DurableObjectId(body + self._tag(body), name=None, namespace=self)

    def from_string(self, text: str) -> DurableObjectId:
        if not isinstance(text, str):
            raise TypeError(f"id_from_string() expects a str, got {type(text).__name__}")
        if len(text) != 2 * 2 * _BODY:
            raise ValueError(
                f"invalid Durable Object id {text[:80]!r}: expected 64 hex digits, "
                f"got {len(text)} characters"
            )
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(
                f"invalid Durable Object id {text!r}: expected 64 hex digits"
            ) from None
        body, tag = raw[:_BODY], raw[_BODY:]
        if not hmac.compare_digest(tag, self._tag(body)):
            raise ValueError(
                f"Durable Object id {text!r} does not belong to namespace {self.label!r} "
                "(it is malformed or was made by another namespace)"
            )
        return DurableObjectId(raw, name=None, namespace=self)


class DurableObjectId:
    """The identity of one Durable Object: 64 hex digits, compared by value."""

    __slots__ = ("_raw", "_hex", "name", "_namespace")
    _rpc_by_reference = True  # passed as it is over RPC

    def __init__(self, raw: bytes, *, name: str | None, namespace: NamespaceKey) -> None:
        self._raw = raw
        self._hex = raw.hex()
        self.name = name
        self._namespace = namespace

    @property
    def namespace_key(self) -> NamespaceKey:
        """The key of the namespace this id belongs to."""
        return self._namespace

    def equals(self, other: object) -> bool:
        return self == other

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DurableObjectId):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)

    def __str__(self) -> str:
        return self._hex

    def __repr__(self) -> str:
        if self.name is not None:
            return f"DurableObjectId({self._hex!r}, name={self.name!r})"
        return f"DurableObjectId({self._hex!r})"
