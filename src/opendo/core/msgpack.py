"""The reference implementation of opendo's value format (``core.codec``), in pure Python:
a MessagePack encoder and decoder that write and read exactly what the rules (``core.values``)
say, byte for byte the same as any accelerator."""

from __future__ import annotations

import datetime as _dt
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from .values import (
    _INT_MAX,
    _INT_MIN,
    BYTES_DECODERS,
    EXT_BIGINT,
    EXT_DATE,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_FROZENSET,
    EXT_SET,
    EXT_STR,
    EXT_TIME,
    EXT_TIMEDELTA,
    EXT_TIMESTAMP,
    EXT_TUPLE,
    FIELDS_DECODERS,
    MAX_DEPTH,
    DecodeError,
    Rejected,
    _Corrupt,
    bigint_payload,
    date_fields,
    datetime_fields,
    decimal_payload,
    time_fields,
    timedelta_fields,
)

__all__ = ["pure_decode", "pure_encode"]

# -- the reference encoder ------------------------------------------------------------------------

_pack_u8: Final = struct.Struct(">BB").pack  # an opcode and its argument
_pack_u16: Final = struct.Struct(">BH").pack
_pack_u32: Final = struct.Struct(">BI").pack
_pack_u64: Final = struct.Struct(">BQ").pack
_pack_i8: Final = struct.Struct(">Bb").pack
_pack_i16: Final = struct.Struct(">Bh").pack
_pack_i32: Final = struct.Struct(">Bi").pack
_pack_i64: Final = struct.Struct(">Bq").pack
_pack_f64: Final = struct.Struct(">Bd").pack
_pack_ts32: Final = struct.Struct(">2sI").pack  # MessagePack timestamps
_pack_ts64: Final = struct.Struct(">2sQ").pack
_pack_ts96: Final = struct.Struct(">3sIq").pack
_FIXEXT: Final = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
_EPOCH_UTC: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _pack_int(v: int, out: bytearray) -> None:
    if v >= 0:
        if v < 0x80:
            out.append(v)
        elif v < 0x100:
            out += _pack_u8(0xCC, v)
        elif v < 0x10000:
            out += _pack_u16(0xCD, v)
        elif v < 0x100000000:
            out += _pack_u32(0xCE, v)
        elif v <= _INT_MAX:
            out += _pack_u64(0xCF, v)
        else:
            _pack_ext(out, EXT_BIGINT, bigint_payload(v))
    elif v >= -0x20:
        out.append(v + 0x100)
    elif v >= -0x80:
        out += _pack_i8(0xD0, v)
    elif v >= -0x8000:
        out += _pack_i16(0xD1, v)
    elif v >= -0x80000000:
        out += _pack_i32(0xD2, v)
    elif v >= _INT_MIN:
        out += _pack_i64(0xD3, v)
    else:
        _pack_ext(out, EXT_BIGINT, bigint_payload(v))


def _pack_array_header(out: bytearray, n: int) -> None:
    if n < 0x10:
        out.append(0x90 | n)
    elif n < 0x10000:
        out += _pack_u16(0xDC, n)
    else:
        out += _pack_u32(0xDD, n)


def _pack_bin(out: bytearray, v: bytes | bytearray) -> None:
    n = len(v)
    if n < 0x100:
        out += _pack_u8(0xC4, n)
    elif n < 0x10000:
        out += _pack_u16(0xC5, n)
    else:
        out += _pack_u32(0xC6, n)
    out += v


def _pack_ext(out: bytearray, code: int, payload: bytes | bytearray) -> None:
    n = len(payload)
    op = _FIXEXT.get(n)
    if op is not None:
        out.append(op)
    elif n < 0x100:
        out += _pack_u8(0xC7, n)
    elif n < 0x10000:
        out += _pack_u16(0xC8, n)
    else:
        out += _pack_u32(0xC9, n)
    out.append(code & 0xFF)
    out += payload


def _pack_fields(out: bytearray, code: int, fields: list[int]) -> None:
    payload = bytearray()
    _pack_array_header(payload, len(fields))
    for f in fields:
        _pack_int(f, payload)
    _pack_ext(out, code, payload)


