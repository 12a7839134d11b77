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

Format. The bytes are MessagePack (written and read by ``msgspec``). Types that MessagePack
has natively (nil, booleans, integers up to 64 bits, 64-bit floats, UTF-8 strings, binary,
arrays, maps, and timestamps, used for aware datetimes in UTC) are written as themselves;
every other supported type is a MessagePack extension with a small type code (listed in the
source) whose payload is itself MessagePack, or plain bytes. The format does not depend on
the platform, the Python version or the hash seed, and the same value always gives the same
bytes (a set's items are written in a canonical order, not in iteration order). Decoding
reads only this format: it never imports, calls or builds anything but the types below, and
bytes that are not a valid encoding raise ``DecodeError``.

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
Python 3.11's recursion limit of 1000, which the interpreter and msgspec's C code share:
decoding a nested tuple costs about two levels of it. (``decode`` itself has no limit of its
own: it reads anything that fits in the interpreter, and raises ``DecodeError`` beyond.) A
value is a tree: an object that appears twice is written twice and read back as two equal,
separate objects. There is no limit on size, other than memory.
"""

from __future__ import annotations

import datetime as _dt
import enum
import reprlib
from collections.abc import Callable
from decimal import Decimal
from itertools import chain
from types import NoneType
from typing import Any, Final

from msgspec import Raw
from msgspec.msgpack import Decoder, Encoder, Ext

__all__ = [
    "MAX_DEPTH",
    "SUPPORTED_TYPES",
    "CodecError",
    "DecodeError",
    "clone",
    "decode",
    "encode",
]

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
_BIGINT: Final = 1  # payload: two's complement, big-endian, minimal length
_TUPLE: Final = 2  # payload: an array of the items
_SET: Final = 3  # payload: an array of the items, sorted by their encoding
_FROZENSET: Final = 4  # payload: as _SET
# payload: [year, month, day, hour, minute, second, µs, fold(, offset µs)]. Aware datetimes at
# offset 0 with fold 0 are MessagePack timestamps instead (extension -1, which msgspec handles).
_DATETIME: Final = 5
_DATE: Final = 6  # payload: [year, month, day]
_TIME: Final = 7  # payload: [hour, minute, second, µs, fold(, offset µs)]
_TIMEDELTA: Final = 8  # payload: [days, seconds, µs]
_DECIMAL: Final = 9  # payload: str(decimal), ASCII
_STR: Final = 10  # payload: UTF-8 with lone surrogates allowed ("surrogatepass")

_INT_MIN: Final = -(2**63)  # MessagePack's own integers cover [-2**63, 2**64 - 1]
_INT_MAX: Final = 2**64 - 1
_MICROSECOND: Final = _dt.timedelta(microseconds=1)

# Types that MessagePack writes as themselves: a container holding only these (and lists and
# dicts of them) is handed to msgspec as it is. Out-of-range ints and strs with lone surrogates
# make msgspec raise, and the value is then converted instead.
_PLAIN: Final = frozenset({str, int, float, bool, NoneType, bytes, bytearray})
_plain_types: Final = _PLAIN.issuperset
_all_dicts: Final = frozenset({dict}).issuperset
_all_lists: Final = frozenset({list}).issuperset
_chain: Final = chain.from_iterable
_values: Final = dict.values


# -- encoding ---------------------------------------------------------------------------------


class _ExtKey:
    """A dict key written as an extension (``Ext`` itself is not hashable)."""

    __slots__ = ("ext",)

    def __init__(self, ext: Ext) -> None:
        self.ext = ext


def _enc_hook(obj: object) -> object:
    if type(obj) is _ExtKey:
        return obj.ext
    raise TypeError(f"unexpected {type(obj).__qualname__}")  # pragma: no cover - a bug


_encode: Final = Encoder(enc_hook=_enc_hook).encode


class _Reject(Exception):
    """Raised inside the conversion; ``encode`` turns it into a ``CodecError``.

    The containers it passes through on the way up record where the bad value was.
    """

    def __init__(self, bad: object, too_deep: bool = False) -> None:
        self.bad = bad
        self.too_deep = too_deep
        self.current = bad  # the child that failed, in the container now being unwound
        self.steps: list[str] = []  # innermost first
        self.containers: list[object] = []  # innermost first

    def up(self, container: object, step: str) -> None:
        self.steps.append(step)
        self.containers.append(container)
        self.current = container

    def error(self, verb: str = "store") -> CodecError:
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


def _index(seq: list[Any] | tuple[Any, ...], item: object) -> int:
    return next(i for i, x in enumerate(seq) if x is item)


def _convert(v: Any, depth: int, careful: bool) -> Any:
    """``v`` as something msgspec writes in our format (an ``Ext`` for the non-native types).

    ``depth`` is the number of containers around ``v``. When ``careful`` is false, ints and
    strs pass as they are, and so do lists, dicts and tuples whose members all have plain
    types: if one held an int beyond 64 bits or a str with a lone surrogate, msgspec raises
    and ``encode`` starts again with ``careful`` set, which checks every int and every str.
    Containers are handled inline, so that each level of nesting costs one Python frame.
    """
    t = type(v)
    if t is str:
        if careful and not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                return Ext(_STR, v.encode("utf-8", "surrogatepass"))
        return v
    if t is int:
        if not careful or _INT_MIN <= v <= _INT_MAX:
            return v
        size = (~v if v < 0 else v).bit_length() // 8 + 1
        return Ext(_BIGINT, v.to_bytes(size, "big", signed=True))
    if t in _PLAIN:
        return v
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Reject(v, too_deep=True)
        if not careful and _plain_types(map(type, v)):
            return v if t is list else Ext(_TUPLE, _encode(v))
        depth += 1
        out: list[Any] = []
        append = out.append
        try:
            for x in v:
                append(_convert(x, depth, careful) if careful or type(x) not in _PLAIN else x)
        except _Reject as e:
            e.up(v, f"[{_index(v, e.current)}]")
            raise
        return out if t is list else Ext(_TUPLE, _encode(out))
    if t is dict:
        if depth >= MAX_DEPTH:
            raise _Reject(v, too_deep=True)
        if (
            not careful
            and len(v) >= 8  # for small dicts, the loop below is faster than these checks
            and _plain_types(map(type, v))
            and _plain_types(map(type, v.values()))
        ):
            return v
        depth += 1
        mapping: dict[Any, Any] = {}
        k: Any = None
        try:
            for k, x in v.items():
                if careful or type(k) not in _PLAIN:
                    key = _convert(k, depth, careful)
                    if type(key) is Ext:
                        key = _ExtKey(key)
                else:
                    key = k
                if careful or type(x) not in _PLAIN:
                    x = _convert(x, depth, careful)
                mapping[key] = x
        except _Reject as e:
            e.up(v, f"<key {_short(k)}>" if e.current is k else f"[{_short(k)}]")
            raise
        return mapping
    if t is set or t is frozenset:
        if depth >= MAX_DEPTH:
            raise _Reject(v, too_deep=True)
        depth += 1
        items: list[bytes] = []
        try:
            for x in v:
                items.append(_encode(_convert(x, depth, careful)))
        except _Reject as e:
            e.up(v, f"<element {_short(e.current)}>")
            raise
        items.sort()  # iteration order depends on the hash seed: sort for stable bytes
        return Ext(_SET if t is set else _FROZENSET, _encode([Raw(b) for b in items]))
    convert = _LEAF_CONVERTERS.get(t)
    if convert is None:
        raise _Reject(v)
    return convert(v)


def _convert_datetime(v: _dt.datetime) -> Ext | _dt.datetime:
    fields = [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold]
    if v.tzinfo is not None:
        offset = v.utcoffset()
        if offset is not None:
            if not offset and not v.fold:
                # msgspec writes it as a MessagePack timestamp, and reads that back (in C) as
                # an aware datetime in timezone.utc.
                return v if v.tzinfo is _dt.UTC else v.replace(tzinfo=_dt.UTC)
            fields.append(offset // _MICROSECOND)
    return Ext(_DATETIME, _encode(fields))


def _convert_date(v: _dt.date) -> Ext:
    return Ext(_DATE, _encode([v.year, v.month, v.day]))


def _convert_time(v: _dt.time) -> Ext:
    fields = [v.hour, v.minute, v.second, v.microsecond, v.fold]
    if v.tzinfo is not None:
        offset = v.utcoffset()
        if offset is not None:
            fields.append(offset // _MICROSECOND)
    return Ext(_TIME, _encode(fields))


def _convert_timedelta(v: _dt.timedelta) -> Ext:
    return Ext(_TIMEDELTA, _encode([v.days, v.seconds, v.microseconds]))


def _convert_decimal(v: Decimal) -> Ext:
    return Ext(_DECIMAL, str(v).encode("ascii"))


def _convert_memoryview(v: memoryview) -> bytes:
    return v.tobytes()


_LEAF_CONVERTERS: Final[dict[type, Callable[[Any], Any]]] = {
    _dt.datetime: _convert_datetime,
    _dt.date: _convert_date,
    _dt.time: _convert_time,
    _dt.timedelta: _convert_timedelta,
    Decimal: _convert_decimal,
    memoryview: _convert_memoryview,
}


def _is_plain(v: Any, depth: int) -> bool:
    """Whether the list or dict ``v`` (``depth`` containers deep) holds only plain values and
    lists and dicts of them, so that msgspec can write it as it is.

    The members of a flat container, and the grandchildren of a long list of flat records or
    flat lists, are checked in C (``issuperset(map(type, ...))``, which stops at the first
    miss); only the rest is walked in Python.
    """
    if type(v) is dict:
        if not _plain_types(map(type, v)):
            return False
        v = v.values()
    if _plain_types(map(type, v)):
        return True
    depth += 1
    if depth >= MAX_DEPTH:
        return False
    if len(v) >= 8:  # below that, the extra checks cost more than they save
        if _all_dicts(map(type, v)):
            if _plain_types(map(type, _chain(map(_values, v)))):
                return _plain_types(map(type, _chain(v)))  # the keys
        elif _all_lists(map(type, v)) and _plain_types(map(type, _chain(v))):
            return True
    for x in v:
        t = type(x)
        if t in _PLAIN:
            continue
        if (t is dict or t is list) and _is_plain(x, depth):
            continue
        return False
    return True


def encode(value: object) -> bytes:
    """``value`` as bytes; raises ``CodecError`` if it is not (made only of) supported types."""
    try:
        t = type(value)
        if t in _PLAIN or ((t is list or t is dict) and _is_plain(value, 0)):
            try:
                return _encode(value)
            except (OverflowError, UnicodeEncodeError):
                pass  # an int beyond 64 bits, or a str with a lone surrogate
        else:
            try:
                return _encode(_convert(value, 0, False))
            except (OverflowError, UnicodeEncodeError):
                pass
        return _encode(_convert(value, 0, True))
    except _Reject as e:
        raise e.error() from None
    except RecursionError:
        raise CodecError(
            "cannot store a value nested this deep: it exceeds Python's recursion limit"
        ) from None


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
    except _Reject as e:
        raise e.error("send") from None


def _clone(v: Any, depth: int, keep: Callable[[object], bool]) -> Any:
    t = type(v)
    if t in _IMMUTABLE:
        return v
    if t is list or t is tuple or t is set or t is frozenset:
        if depth >= MAX_DEPTH:
            raise _Reject(v, too_deep=True)
        depth += 1
        out: list[Any] = []
        append = out.append
        try:
            for x in v:
                append(x if type(x) in _IMMUTABLE else _clone(x, depth, keep))
        except _Reject as e:
            if t is list or t is tuple:
                e.up(v, f"[{_index(v, e.current)}]")
            else:
                e.up(v, f"<element {_short(e.current)}>")
            raise
        return out if t is list else t(out)
    if t is dict:
        if depth >= MAX_DEPTH:
            raise _Reject(v, too_deep=True)
        depth += 1
        mapping: dict[Any, Any] = {}
        k: Any = None
        try:
            for k, x in v.items():
                key = k if type(k) in _IMMUTABLE else _clone(k, depth, keep)
                mapping[key] = x if type(x) in _IMMUTABLE else _clone(x, depth, keep)
        except _Reject as e:
            e.up(v, f"<key {_short(k)}>" if e.current is k else f"[{_short(k)}]")
            raise
        return mapping
    if t is bytearray:
        return bytes(v)
    if t is memoryview:
        return _convert_memoryview(v)
    if keep(v):
        return v
    if isinstance(v, dict) and getattr(t, "_rpc_as_dict", False):
        return _clone(dict(v), depth, keep)  # a dict with extras (opendo.workers' rows)
    raise _Reject(v)


# -- decoding ---------------------------------------------------------------------------------


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


def _decode_tuple(data: memoryview) -> tuple[Any, ...]:
    return tuple(_decode_list(data))


def _decode_set(data: memoryview) -> set[Any]:
    return set(_decode_list(data))  # TypeError if an item is not hashable


def _decode_frozenset(data: memoryview) -> frozenset[Any]:
    return frozenset(_decode_list(data))


def _decode_bigint(data: memoryview) -> int:
    return int.from_bytes(data, "big", signed=True)


def _decode_datetime(data: memoryview) -> _dt.datetime:
    f = _decode_ints(data)
    if len(f) == 8:
        return _dt.datetime(f[0], f[1], f[2], f[3], f[4], f[5], f[6], fold=f[7])
    if len(f) == 9:
        return _dt.datetime(f[0], f[1], f[2], f[3], f[4], f[5], f[6], _tz(f[8]), fold=f[7])
    raise _Corrupt("malformed datetime")


def _decode_date(data: memoryview) -> _dt.date:
    f = _decode_ints(data)
    if len(f) == 3:
        return _dt.date(f[0], f[1], f[2])
    raise _Corrupt("malformed date")


def _decode_time(data: memoryview) -> _dt.time:
    f = _decode_ints(data)
    if len(f) == 5:
        return _dt.time(f[0], f[1], f[2], f[3], fold=f[4])
    if len(f) == 6:
        return _dt.time(f[0], f[1], f[2], f[3], _tz(f[5]), fold=f[4])
    raise _Corrupt("malformed time")


def _decode_timedelta(data: memoryview) -> _dt.timedelta:
    f = _decode_ints(data)
    if len(f) == 3:
        return _dt.timedelta(f[0], f[1], f[2])
    raise _Corrupt("malformed timedelta")


def _decode_decimal(data: memoryview) -> Decimal:
    return Decimal(str(data, "ascii"))


def _decode_str(data: memoryview) -> str:
    return str(data, "utf-8", "surrogatepass")


_EXT_DECODERS: Final[dict[int, Callable[[memoryview], object]]] = {
    _BIGINT: _decode_bigint,
    _TUPLE: _decode_tuple,
    _SET: _decode_set,
    _FROZENSET: _decode_frozenset,
    _DATETIME: _decode_datetime,
    _DATE: _decode_date,
    _TIME: _decode_time,
    _TIMEDELTA: _decode_timedelta,
    _DECIMAL: _decode_decimal,
    _STR: _decode_str,
}


def _ext_hook(code: int, data: memoryview) -> object:
    decode = _EXT_DECODERS.get(code)
    if decode is None:
        raise _Corrupt(f"unknown extension type {code}")
    return decode(data)


_decode: Final = Decoder(ext_hook=_ext_hook).decode
_decode_list: Final = Decoder(list, ext_hook=_ext_hook).decode
_decode_ints: Final = Decoder(list[int]).decode

# msgspec.DecodeError is a ValueError. TypeError: an unhashable set item or map key;
# ArithmeticError: an out-of-range date or decimal.InvalidOperation; RecursionError: too deep.
_DECODE_FAILURES: Final = (ValueError, TypeError, ArithmeticError, RecursionError)


def decode(data: bytes | bytearray | memoryview) -> object:
    """The value that ``encode`` turned into ``data``; raises ``DecodeError`` if it is not valid.

    Only supported types come out (``bytes``, never ``bytearray``).
    """
    if type(data) is not bytes and not isinstance(data, bytearray | memoryview):
        raise TypeError(f"decode() expects bytes, got {type(data).__qualname__}")
    try:
        return _decode(data)
    except _DECODE_FAILURES as e:
        raise DecodeError(f"cannot decode a stored value: {e}") from e
