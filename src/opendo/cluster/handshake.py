"""Node authentication: a mutual challenge-response on the secret the nodes of a cluster share.

Before a connection between two nodes carries a call, each side proves that it knows the
secret, without sending it::

    listener -> dialer   challenge   the listener's nonce (32 random bytes)
    dialer -> listener   proof       the dialer's nonce, and
                                     HMAC-SHA256(secret, "opendo-node/client" + dialer's nonce
                                                 + listener's nonce)
    listener -> dialer   answer      HMAC-SHA256(secret, "opendo-node/server" + dialer's nonce
                                                 + listener's nonce)

Each side checks the other's code with ``hmac.compare_digest`` (in constant time). The nonces
are new for every connection, so a recorded handshake cannot be replayed, and the two labels
differ, so one side's code cannot be sent back as the other's. The listener answers only a
dialer that proved itself: a stranger that connects gets nothing computed from the secret. A
listener that refuses a proof says so (``refused``) before it closes, so that the dialer can
tell a refusal from a crash.

Every handshake message is one frame: the 4-byte big-endian length of ``runtime.wire``, and a
payload of fixed layout that starts with ``opendo-node/1``. Before a peer is authenticated,
nothing it sends is decoded as a message, and at most ``MAX_HANDSHAKE_BYTES`` (4 KiB) of it is
buffered: a frame that says it is longer is refused from its first four bytes.

This module is the protocol alone (no I/O, no clock): ``cluster.forwarder`` runs it on each
connection, with its timeouts.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ..core.errors import DurableObjectError

__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "NONCE_BYTES",
    "DialerHandshake",
    "HandshakeError",
    "ListenerHandshake",
    "NodeAuthenticationError",
]

NONCE_BYTES = 32
MAX_HANDSHAKE_BYTES = 4096
_HEADER = 4
_MAC_BYTES = hashlib.sha256().digest_size
_MAGIC = b"opendo-node/1 "
_CHALLENGE = _MAGIC + b"challenge "
_PROOF = _MAGIC + b"proof "
_ANSWER = _MAGIC + b"answer "
_REFUSED = _MAGIC + b"refused"
_CLIENT = b"opendo-node/client"
_SERVER = b"opendo-node/server"


class HandshakeError(Exception):
    """The peer failed the handshake (the message says how); ``reply`` is what to send it
    before the connection closes (empty: nothing)."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


class NodeAuthenticationError(DurableObjectError):
    """A call could not be forwarded: the node that owns the object and this one do not
    prove to each other that they share the cluster's secret. Nothing was sent to it."""


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(_HEADER, "big") + payload


def _take(buffer: bytearray) -> bytes | None:
    """The payload of the frame at the front of ``buffer`` (taken off it), once it is whole."""
    if len(buffer) < _HEADER:
        return None
    size = int.from_bytes(buffer[:_HEADER], "big")
    if size > MAX_HANDSHAKE_BYTES:
        raise HandshakeError(
            f"it sent a frame of {size} bytes before it was authenticated (at most "
            f"{MAX_HANDSHAKE_BYTES})"
        )
    if len(buffer) < _HEADER + size:
        return None
    payload = bytes(buffer[_HEADER : _HEADER + size])
    del buffer[: _HEADER + size]
    return payload


def _fields(payload: bytes, prefix: bytes, size: int, what: str) -> bytes:
    if not payload.startswith(prefix) or len(payload) != len(prefix) + size:
        shown = payload[:40]
        raise HandshakeError(f"it sent {shown!r} where an opendo node sends its {what}")
    return payload[len(prefix) :]


def _mac(secret: bytes, label: bytes, dialer: bytes, listener: bytes) -> bytes:
    return hmac.new(secret, label + dialer + listener, hashlib.sha256).digest()


class ListenerHandshake:
    """The listening side: ``start()`` is the challenge to send; ``receive`` reads the proof,
    and returns the answer once it is right (``done``)."""

    __slots__ = ("_secret", "_nonce", "done")

    def __init__(self, secret: bytes, nonce: bytes | None = None) -> None:
        self._secret = secret
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self.done = False

    def start(self) -> bytes:
        return _frame(_CHALLENGE + self._nonce)

    def receive(self, buffer: bytearray) -> bytes:
        """What to send back (b"" while the proof has not all arrived); raises
        ``HandshakeError`` for a wrong one."""
        if self.done:
            return b""
        payload = _take(buffer)
        if payload is None:
            return b""
        fields = _fields(payload, _PROOF, NONCE_BYTES + _MAC_BYTES, "proof")
        theirs, mac = fields[:NONCE_BYTES], fields[NONCE_BYTES:]
        expected = _mac(self._secret, _CLIENT, theirs, self._nonce)
        if not hmac.compare_digest(mac, expected):
            raise HandshakeError(
                "its proof is wrong: it does not know this cluster's secret", _frame(_REFUSED)
            )
        self.done = True
        return _frame(_ANSWER + _mac(self._secret, _SERVER, theirs, self._nonce))


class DialerHandshake:
    """The dialing side: ``receive`` reads the challenge and returns the proof, then reads
    the answer and checks it (``done``)."""

    __slots__ = ("_secret", "_nonce", "_theirs", "done")

    def __init__(self, secret: bytes, nonce: bytes | None = None) -> None:
        self._secret = secret
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self._theirs: bytes | None = None
        self.done = False

    def receive(self, buffer: bytearray) -> bytes:
        """What to send back (b"" if nothing); raises ``HandshakeError`` when the listener
        refused this side, or did not prove itself."""
        out = b""
        while not self.done and (payload := _take(buffer)) is not None:
            if self._theirs is None:
                self._theirs = _fields(payload, _CHALLENGE, NONCE_BYTES, "challenge")
                mac = _mac(self._secret, _CLIENT, self._nonce, self._theirs)
                out += _frame(_PROOF + self._nonce + mac)
                continue
            if payload == _REFUSED:
                raise HandshakeError("it refused this node's proof: their secrets differ")
            mac = _fields(payload, _ANSWER, _MAC_BYTES, "answer")
            if not hmac.compare_digest(mac, _mac(self._secret, _SERVER, self._nonce, self._theirs)):
                raise HandshakeError(
                    "its answer is wrong: it does not know this cluster's secret (it is not a "
                    "node of this cluster, or its secret differs)"
                )
            self.done = True
        return out
