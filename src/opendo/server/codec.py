"""The WebSocket frame codec (RFC 6455 sections 5 and 7): bytes in, messages out, no I/O.

``FrameParser`` takes bytes from a client as they come (``feed``) and hands out one event at a
time (``next_event``): a whole message (fragments joined), a ping, a pong, a close, or a
failure that says which close code to fail the connection with. It checks what a server must
check: client frames are masked, reserved bits are clear, control frames are whole and at most
125 bytes, fragments follow the rules, a message is at most ``max_message`` bytes (checked
from the frame header, before its payload is read), a close frame's code and reason are valid,
and text is UTF-8 — checked as the bytes arrive, so a connection that sends invalid text fails
at the first bad byte, not at the end of its message.

The frame builders are the other direction. A server does not mask, so one message is the same
bytes for every client: ``text_frame`` remembers the last text it framed, and a loop that sends
one message to many sockets frames it once.

The connection that drives this (``_wsnative``) only moves bytes and schedules; what the bytes
mean is decided here.
"""

from __future__ import annotations

import codecs

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C helper
    from websockets.utils import apply_mask

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_FAIL",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameParser",
    "binary_frame",
    "close_frame",
    "pong_frame",
    "text_frame",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OP_FAIL = -1  # not an opcode: the connection must fail, with (code, reason)

_Decoder = codecs.getincrementaldecoder("utf-8")


def _header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


_last_text: str | None = None  # the frame-once cache for broadcasts
_last_frame = b""
_CACHE_FRAMES_UP_TO = 64 * 1024


def text_frame(text: str) -> bytes:
    """A whole, unmasked text frame; the same ``str`` object is framed only once."""
    global _last_text, _last_frame
    if text is _last_text:
        return _last_frame
    payload = text.encode()
    frame = _header(0x80 | OP_TEXT, len(payload)) + payload
    if len(frame) <= _CACHE_FRAMES_UP_TO:
        _last_text, _last_frame = text, frame
    return frame


def binary_frame(data: bytes) -> bytes:
    return _header(0x80 | OP_BINARY, len(data)) + data


def pong_frame(payload: bytes) -> bytes:
    return _header(0x80 | OP_PONG, len(payload)) + payload


def close_frame(code: int | None, reason: str) -> bytes:
    payload = b"" if code is None else code.to_bytes(2, "big") + reason.encode()[:123]
    return _header(0x80 | OP_CLOSE, len(payload)) + payload


Event = tuple[int, object, object]  # (opcode or OP_FAIL, payload or code, reason)


