"""The value codec, accelerated: ``opendo.core.codec``'s format, written and read by msgspec.

``opendo.core.codec`` defines the format (read its header) and holds the reference
implementation, in plain Python. This module is the same format at C speed: msgspec writes
and reads the MessagePack, and the Python here only turns the values MessagePack has no type
for into extensions, with the type codes, payload fields, errors and rejection messages of
``opendo.core.codec``. ``install()`` makes ``opendo.core.codec.encode`` and ``decode`` use it.
Both implementations are tested to give the same bytes for every value, and to read each
other's.

Most of the work is avoiding work: a value made only of types MessagePack writes as they are
(and lists and dicts of them) is handed to msgspec untouched, checked in C where possible
(``issuperset(map(type, ...))``). The one thing that check cannot see, an int beyond 64 bits
or a str with a lone surrogate inside a plain container, makes msgspec raise, and the value is
then converted with every int and str checked.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from decimal import Decimal
from itertools import chain
from types import NoneType
from typing import Any, Final

from msgspec import Raw
from msgspec.msgpack import Decoder, Encoder, Ext

from ..core import codec
from ..core.codec import (
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
    EXT_TUPLE,
    FIELDS_DECODERS,
    MAX_DEPTH,
    DecodeError,
    Rejected,
    bigint_payload,
    date_fields,
    datetime_fields,
    decimal_payload,
    time_fields,
    timedelta_fields,
)

__all__ = ["decode", "encode", "install"]

_INT_MIN: Final = -(2**63)  # MessagePack's own integers cover [-2**63, 2**64 - 1]
_INT_MAX: Final = 2**64 - 1

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
                return Ext(EXT_STR, v.encode("utf-8", "surrogatepass"))
        return v
    if t is int:
        if not careful or _INT_MIN <= v <= _INT_MAX:
            return v
        return Ext(EXT_BIGINT, bigint_payload(v))
    if t in _PLAIN:
        return v
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        if not careful and _plain_types(map(type, v)):
            return v if t is list else Ext(EXT_TUPLE, _encode(v))
        depth += 1
        out: list[Any] = []
        append = out.append
        try:
            for x in v:
                append(_convert(x, depth, careful) if careful or type(x) not in _PLAIN else x)
        except Rejected as e:
            e.in_sequence(v)
            raise
        return out if t is list else Ext(EXT_TUPLE, _encode(out))
    if t is dict:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
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
        except Rejected as e:
            e.in_mapping(v, k)
            raise
        return mapping
    if t is set or t is frozenset:
        if depth >= MAX_DEPTH:
            raise Rejected(v, too_deep=True)
        depth += 1
        items: list[bytes] = []
        try:
            for x in v:
                items.append(_encode(_convert(x, depth, careful)))
        except Rejected as e:
            e.in_set(v)
            raise
        items.sort()  # iteration order depends on the hash seed: sort for stable bytes
        return Ext(EXT_SET if t is set else EXT_FROZENSET, _encode([Raw(b) for b in items]))
    convert = _LEAF_CONVERTERS.get(t)
    if convert is None:
        raise Rejected(v)
    return convert(v)


def _convert_datetime(v: _dt.datetime) -> Ext | _dt.datetime:
    fields = datetime_fields(v)
    if fields is None:
        # msgspec writes it as a MessagePack timestamp, and reads that back (in C) as an aware
        # datetime in timezone.utc.
        return v if v.tzinfo is _dt.UTC else v.replace(tzinfo=_dt.UTC)
    return Ext(EXT_DATETIME, _encode(fields))


_LEAF_CONVERTERS: Final[dict[type, Callable[[Any], Any]]] = {
    _dt.datetime: _convert_datetime,
    _dt.date: lambda v: Ext(EXT_DATE, _encode(date_fields(v))),
    _dt.time: lambda v: Ext(EXT_TIME, _encode(time_fields(v))),
    _dt.timedelta: lambda v: Ext(EXT_TIMEDELTA, _encode(timedelta_fields(v))),
    Decimal: lambda v: Ext(EXT_DECIMAL, decimal_payload(v)),
    memoryview: memoryview.tobytes,
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
    """``opendo.core.codec.encode``, in C."""
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
    except Rejected as e:
        raise e.error() from None
    except RecursionError:
        raise Rejected.recursion_error() from None


# -- decoding ---------------------------------------------------------------------------------


def _decode_collection(code: int) -> Callable[[memoryview], object]:
    build: Callable[[list[Any]], object] = {
        EXT_TUPLE: tuple,
        EXT_SET: set,  # TypeError if an item is not hashable
        EXT_FROZENSET: frozenset,
    }[code]
    return lambda data: build(_decode_list(data))


def _decode_fields(build: Callable[[list[int]], object]) -> Callable[[memoryview], object]:
    return lambda data: build(_decode_ints(data))


_EXT_DECODERS: Final[dict[int, Callable[[memoryview], object]]] = {
    **{code: _decode_collection(code) for code in (EXT_TUPLE, EXT_SET, EXT_FROZENSET)},
    **{code: _decode_fields(build) for code, build in FIELDS_DECODERS.items()},
    **BYTES_DECODERS,
}


def _ext_hook(code: int, data: memoryview) -> object:
    decode = _EXT_DECODERS.get(code)
    if decode is None:
        raise DecodeError(f"unknown extension type {code}")
    return decode(data)


_decode: Final = Decoder(ext_hook=_ext_hook).decode
_decode_list: Final = Decoder(list, ext_hook=_ext_hook).decode
_decode_ints: Final = Decoder(list[int]).decode

# msgspec.DecodeError is a ValueError. TypeError: an unhashable set item or map key;
# ArithmeticError: an out-of-range date or decimal.InvalidOperation; RecursionError: too deep.
_DECODE_FAILURES: Final = (ValueError, TypeError, ArithmeticError, RecursionError)


def decode(data: bytes | bytearray | memoryview) -> object:
    """``opendo.core.codec.decode``, in C."""
    if type(data) is not bytes and not isinstance(data, bytearray | memoryview):
        raise TypeError(f"decode() expects bytes, got {type(data).__qualname__}")
    try:
        return _decode(data)
    except _DECODE_FAILURES as e:
        raise DecodeError(f"cannot decode a stored value: {e}") from e


def install() -> None:
    """Make ``opendo.core.codec.encode`` and ``decode`` use this implementation."""
    codec.install(encode, decode)