def _pack_datetime(v: _dt.datetime, out: bytearray) -> None:
    if v.tzinfo is not _dt.UTC or v.fold:
        fields = datetime_fields(v)
        if fields is not None:
            _pack_fields(out, EXT_DATETIME, fields)
            return
    since = v - _EPOCH_UTC  # a MessagePack timestamp (offset 0)
    seconds = since.days * 86400 + since.seconds
    nanoseconds = since.microseconds * 1000
    if seconds >> 34 == 0:
        data64 = nanoseconds << 34 | seconds
        if data64 >> 32 == 0:
            out += _pack_ts32(b"\xd6\xff", data64)
        else:
            out += _pack_ts64(b"\xd7\xff", data64)
    else:
        out += _pack_ts96(b"\xc7\x0c\xff", nanoseconds, seconds)


_LEAVES: Final[dict[type, Callable[[Any, bytearray], None]]] = {
    _dt.datetime: _pack_datetime,
    _dt.date: lambda v, out: _pack_fields(out, EXT_DATE, date_fields(v)),
    _dt.time: lambda v, out: _pack_fields(out, EXT_TIME, time_fields(v)),
    _dt.timedelta: lambda v, out: _pack_fields(out, EXT_TIMEDELTA, timedelta_fields(v)),
    Decimal: lambda v, out: _pack_ext(out, EXT_DECIMAL, decimal_payload(v)),
    memoryview: lambda v, out: _pack_bin(out, v.tobytes()),
}


def _pack(v: Any, depth: int, out: bytearray) -> None:
    """Append ``v``, which has ``depth`` containers around it, to ``out``.

    Containers are handled inline, so that each level of nesting costs one Python frame.
    """
    t = type(v)
    if t is str:
        try:
            data = v.encode()
        except UnicodeEncodeError:  # a lone surrogate
            _pack_ext(out, EXT_STR, v.encode("utf-8", "surrogatepass"))
            return
        n = len(data)
        if n < 0x20:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += _pack_u8(0xD9, n)
        elif n < 0x10000:
            out += _pack_u16(0xDA, n)
        else:
            out += _pack_u32(0xDB, n)
        out += data
    elif t is int:
        if 0 <= v < 0x80:
            out.append(v)
        else:
            _pack_int(v, out)
    elif t is float:
        out += _pack_f64(0xCB, v)
    elif t is bool:
        out.append(0xC3 if v else 0xC2)
    elif v is None:
        out.append(0xC0)
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        n = len(v)
        if n < 0x10:
            out.append(0x80 | n)
        elif n < 0x10000:
            out += _pack_u16(0xDE, n)
        else:
            out += _pack_u32(0xDF, n)
        depth += 1
        k: Any = None
        try:
            for k, x in v.items():
                _pack(k, depth, out)
                _pack(x, depth, out)
        except Rejected as e:
            e.in_mapping(v, k)
            raise
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        payload = out if t is list else bytearray()
        _pack_array_header(payload, len(v))
        depth += 1
        try:
            for x in v:
                _pack(x, depth, payload)
        except Rejected as e:
            e.in_sequence(v)
            raise
        if t is tuple:
            _pack_ext(out, EXT_TUPLE, payload)
    elif t is bytes or t is bytearray:
        _pack_bin(out, v)
    elif t is set or t is frozenset:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        depth += 1
        items: list[bytearray] = []
        try:
            for x in v:
                item = bytearray()
                _pack(x, depth, item)
                items.append(item)
        except Rejected as e:
            e.in_set(v)
            raise
        items.sort()  # iteration order depends on the hash seed: sort for stable bytes
        payload = bytearray()
        _pack_array_header(payload, len(items))
        payload += b"".join(items)
        _pack_ext(out, EXT_SET if t is set else EXT_FROZENSET, payload)
    else:
        pack = _LEAVES.get(t)
        if pack is None:
            raise Rejected(v)
        pack(v, out)


def pure_encode(value: object) -> bytes:
    """``encode``, by the reference implementation."""
    out = bytearray()
    try:
        _pack(value, 0, out)
    except Rejected as e:
        raise e.error() from None
    except RecursionError:
        raise Rejected.recursion_error() from None
    return bytes(out)


# -- the reference decoder ------------------------------------------------------------------------

