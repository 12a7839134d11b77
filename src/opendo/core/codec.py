"""Values: what a Durable Object can store, and how it is written down.

Storage needs one way to turn a Python value into bytes and back (and RPC one way to copy a
value, with the same types: ``clone``). It must be exact, because a value read back should be
the value that was written; safe, because the bytes outlive the process that wrote them and
may be read by another version of the code, or be damaged on disk; and fast, because every
``get`` and ``put`` pays for it. ``pickle`` fails
the second test (unpickling runs code and builds any class), JSON fails the first (no bytes,
no tuples, no sets, no ``-0.0`` or ``nan``, no integer keys). This module is Python's
analogue of the structured clone that Workers use: a fixed set of plain data types, and
nothing else.

Format. The bytes are MessagePack. Types that MessagePack has natively (nil, booleans,
integers up to 64 bits, 64-bit floats, UTF-8 strings, binary, arrays, maps, and timestamps,
used for aware datetimes in UTC) are written as themselves; every other supported type is a
MessagePack extension with a small type code (the ``EXT_*`` constants) whose payload is itself
MessagePack, or plain bytes. Every item takes the smallest MessagePack form that holds it
(floats are always 64-bit; a timestamp is the 32-bit form for whole seconds in
[0, 2**32), the 64-bit form for [0, 2**34), and the 96-bit form otherwise). The format does not
depend on the platform, the Python version or the hash seed, and the same value always gives
the same bytes (a set's items are written sorted by their encoding, not in iteration order).
Decoding never imports, calls or builds anything but the types below, and bytes that are not
a valid encoding raise ``DecodeError``. It accepts what another MessagePack writer may choose
differently: wider integer and length forms, 32-bit floats, timestamps with nanoseconds
(rounded to microseconds, half up), arrays as map keys (they become tuples).

Two implementations. This module holds the reference: the format's rules, and an encoder and
a decoder in plain Python (``pure_encode``, ``pure_decode``), standard library only.
``encode`` and ``decode`` call an accelerator when one is installed (``install``): a faster
implementation that must write byte for byte what the reference writes and read everything it
reads, as the standard library's ``json`` plugs in ``_json``. opendo's is
``opendo.storage.fastcodec`` (on msgspec, in C), which reuses the rules, type codes and errors
defined here; tests hold the two to the same bytes.

Types. ``decode(encode(v)) == v``, with the same type at every level:

=========================  ======================================================================
Type                       Notes
=========================  ======================================================================
``None``, ``bool``         ``True`` stays ``True``: it never becomes ``1``
``int``                    any size; ``1``, ``1.0`` and ``True`` stay distinct
``float``                  every value, including ``nan``, ``inf`` and ``-0.0`` (bit-exact)
``str``                    any ``str``, including lone surrogates
``bytes``                  ``bytearray`` and ``memoryview`` are accepted, and come back as
                           ``bytes`` (a memoryview's content is ``memoryview.tobytes()``)
``list``, ``tuple``        a tuple stays a tuple
``dict``                   insertion order kept; keys may be any hashable supported value
                           (``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes``,
                           ``tuple``, ``frozenset``, dates and times, ``Decimal``)
``set``, ``frozenset``
``datetime.datetime``      naive stays naive; an aware datetime keeps its UTC offset, but
                           its ``tzinfo`` comes back as a fixed-offset ``datetime.timezone``
                           (a ``ZoneInfo("Europe/Paris")`` datetime comes back as the same
                           instant with ``timezone(timedelta(hours=1))``, or 2 in summer;
                           any offset of 0 comes back as ``timezone.utc``); ``fold`` is kept
``datetime.time``          as ``datetime``: the offset is kept, the tzinfo object is not
                           (a ``ZoneInfo`` time has no offset, and is stored naive)
``datetime.date``,
``datetime.timedelta``
``decimal.Decimal``        exactly, including its exponent (``Decimal("1.10")``), ``NaN``,
                           ``sNaN``, ``Infinity`` and ``-0``
=========================  ======================================================================

One consequence of Python's own rules: a ``ZoneInfo`` datetime in the hour that repeats (when
clocks go back) comes back as the same instant, but Python compares it unequal to any datetime
of another time zone, so ``decode(encode(v)) != v`` for it (PEP 495).

Only these exact types are accepted: a subclass (an ``IntEnum`` or ``StrEnum`` member, a
``namedtuple``, an ``OrderedDict``, a ``defaultdict``, a ``datetime`` subclass such as a pandas
``Timestamp``) is rejected rather than silently stored as its base type and read back as
something else. Convert it first (``member.value``, ``tuple(nt)``, ``dict(d)``). Anything else
(class instances, dataclasses, functions, ``complex``, ``uuid.UUID``...) raises ``CodecError``,
a ``TypeError`` whose message names the type and where it was, as in
``value['items'][2]``.

Limits. Containers (lists, tuples, dicts, sets, frozensets) may be nested at most
``MAX_DEPTH`` (256) deep; deeper values, and values that contain themselves, raise
``CodecError`` (never ``RecursionError`` or an endless loop). The limit leaves room under
Python 3.11's recursion limit of 1000, which the interpreter and C extensions share: each
level costs the reference one frame to encode or decode, and msgspec about three to decode a
nested tuple. (``decode`` itself has no limit of its own: it reads anything that fits in the
interpreter, and raises ``DecodeError`` beyond.) A value is a tree: an object that appears
twice is written twice and read back as two equal, separate objects. There is no limit on
size, other than memory.
"""

