"""The rules of opendo's value format (see ``core.codec``): the types, the limits, the
extension codes and their payloads, the errors and what they say, and ``clone`` (how RPC copies
a value). Shared by the reference implementation (``core.msgpack``) and any accelerator."""

from __future__ import annotations

import datetime as _dt
import enum
import reprlib
from collections.abc import Callable
from decimal import Decimal
from types import NoneType
from typing import Any, Final

__all__ = [
    "BYTES_DECODERS",
    "CodecError",
    "DecodeError",
    "EXT_BIGINT",
    "EXT_DATE",
    "EXT_DATETIME",
    "EXT_DECIMAL",
    "EXT_FROZENSET",
    "EXT_SET",
    "EXT_STR",
    "EXT_TIME",
    "EXT_TIMEDELTA",
    "EXT_TIMESTAMP",
    "EXT_TUPLE",
    "FIELDS_DECODERS",
    "MAX_DEPTH",
    "Rejected",
    "SUPPORTED_TYPES",
    "bigint_payload",
    "clone",
    "date_fields",
    "datetime_fields",
    "decimal_payload",
    "time_fields",
    "timedelta_fields",
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
