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

from collections.abc import Callable

from .msgpack import pure_decode, pure_encode
from .values import (
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
    SUPPORTED_TYPES,
    CodecError,
    DecodeError,
    Rejected,
    bigint_payload,
    clone,
    date_fields,
    datetime_fields,
    decimal_payload,
    time_fields,
    timedelta_fields,
)

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
    "accelerator",
    "bigint_payload",
    "clone",
    "date_fields",
    "datetime_fields",
    "decimal_payload",
    "decode",
    "encode",
    "install",
    "pure_decode",
    "pure_encode",
    "time_fields",
    "timedelta_fields",
    "uninstall",
]

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