from __future__ import annotations

import datetime as _dt
import enum
import reprlib
import struct
from collections.abc import Callable
from decimal import Decimal
from types import NoneType
from typing import Any, Final

__all__ = [
    "BYTES_DECODERS", "EXT_BIGINT", "EXT_DATE", "EXT_DATETIME", "EXT_DECIMAL", "EXT_FROZENSET",
    "EXT_SET", "EXT_STR", "EXT_TIME", "EXT_TIMEDELTA", "EXT_TIMESTAMP", "EXT_TUPLE",
    "FIELDS_DECODERS", "MAX_DEPTH", "SUPPORTED_TYPES", "CodecError", "DecodeError", "Rejected",
    "accelerator", "bigint_payload", "clone", "date_fields", "datetime_fields", "decimal_payload",
    "decode", "encode", "install", "pure_decode", "pure_encode", "time_fields", "timedelta_fields",
    "uninstall",
]  # fmt: skip

MAX_DEPTH: Final = 256
"""How deep containers may be nested: ``[[1]]`` is 2 deep, a scalar is 0 deep."""

SUPPORTED_TYPES: Final[tuple[type, ...]] = (
    NoneType,
    bool,
    int,
    float,
    str,
    bytes,
    list,
    tuple,
    dict,
    set,
    frozenset,
    _dt.datetime,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    Decimal,
)
"""The types ``decode`` returns (``encode`` also takes ``bytearray`` and ``memoryview``)."""

_SUPPORTED_TEXT: Final = (
    "Supported types are None, bool, int, float, str, bytes (bytearray and memoryview are "
    "stored as bytes), list, tuple, dict, set, frozenset, datetime.datetime, datetime.date, "
    "datetime.time, datetime.timedelta and decimal.Decimal, as exact types (not subclasses)"
)


class CodecError(TypeError):
    """A value cannot be stored: it is (or contains) an unsupported type, or is too deep."""


class DecodeError(ValueError):
    """Bytes are not a valid encoding of a value (they are corrupt, truncated, or not ours)."""