def valid_close_code(code: int) -> bool:
    """A code a peer may send in a close frame (RFC 6455 7.4, and the IANA registry)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


class FrameParser:
    """Frames from one client, parsed incrementally. ``next_event()`` returns

    - ``(OP_TEXT, str, None)`` / ``(OP_BINARY, bytes, None)``: a whole message;
    - ``(OP_PING, payload, None)`` / ``(OP_PONG, payload, None)``;
    - ``(OP_CLOSE, code or None, reason)``: the peer's close (already checked);
    - ``(OP_FAIL, code, reason)``: fail the connection (nothing more is parsed);
    - ``None``: more bytes are needed.
    """

    __slots__ = (
        "max_message",
        "_buffer",
        "_pos",
        "_fragments",
        "_fragment_opcode",
        "_fragment_size",
        "_decoder",
        "_partial",
        "_failed",
    )

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = b""
        self._pos = 0
        self._fragments: list[bytes | str] | None = None  # a fragmented message so far
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None  # for fragmented text
        self._partial: _Partial | None = None  # a text frame whose payload is still arriving
        self._failed = False

    def feed(self, data: bytes) -> None:
        if self._failed or not data:
            return
        if self._pos == len(self._buffer):
            self._buffer, self._pos = data, 0
        else:
            self._buffer = self._buffer[self._pos :] + data
            self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._pos

    def next_event(self) -> Event | None:
        while not self._failed:
            buf, pos = self._buffer, self._pos
            end = len(buf)
            if end - pos < 2:
                return None
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                return self._fail(1002, "reserved bits set")
            if not b1 & 0x80:
                return self._fail(1002, "a client's frames must be masked")
            length, head = b1 & 0x7F, pos + 2
            if length == 126:
                if end - pos < 4:
                    return None
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if end - pos < 10:
                    return None
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if opcode == OP_CLOSE or opcode == OP_PING or opcode == OP_PONG:
                if not fin or length > 125:
                    return self._fail(1002, "control frames must be whole and at most 125 bytes")
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragments is not None:
                    return self._fail(1002, "expected a continuation frame")
            elif opcode == OP_CONT:
                if self._fragments is None:
                    return self._fail(1002, "unexpected continuation frame")
            else:
                return self._fail(1002, f"unknown opcode {opcode}")
            if length > self.max_message or (
                opcode == OP_CONT and self._fragment_size + length > self.max_message
            ):
                return self._fail(1009, "message too big")
            if end - head < 4 + length:
                if end - head >= 4 and self._is_text(opcode):
                    failure = self._check_partial_text(buf, head, end, length)
                    if failure is not None:
                        return failure
                return None
            mask = buf[head : head + 4]
            start = head + 4
            payload = apply_mask(buf[start : start + length], mask)
            self._pos = start + length
            event = self._frame(fin, opcode, payload)
            if event is not None:
                return event
        return None

    # -- one whole frame ------------------------------------------------------------------

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        partial, self._partial = self._partial, None
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if fin:
                if opcode == OP_BINARY:
                    return (OP_BINARY, payload, None)
                if partial is not None:
                    text = _finish(partial, payload, final=True)
                else:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        text = None
                if text is None:
                    return self._fail(1007, "invalid UTF-8 in a text message")
                return (OP_TEXT, text, None)
            self._fragment_opcode, self._fragment_size = opcode, len(payload)
            if opcode == OP_TEXT:
                self._decoder = partial.decoder if partial is not None else _Decoder()
                piece = _finish(partial, payload, final=False, decoder=self._decoder)
                if piece is None:
                    return self._fail(1007, "invalid UTF-8 in a text message")
                self._fragments = [piece]
            else:
                self._fragments = [payload]
            return None
        if opcode == OP_CONT:
            fragments = self._fragments
            assert fragments is not None
            self._fragment_size += len(payload)
            if self._fragment_opcode == OP_TEXT:
                decoder = self._decoder
                assert decoder is not None
                piece = _finish(partial, payload, final=bool(fin), decoder=decoder)
                if piece is None:
                    return self._fail(1007, "invalid UTF-8 in a text message")
                fragments.append(piece)
            else:
                fragments.append(payload)
            if not fin:
                return None
            self._fragments, self._decoder = None, None
            if self._fragment_opcode == OP_TEXT:
                return (OP_TEXT, "".join(fragments), None)  # type: ignore[arg-type]
            return (OP_BINARY, b"".join(fragments), None)  # type: ignore[arg-type]
        if opcode == OP_PING:
            return (OP_PING, payload, None)
        if opcode == OP_PONG:
            return (OP_PONG, payload, None)
        return self._close(payload)

    def _close(self, payload: bytes) -> Event:
        if len(payload) == 1:
            return self._fail(1002, "bad close frame")
        if not payload:
            return (OP_CLOSE, None, "")
        code = int.from_bytes(payload[:2], "big")
        if not valid_close_code(code):
            return self._fail(1002, "bad close code")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            return self._fail(1007, "invalid UTF-8 in a close reason")
        return (OP_CLOSE, code, reason)

    def _fail(self, code: int, reason: str) -> Event:
        self._failed = True
        self._buffer, self._pos = b"", 0
        return (OP_FAIL, code, reason)

    # -- text whose frame is still arriving: fail at the first bad byte --------------------

    def _is_text(self, opcode: int) -> bool:
        return opcode == OP_TEXT or (opcode == OP_CONT and self._fragment_opcode == OP_TEXT)

    def _check_partial_text(self, buf: bytes, head: int, end: int, length: int) -> Event | None:
        """Decode what has arrived of a text frame's payload (kept, so it is decoded once)."""
        partial = self._partial  # always about the frame at the start of the buffer
        if partial is None:
            decoder = self._decoder if self._fragments is not None else None
            partial = self._partial = _Partial(decoder or _Decoder())
        start = head + 4
        available = min(end - start, length)
        done = partial.decoded_bytes
        if available <= done:
            return None
        mask = buf[head : head + 4]
        shift = done % 4
        piece = apply_mask(buf[start + done : start + available], mask[shift:] + mask[:shift])
        try:
            partial.pieces.append(partial.decoder.decode(piece, False))
        except UnicodeDecodeError:
            return self._fail(1007, "invalid UTF-8 in a text message")
        partial.decoded_bytes = available
        return None


class _Partial:
    """What has been decoded of one text frame's payload before the whole frame arrived."""

    __slots__ = ("decoder", "pieces", "decoded_bytes")

    def __init__(self, decoder: codecs.IncrementalDecoder) -> None:
        self.decoder = decoder
        self.pieces: list[str] = []
        self.decoded_bytes = 0


def _finish(
    partial: _Partial | None,
    payload: bytes,
    *,
    final: bool,
    decoder: codecs.IncrementalDecoder | None = None,
) -> str | None:
    """The text of a frame's whole payload (what ``partial`` decoded, and the rest), or None
    if it is not valid UTF-8."""
    if partial is not None:
        decoder = partial.decoder
        pieces, rest = partial.pieces, payload[partial.decoded_bytes :]
    else:
        pieces, rest = [], payload
    if decoder is None:
        decoder = _Decoder()
    try:
        pieces.append(decoder.decode(rest, final))
    except UnicodeDecodeError:
        return None
    return "".join(pieces)
