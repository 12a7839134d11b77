"""The WebSocket frame codec alone: bytes in, events out (no sockets)."""

from __future__ import annotations

import os

import pytest
from websockets.utils import apply_mask

from opendo.server.codec import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_FAIL,
    OP_PING,
    OP_TEXT,
    FrameParser,
    close_frame,
    text_frame,
)


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def events(parser: FrameParser) -> list[tuple[int, object, object]]:
    out = []
    while (event := parser.next_event()) is not None:
        out.append(event)
    return out


def test_messages_pings_and_a_close() -> None:
    parser = FrameParser(1 << 20)
    parser.feed(frame(OP_TEXT, "hé".encode()) + frame(OP_BINARY, b"\x00\x01") + frame(OP_PING))
    parser.feed(frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    assert events(parser) == [
        (OP_TEXT, "hé", None),
        (OP_BINARY, b"\x00\x01", None),
        (OP_PING, b"", None),
        (OP_CLOSE, 1000, "bye"),
    ]


def test_fragments_are_one_message_and_pings_may_come_between() -> None:
    parser = FrameParser(1 << 20)
    parser.feed(frame(OP_TEXT, b"he", fin=False) + frame(OP_PING, b"p"))
    parser.feed(frame(OP_CONT, b"ll", fin=False) + frame(OP_CONT, b"o"))
    assert events(parser) == [(OP_PING, b"p", None), (OP_TEXT, "hello", None)]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_frame_fed_a_byte_at_a_time(size: int) -> None:
    parser = FrameParser(1 << 20)
    payload = ("é" * size).encode()[:size]
    payload = payload.decode(errors="ignore").encode()
    data = frame(OP_TEXT, payload)
    for i in range(len(data) - 1):
        parser.feed(data[i : i + 1])
        assert parser.next_event() is None
    parser.feed(data[-1:])
    assert parser.next_event() == (OP_TEXT, payload.decode(), None)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(OP_TEXT, b"x", rsv=0x40), 1002),
        (bytes((0x81, 0x01)) + b"x", 1002),  # not masked
        (frame(0x3, b""), 1002),  # reserved data opcode
        (frame(0xB, b""), 1002),  # reserved control opcode
        (frame(OP_PING, b"x" * 126), 1002),
        (frame(OP_PING, b"x", fin=False), 1002),
        (frame(OP_CONT, b"x"), 1002),
        (frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002),
        (frame(OP_CLOSE, b"\x03"), 1002),
        (frame(OP_CLOSE, (1005).to_bytes(2, "big")), 1002),
        (frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),
        (frame(OP_TEXT, b"\xff"), 1007),
        (frame(OP_TEXT, b"\xc3", fin=False) + frame(OP_CONT, b""), 1007),  # truncated at the end
    ],
    ids=lambda value: str(value) if isinstance(value, int) else "frame",  # masks are random
)
def test_violations_fail_with_their_code(data: bytes, code: int) -> None:
    parser = FrameParser(1 << 20)
    parser.feed(data)
    found = events(parser)
    assert found[-1][:2] == (OP_FAIL, code), found
    parser.feed(frame(OP_TEXT, b"after"))
    assert parser.next_event() is None  # nothing more is parsed after a failure


def test_a_message_over_the_limit_fails_from_its_header() -> None:
    parser = FrameParser(100)
    parser.feed(frame(OP_TEXT, b"x" * 60, fin=False))
    parser.feed(frame(OP_CONT, b"x" * 41)[:8])  # only the header of the second fragment
    assert events(parser) == [(OP_FAIL, 1009, "message too big")]


def test_invalid_text_fails_at_its_first_fragment_and_inside_a_frame() -> None:
    parser = FrameParser(1 << 20)
    parser.feed(frame(OP_TEXT, b"ok\xed\xa0\x80", fin=False))  # a surrogate, in fragment 1
    assert events(parser) == [(OP_FAIL, 1007, "invalid UTF-8 in a text message")]
    parser = FrameParser(1 << 20)
    parser.feed(frame(OP_TEXT, b"\xf4\x90\x80\x80" + b"x" * 1000)[:20])  # half a frame
    assert events(parser) == [(OP_FAIL, 1007, "invalid UTF-8 in a text message")]


def test_text_split_inside_a_character_is_valid() -> None:
    text = "aé€𝄞z".encode()
    parser = FrameParser(1 << 20)
    data = frame(OP_TEXT, text[:3], fin=False) + frame(OP_CONT, text[3:])
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        found = events(parser)
    assert found == [(OP_TEXT, "aé€𝄞z", None)]


def test_frames_out() -> None:
    assert text_frame("hi") == b"\x81\x02hi"
    assert close_frame(1000, "") == b"\x88\x02\x03\xe8"
    assert close_frame(None, "") == b"\x88\x00"
    big = "x" * 70000
    assert text_frame(big)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