# Extension type codes. They are part of the stored format: never change or reuse one.
EXT_TIMESTAMP: Final = -1  # MessagePack's own: aware datetimes at offset 0 with fold 0
EXT_BIGINT: Final = 1  # payload: two's complement, big-endian, minimal length
EXT_TUPLE: Final = 2  # payload: an array of the items
EXT_SET: Final = 3  # payload: an array of the items, sorted by their encoding
EXT_FROZENSET: Final = 4  # payload: as EXT_SET
EXT_DATETIME: Final = 5  # payload: [year, month, day, hour, minute, second, µs, fold(, offset µs)]
EXT_DATE: Final = 6  # payload: [year, month, day]
EXT_TIME: Final = 7  # payload: [hour, minute, second, µs, fold(, offset µs)]
EXT_TIMEDELTA: Final = 8  # payload: [days, seconds, µs]
EXT_DECIMAL: Final = 9  # payload: str(decimal), ASCII
EXT_STR: Final = 10  # payload: UTF-8 with lone surrogates allowed ("surrogatepass")

_INT_MIN: Final = -(2**63)  # MessagePack's own integers cover [-2**63, 2**64 - 1]
_INT_MAX: Final = 2**64 - 1
_MICROSECOND: Final = _dt.timedelta(microseconds=1)


# -- rejection: what every implementation reports ---------------------------------------------


class Rejected(Exception):
    """Raised inside an encoder (or ``clone``) at an unsupported or too deep value; the caller
    turns it into a ``CodecError`` with ``error()``.

    The containers it passes through on the way up record where the bad value was, with
    ``in_sequence``, ``in_mapping`` and ``in_set``.
    """

    def __init__(self, bad: object, too_deep: bool = False) -> None:
        self.bad = bad
        self.too_deep = too_deep
        self.current = bad  # the child that failed, in the container now being unwound
        self.steps: list[str] = []  # innermost first
        self.containers: list[object] = []  # innermost first

    def _up(self, container: object, step: str) -> None:
        self.steps.append(step)
        self.containers.append(container)
        self.current = container

    def in_sequence(self, container: list[Any] | tuple[Any, ...]) -> None:
        """The failed child is an item of the list or tuple ``container``."""
        index = next(i for i, x in enumerate(container) if x is self.current)
        self._up(container, f"[{index}]")

    def in_mapping(self, container: dict[Any, Any], key: object) -> None:
        """The failed child is ``key`` of the dict ``container``, or its value."""
        self._up(container, f"<key {_short(key)}>" if self.current is key else f"[{_short(key)}]")

    def in_set(self, container: set[Any] | frozenset[Any]) -> None:
        """The failed child is an element of the set ``container``."""
        self._up(container, f"<element {_short(self.current)}>")

    @staticmethod
    def recursion_error() -> CodecError:
        """The error for a value that an encoder could not walk within the recursion limit."""
        return CodecError(
            "cannot store a value nested this deep: it exceeds Python's recursion limit"
        )

    def error(self, verb: str = "store") -> CodecError:
        """The ``CodecError`` to raise, when the rejection reaches the outermost value."""
        steps = self.steps[::-1]
        if self.too_deep:
            nested = [*self.containers[::-1], self.bad]  # outermost first
            seen: dict[int, int] = {}
            for j, container in enumerate(nested):
                i = seen.setdefault(id(container), j)
                if i != j:
                    return CodecError(
                        f"cannot {verb} a value that contains itself: "
                        f"{_path(steps[:j])} is {_path(steps[:i])} (reference cycle)"
                    )
            return CodecError(
                f"cannot {verb} a value with containers nested more than {MAX_DEPTH} deep"
            )
        bad = self.bad
        name = type(bad).__qualname__
        message = f"cannot {verb} a value of type {name!r} (at {_path(steps)})"
        base = next((t for t in _ACCEPTED if isinstance(bad, t)), None)
        if base is not None:
            message += (
                f": it is a subclass of {base.__qualname__}, and subclasses are not stored as "
                "their base type; convert it first"
            )
            if isinstance(bad, enum.Enum):
                message += " (for an enum member, store its .value)"
        elif isinstance(bad, enum.Enum):
            message += ": it is an enum member; store its .value instead"
        return CodecError(f"{message}. {_SUPPORTED_TEXT}")