_Unpack = Callable[[bytes, int], tuple[Any, ...]]
_u8: Final = struct.Struct(">B").unpack_from
_u16: Final = struct.Struct(">H").unpack_from
_u32: Final = struct.Struct(">I").unpack_from
_u64: Final = struct.Struct(">Q").unpack_from
_unpack_ts96: Final = struct.Struct(">Iq").unpack_from
_NUMBERS: Final[dict[int, tuple[_Unpack, int]]] = {  # opcode: (its reader, its size)
    op: (struct.Struct(">" + code).unpack_from, struct.calcsize(code))
    for op, code in zip(range(0xCA, 0xD4), "fdBHIQbhiq", strict=True)
}
_CONSTANTS: Final = {0xC0: None, 0xC2: False, 0xC3: True}
_STR, _BIN, _ARRAY, _MAP, _EXT = range(5)  # the kinds of item with a length
_SIZED: Final[dict[int, tuple[int, _Unpack, int]]] = {  # opcode: (kind, its length's reader)
    0xC4: (_BIN, _u8, 1), 0xC5: (_BIN, _u16, 2), 0xC6: (_BIN, _u32, 4),
    0xC7: (_EXT, _u8, 1), 0xC8: (_EXT, _u16, 2), 0xC9: (_EXT, _u32, 4),
    0xD9: (_STR, _u8, 1), 0xDA: (_STR, _u16, 2), 0xDB: (_STR, _u32, 4),
    0xDC: (_ARRAY, _u16, 2), 0xDD: (_ARRAY, _u32, 4), 0xDE: (_MAP, _u16, 2), 0xDF: (_MAP, _u32, 4),
}  # fmt: skip
_INT_OPS: Final = (
    frozenset(range(0x80)) | frozenset(range(0xCC, 0xD4)) | frozenset(range(0xE0, 256))
)
_TRUNCATED: Final = "it is truncated"
_SECONDS_MIN: Final = -62135596800  # 0001-01-01T00:00:00Z
_SECONDS_MAX: Final = 253402300799  # 9999-12-31T23:59:59Z


def _unpack(data: bytes, i: int) -> tuple[Any, int]:
    """The value that starts at ``data[i]``, and the index after it.

    Containers are handled inline, so that each level of nesting costs one Python frame. A
    read past the end raises ``IndexError`` or ``struct.error``.
    """
    op = data[i]
    i += 1
    if op < 0x80:
        return op, i
    if op >= 0xE0:
        return op - 0x100, i
    if op < 0xC0:
        kind = _STR if op >= 0xA0 else _ARRAY if op >= 0x90 else _MAP
        n = op & (0x1F if op >= 0xA0 else 0x0F)
    elif op in _NUMBERS:
        unpack, size = _NUMBERS[op]
        return unpack(data, i)[0], i + size
    elif op in _CONSTANTS:
        return _CONSTANTS[op], i
    elif 0xD4 <= op <= 0xD8:
        kind, n = _EXT, 1 << (op - 0xD4)
    elif op in _SIZED:
        kind, unpack, size = _SIZED[op]
        n = unpack(data, i)[0]
        i += size
    else:
        raise _Corrupt(f"invalid opcode 0xc1 (byte {i - 1})")
    if kind <= _BIN:
        j = i + n
        if j > len(data):
            raise _Corrupt(_TRUNCATED)
        return (data[i:j].decode() if kind == _STR else data[i:j]), j
    if kind == _MAP:
        if 2 * n > len(data) - i:
            raise _Corrupt(_TRUNCATED)
        mapping: dict[Any, Any] = {}
        for _ in range(n):
            op = data[i]
            if 0xA0 <= op <= 0xBF:  # a short str key, inline: most keys are
                j = i + 1 + (op & 0x1F)
                if j > len(data):
                    raise _Corrupt(_TRUNCATED)
                k, i = data[i + 1 : j].decode(), j
            else:
                k, i = _unpack_key(data, i)
            mapping[k], i = _unpack(data, i)  # TypeError if k is not hashable
        return mapping, i
    if kind == _ARRAY:
        if n > len(data) - i:
            raise _Corrupt(_TRUNCATED)
        items: list[Any] = []
        append = items.append
        for _ in range(n):
            x, i = _unpack(data, i)
            append(x)
        return items, i
    code = _u8(data, i)[0]
    code -= (code & 0x80) << 1  # a signed byte
    i += 1
    j = i + n
    if j > len(data):
        raise _Corrupt(_TRUNCATED)
    payload = data[i:j]
    if code != EXT_TUPLE and code != EXT_SET and code != EXT_FROZENSET:
        return _unpack_ext(code, payload), j
    n, i = _array_header(payload, 0)
    items = []
    for _ in range(n):
        x, i = _unpack(payload, i)
        items.append(x)
    if i != len(payload):
        raise _Corrupt(f"trailing bytes in an extension {code} payload")
    if code == EXT_TUPLE:
        return tuple(items), j
    return (set(items) if code == EXT_SET else frozenset(items)), j  # TypeError if unhashable


def _unpack_key(data: bytes, i: int) -> tuple[Any, int]:
    """As ``_unpack``, for a map key: an array becomes a tuple (so do arrays in it)."""
    op = data[i]
    if 0xA0 <= op <= 0xBF:
        j = i + 1 + (op & 0x1F)
        if j > len(data):
            raise _Corrupt(_TRUNCATED)
        return data[i + 1 : j].decode(), j
    if not (0x90 <= op <= 0x9F or op == 0xDC or op == 0xDD):
        return _unpack(data, i)
    n, i = _array_header(data, i)
    items: list[Any] = []
    for _ in range(n):
        x, i = _unpack_key(data, i)
        items.append(x)
    return tuple(items), i


def _array_header(data: bytes, i: int) -> tuple[int, int]:
    """The length of the array at ``data[i]``, and the index of its first item."""
    op = data[i]
    if 0x90 <= op <= 0x9F:
        n, i = op & 0x0F, i + 1
    elif op == 0xDC:
        n, i = _u16(data, i + 1)[0], i + 3
    elif op == 0xDD:
        n, i = _u32(data, i + 1)[0], i + 5
    else:
        raise _Corrupt("an extension payload is not an array")
    if n > len(data) - i:
        raise _Corrupt(_TRUNCATED)
    return n, i


def _unpack_ext(code: int, payload: bytes) -> object:
    if code == EXT_TIMESTAMP:
        return _timestamp(payload)
    from_fields = FIELDS_DECODERS.get(code)
    if from_fields is not None:
        n, i = _array_header(payload, 0)
        fields: list[int] = []
        for _ in range(n):
            if payload[i] not in _INT_OPS:
                raise _Corrupt(f"extension {code} holds something other than an int")
            f, i = _unpack(payload, i)
            fields.append(f)
        if i != len(payload):
            raise _Corrupt(f"trailing bytes in an extension {code} payload")
        return from_fields(fields)
    from_bytes = BYTES_DECODERS.get(code)
    if from_bytes is None:
        raise _Corrupt(f"unknown extension type {code}")
    return from_bytes(payload)


def _timestamp(payload: bytes) -> _dt.datetime:
    size = len(payload)
    if size == 4:
        seconds, nanoseconds = _u32(payload, 0)[0], 0
    elif size == 8:
        data64 = _u64(payload, 0)[0]
        seconds, nanoseconds = data64 & 0x3FFFFFFFF, data64 >> 34
    elif size == 12:
        nanoseconds, seconds = _unpack_ts96(payload)
    else:
        raise _Corrupt(f"a MessagePack timestamp has 4, 8 or 12 bytes, not {size}")
    if nanoseconds > 999_999_999:
        raise _Corrupt("a MessagePack timestamp's nanoseconds are out of range")
    if not _SECONDS_MIN <= seconds <= _SECONDS_MAX:
        raise _Corrupt("a MessagePack timestamp is out of datetime's range")
    # Rounded to the nearest microsecond, half up; OverflowError past 9999-12-31.
    return _EPOCH_UTC + _dt.timedelta(0, seconds, (nanoseconds + 500) // 1000)


# TypeError: an unhashable set item or map key; ArithmeticError: an out-of-range date or
# decimal.InvalidOperation; RecursionError: too deep; UnicodeDecodeError is a ValueError.
_DECODE_FAILURES: Final = (ValueError, TypeError, ArithmeticError, RecursionError)


def pure_decode(data: bytes | bytearray | memoryview) -> object:
    """``decode``, by the reference implementation."""
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise TypeError(f"decode() expects bytes, got {type(data).__qualname__}")
        data = bytes(data)
    try:
        value, end = _unpack(data, 0)
    except (IndexError, struct.error):
        raise DecodeError(f"cannot decode a stored value: {_TRUNCATED}") from None
    except _DECODE_FAILURES as e:
        raise DecodeError(f"cannot decode a stored value: {e}") from e
    if end != len(data):
        raise DecodeError(f"cannot decode a stored value: trailing bytes (byte {end})")
    return value