_ACCEPTED: Final = (*SUPPORTED_TYPES, bytearray, memoryview)
_repr: Final = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlevel = 2


def _short(value: object) -> str:
    try:
        return _repr.repr(value)
    except Exception:
        return f"<{type(value).__qualname__} object>"


def _path(steps: list[str]) -> str:
    return "value" + "".join(steps)


# -- the extensions' payloads, both ways ----------------------------------------------------------


def bigint_payload(v: int) -> bytes:
    """The ``EXT_BIGINT`` payload of an int outside MessagePack's 64-bit range."""
    return v.to_bytes((~v if v < 0 else v).bit_length() // 8 + 1, "big", signed=True)


def datetime_fields(v: _dt.datetime) -> list[int] | None:
    """The ``EXT_DATETIME`` payload's fields, or ``None`` for an aware datetime at offset 0
    with fold 0, which is written as a MessagePack timestamp instead."""
    fields = [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold]
    if v.tzinfo is not None:
        offset = v.utcoffset()
        if offset is not None:
            if not offset and not v.fold:
                return None
            fields.append(offset // _MICROSECOND)
    return fields


def date_fields(v: _dt.date) -> list[int]:
    return [v.year, v.month, v.day]


def time_fields(v: _dt.time) -> list[int]:
    fields = [v.hour, v.minute, v.second, v.microsecond, v.fold]
    if v.tzinfo is not None:
        offset = v.utcoffset()
        if offset is not None:
            fields.append(offset // _MICROSECOND)
    return fields


def timedelta_fields(v: _dt.timedelta) -> list[int]:
    return [v.days, v.seconds, v.microseconds]


def decimal_payload(v: Decimal) -> bytes:
    return str(v).encode("ascii")


class _Corrupt(ValueError):
    pass


_TIMEZONES: Final[dict[int, _dt.timezone]] = {0: _dt.UTC}  # by offset in µs


def _tz(offset: int) -> _dt.timezone:
    tz = _TIMEZONES.get(offset)
    if tz is None:
        tz = _dt.timezone(_dt.timedelta(microseconds=offset))  # ValueError if out of range
        if len(_TIMEZONES) < 256:  # real data has few offsets; untrusted data may have many
            _TIMEZONES[offset] = tz
    return tz


def _datetime_from(f: list[int]) -> _dt.datetime:
    if len(f) != 8 and len(f) != 9:
        raise _Corrupt("malformed datetime")
    tz = _tz(f[8]) if len(f) == 9 else None
    return _dt.datetime(f[0], f[1], f[2], f[3], f[4], f[5], f[6], tz, fold=f[7])


def _time_from(f: list[int]) -> _dt.time:
    if len(f) != 5 and len(f) != 6:
        raise _Corrupt("malformed time")
    return _dt.time(f[0], f[1], f[2], f[3], _tz(f[5]) if len(f) == 6 else None, fold=f[4])


def _date_from(f: list[int]) -> _dt.date:
    if len(f) != 3:
        raise _Corrupt("malformed date")
    return _dt.date(*f)


def _timedelta_from(f: list[int]) -> _dt.timedelta:
    if len(f) != 3:
        raise _Corrupt("malformed timedelta")
    return _dt.timedelta(*f)


FIELDS_DECODERS: Final[dict[int, Callable[[list[int]], object]]] = {
    EXT_DATETIME: _datetime_from,
    EXT_DATE: _date_from,
    EXT_TIME: _time_from,
    EXT_TIMEDELTA: _timedelta_from,
}
"""The extensions whose payload is an array of ints: each builds its value from that list,
raising ``ValueError``, ``TypeError`` or ``ArithmeticError`` if the fields are not valid."""

BYTES_DECODERS: Final[dict[int, Callable[[bytes | memoryview], object]]] = {
    EXT_BIGINT: lambda data: int.from_bytes(data, "big", signed=True),
    EXT_DECIMAL: lambda data: Decimal(str(data, "ascii")),  # InvalidOperation if not one
    EXT_STR: lambda data: str(data, "utf-8", "surrogatepass"),
}
"""The extensions whose payload is plain bytes (the others hold an array of values)."""


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


# -- the implementation in use --------------------------------------------------------------------

Encoder = Callable[[object], bytes]
Decoder = Callable[[bytes | bytearray | memoryview], object]

_encode: Encoder = pure_encode
_decode: Decoder = pure_decode
_accelerator: tuple[Encoder, Decoder] | None = None


def encode(value: object) -> bytes:
    """``value`` as bytes; raises ``CodecError`` if it is not (made only of) supported types."""
    return _encode(value)


def decode(data: bytes | bytearray | memoryview) -> object:
    """The value that ``encode`` turned into ``data``; raises ``DecodeError`` if it is not valid.

    Only supported types come out (``bytes``, never ``bytearray``).
    """
    return _decode(data)


def install(encode: Encoder, decode: Decoder) -> None:
    """Make ``encode`` and ``decode`` call an accelerator: functions that behave exactly as
    ``pure_encode`` and ``pure_decode`` (the same bytes, values and errors), only faster."""
    global _encode, _decode, _accelerator
    _encode, _decode, _accelerator = encode, decode, (encode, decode)


def uninstall() -> None:
    """Go back to the reference implementation."""
    global _encode, _decode, _accelerator
    _encode, _decode, _accelerator = pure_encode, pure_decode, None


def accelerator() -> tuple[Encoder, Decoder] | None:
    """The installed accelerator's ``(encode, decode)``, or ``None``."""
    return _accelerator


# -- cloning: values as RPC passes them -----------------------------------------------------------

_IMMUTABLE: Final = frozenset(
    {NoneType, bool, int, float, str, bytes, _dt.datetime, _dt.date, _dt.time, _dt.timedelta}
    | {Decimal}
)


def clone(value: object, keep: Callable[[object], bool]) -> Any:
    """A copy of ``value`` as an RPC call passes it: the supported types as ``encode`` then
    ``decode`` would give them back (immutable ones shared, containers copied, exact types
    only), except that what ``keep(v)`` accepts — a function to call back, a stub — is passed
    as it is. Anything else raises ``CodecError``, naming where it was."""
    try:
        return _clone(value, 0, keep)
    except Rejected as e:
        raise e.error("send") from None


def _clone(v: Any, depth: int, keep: Callable[[object], bool]) -> Any:
    t = type(v)
    if t in _IMMUTABLE:
        return v
    if t is list or t is tuple or t is set or t is frozenset:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        depth += 1
        out: list[Any] = []
        append = out.append
        try:
            for x in v:
                append(x if type(x) in _IMMUTABLE else _clone(x, depth, keep))
        except Rejected as e:
            if t is list or t is tuple:
                e.in_sequence(v)
            else:
                e.in_set(v)
            raise
        return out if t is list else t(out)
    if t is dict:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        depth += 1
        mapping: dict[Any, Any] = {}
        k: Any = None
        try:
            for k, x in v.items():
                key = k if type(k) in _IMMUTABLE else _clone(k, depth, keep)
                mapping[key] = x if type(x) in _IMMUTABLE else _clone(x, depth, keep)
        except Rejected as e:
            e.in_mapping(v, k)
            raise
        return mapping
    if t is bytearray:
        return bytes(v)
    if t is memoryview:
        return v.tobytes()
    if keep(v):
        return v
    if isinstance(v, dict) and getattr(t, "_rpc_as_dict", False):
        return _clone(dict(v), depth, keep)  # a dict with extras (opendo.workers' rows)
    raise Rejected(v)
