"""The two codec implementations agree: the reference (``opendo.core.codec``, plain Python) and
the accelerator (``opendo.storage.fastcodec``, msgspec) write the same bytes for every value,
read each other's bytes as the same values, reject the same values with the same messages, and
agree on every input, valid or not. ``test_codec`` checks the behaviour itself, on both."""

from __future__ import annotations

import math
import random
import re
import reprlib
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest
from msgspec.msgpack import Ext
from test_codec import (
    CONTAINERS,
    PAYLOADS,
    REJECTED,
    SCALARS,
    SUBCLASSES,
    FixedTz,
    FixedTzZero,
    NoOffsetTz,
    assert_only_supported,
    assert_same,
    nest,
)

from opendo.core import codec
from opendo.core.codec import MAX_DEPTH, CodecError, DecodeError, pure_decode, pure_encode
from opendo.storage import fastcodec

fast_encode = fastcodec.encode
fast_decode = fastcodec.decode

# -- the corpus: every type, at every size class boundary -------------------------------------


def _ints() -> list[int]:
    values = {0, 1, -1, 31, 32, -31, -32, -33, 2**100, -(2**100), 10**40, -(10**40), 2**1000}
    for bits in (7, 8, 15, 16, 31, 32, 63, 64, 71, 72, 127, 128):
        for edge in (2**bits, -(2**bits)):
            values.update((edge - 1, edge, edge + 1))
    return sorted(values)


_NAN_PAYLOAD = struct.unpack(">d", bytes.fromhex("7ff8000000000123"))[0]
_NEGATIVE_NAN = struct.unpack(">d", bytes.fromhex("fff8000000000000"))[0]
FLOATS = [0.0, -0.0, 1.0, -1.5, 0.1, 1 / 3, 5e-324, -5e-324, 2.2250738585072014e-308]
FLOATS += [1.7976931348623157e308, math.inf, -math.inf, math.nan, _NAN_PAYLOAD, _NEGATIVE_NAN]
FLOATS += [float(2**53), float(2**64), 1e16]

SIZES = [0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 255, 256, 257, 65535, 65536, 65537]


def _strs() -> list[str]:
    out = ["x" * n for n in SIZES]  # byte lengths at every str size class boundary
    out += ["é" * (n // 2) + "x" * (n % 2) for n in (32, 255, 256, 65536)]  # 2-byte chars
    out += ["€" * 11, "😀" * 8, "\x00", "\U0010ffff"]
    # lone surrogates: an EXT_STR payload of every ext size class (3 bytes per surrogate)
    out += ["\ud800", "\udfff", "a\udc80", "\ud800" * 5, "x" + "\ud800" * 5, "\ud800" * 85]
    out += ["\ud800" + "x" * n for n in (0, 1, 5, 13, 252, 253, 65533, 65534)]
    out += ["\ud83d\ude00", "\ude00\ud83d", "é\udcff"]  # a valid pair, written as two
    return out


def _bytes() -> list[bytes]:
    return [bytes(range(256)) * (n // 256) + bytes(range(n % 256)) for n in SIZES]


def _lists() -> list[object]:
    out: list[object] = [[0] * n for n in (0, 1, 15, 16, 17, 65535, 65536)]
    out += [[None, True, False, 1, -1.5, "s", b"b", [], {}, (), set(), frozenset()]]
    return out


def _tuples() -> list[object]:
    # payloads of 1, 2, 4, 8 and 16 bytes (the fixext forms) and the ext8/16/32 forms
    out: list[object] = [(), (1,), (1, 2, 3), (1,) * 7, (1,) * 15, (1,) * 16, (1, 2)]
    out += [(0,) * n for n in (100, 65535, 65536)]
    out += [("x" * 252,), ("x" * 253,), (0,) * 300, ((),), (((),),), ([],), ({},)]
    return out


def _dicts() -> list[object]:
    out: list[object] = [{i: i for i in range(n)} for n in (0, 1, 15, 16, 17, 65535, 65536)]
    out += [{f"k{i}": i for i in range(n)} for n in (7, 8, 9, 40)]
    out += [{"id": 3, "name": "ada"}, {"a": {"b": {"c": [1, (2, {3})]}}}]
    return out


def _keys() -> list[object]:
    """Every kind of hashable supported value, as it can be a dict key or a set element."""
    return [
        None,
        True,
        False,
        0,
        -1,
        2**64,
        -(2**64),
        1.5,
        -0.0,
        math.inf,
        "",
        "k",
        "x" * 40,
        "\ud800",
        b"",
        b"k",
        (),
        (1, ("a", None)),
        ((((),),),),
        frozenset(),
        frozenset({1, "a", (2,)}),
        datetime(2020, 1, 1),
        datetime(2020, 1, 1, tzinfo=UTC),
        datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=-3))),
        date(2020, 1, 2),
        time(3, 4),
        time(3, 4, tzinfo=timezone(timedelta(minutes=30))),
        timedelta(1, 2, 3),
        Decimal("1.50"),
        Decimal("1E+3"),
    ]


def _sets() -> list[object]:
    keys = _keys()
    out: list[object] = [set(), frozenset(), set(keys), frozenset(keys), {math.nan, 1.0}]
    out += [set(range(n)) for n in (1, 5, 15, 16, 17, 200, 65536)]  # ext8, ext16 and ext32
    out += [{f"item-{i}" for i in range(300)}, frozenset({frozenset({frozenset()})})]
    out += [
        {(i, str(i)) for i in range(50)},
        {-i for i in range(40)},
        {2**64 + i for i in range(9)},
    ]
    return out


_UTC_EDGES = [  # seconds since the epoch where the timestamp form changes (32, 64, 96 bits)
    -(2**34),
    -1,
    0,
    1,
    2**32 - 1,
    2**32,
    2**34 - 1,
    2**34,
    2**35,
]


def _datetimes() -> list[object]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    out: list[object] = []
    for seconds in _UTC_EDGES:
        for micros in (0, 1, 999_999):
            out.append(epoch + timedelta(seconds=seconds, microseconds=micros))
    out += [datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)]
    out += [datetime(2024, 3, 4, 5, 6, 7, 8, tzinfo=UTC, fold=1)]
    out += [datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=tz) for tz in (FixedTzZero(), FixedTz())]
    out += [datetime(2024, 1, 1, tzinfo=timezone(timedelta(0), "Z")), datetime(2024, 1, 1)]
    out += [datetime(2024, 1, 1, tzinfo=NoOffsetTz()), datetime.min, datetime.max]
    out += [datetime(2024, 11, 3, 1, 30, fold=1), datetime(2024, 11, 3, 1, 30, 0, 1, fold=1)]
    for offset in (
        timedelta(hours=1),
        timedelta(hours=-1),
        timedelta(minutes=30),
        timedelta(seconds=-59, microseconds=7),
        timedelta(microseconds=1),
        timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
        -timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
        timedelta(seconds=2**31 // 10**6 + 1),  # offset µs past 32 bits
    ):
        tz = timezone(offset)
        out += [datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=tz)]
        out += [datetime(2024, 5, 6, tzinfo=tz, fold=1), time(1, 2, 3, 4, tzinfo=tz)]
    try:
        import zoneinfo

        paris = zoneinfo.ZoneInfo("Europe/Paris")
        out += [datetime(2024, 1, 1, 12, tzinfo=paris), datetime(2024, 7, 1, tzinfo=paris)]
        out += [datetime(2024, 10, 27, 3, 30, tzinfo=paris, fold=1), time(12, tzinfo=paris)]
    except (ImportError, zoneinfo.ZoneInfoNotFoundError):
        pass
    out += [time(), time(23, 59, 59, 999_999), time(1, fold=1), time(0, 0, 0, 1), time.max]
    out += [time(1, tzinfo=FixedTz()), time(1, tzinfo=FixedTzZero()), time(1, tzinfo=UTC)]
    out += [date.min, date.max, date(2024, 2, 29), date(1970, 1, 1)]
    out += [timedelta(), timedelta.min, timedelta.max, timedelta(-1), timedelta(0, 0, -1)]
    out += [timedelta(days=999_999_999), timedelta(seconds=86_399, microseconds=999_999)]
    return out


def _decimals() -> list[object]:
    texts = ["0", "-0", "1.10", "1E+1000", "1e-1000", "NaN", "-NaN", "sNaN", "NaN123"]
    texts += ["Infinity", "-Infinity", "123456789012345678901234567890.000001", "0E-7"]
    texts += ["1" * 15, "1" * 16, "1" * 300]  # ext payload size classes
    return [Decimal(t) for t in texts]


def _nested() -> list[object]:
    return [
        nest(MAX_DEPTH, lambda v: [v]),
        nest(MAX_DEPTH, lambda v: (v,)),
        nest(MAX_DEPTH, lambda v: {"k": v}),
        nest(MAX_DEPTH, lambda v: frozenset([v])),
        nest(MAX_DEPTH - 1, lambda v: [{"a": 1}] * 9 + [v]),
        nest(MAX_DEPTH - 1, lambda v: [[1]] * 9 + [v]),
        nest(50, lambda v: [v, (v,), {"k": v}] if isinstance(v, int) else [v, 0]),
        [{"id": i, "name": f"n{i}", "ok": i % 2 == 0} for i in range(100)],
        [{"id": i} for i in range(20)] + [{"id": 2**64}],
        [{"s": "\ud800"}] * 10,
        {"flat": list(range(20)), "t": tuple(range(20)), "\udfff": {"\ud800"}},
    ]


CORPUS: list[object] = [
    *SCALARS,
    *(case.value for case in CONTAINERS),
    *_ints(),
    *FLOATS,
    *_strs(),
    *_bytes(),
    *_lists(),
    *_tuples(),
    *_dicts(),
    *_keys(),
    {key: i for i, key in enumerate(_keys())},
    [{key: key} for key in _keys() if key is not None],
    *_sets(),
    *_datetimes(),
    *_decimals(),
    *_nested(),
]


def _ambiguous() -> list[tuple[object, object]]:
    """A ZoneInfo datetime in the hour that repeats: it compares unequal to every datetime of
    another zone (PEP 495), so it is checked against the fixed-offset one it comes back as."""
    try:
        import zoneinfo

        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except (ImportError, zoneinfo.ZoneInfoNotFoundError):
        return []
    return [
        (
            datetime(2024, 10, 27, 2, 30, tzinfo=paris, fold=fold),
            datetime(2024, 10, 27, 2, 30, tzinfo=timezone(timedelta(hours=hours)), fold=fold),
        )
        for fold, hours in ((0, 2), (1, 1))
    ]


CONVERTED: list[tuple[object, object]] = [
    *_ambiguous(),
    (bytearray(b"abc"), b"abc"),
    (bytearray(300), bytes(300)),
    (memoryview(b"abcdef")[::2], b"ace"),
    (memoryview(struct.pack("<3i", 1, 2, 3)).cast("i"), struct.pack("<3i", 1, 2, 3)),
    ([bytearray(b"x"), {"m": memoryview(b"y")}], [b"x", {"m": b"y"}]),
    ({memoryview(b"k"): (bytearray(b"t"),)}, {b"k": (b"t",)}),
    (frozenset({memoryview(b"s")}), frozenset({b"s"})),
]


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = 30


def _stable(value: object, depth: int = 0) -> str:
    """A repr that does not depend on the hash seed (set members sorted), so that test ids
    are the same in every process (pytest-xdist compares them)."""
    if depth > 4:
        return "..."
    if isinstance(value, set | frozenset):
        inner = ", ".join(sorted(_stable(v, depth + 1) for v in value))
        return f"{{{inner}}}" if type(value) is set else f"frozenset({{{inner}}})"
    if isinstance(value, list):
        return "[" + ", ".join(_stable(v, depth + 1) for v in value[:8]) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_stable(v, depth + 1) for v in value[:8])
        return "(" + inner + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        items = list(value.items())[:8]
        return (
            "{"
            + ", ".join(f"{_stable(k, depth + 1)}: {_stable(v, depth + 1)}" for k, v in items)
            + "}"
        )
    if isinstance(value, memoryview):
        return f"memoryview({value.tobytes()!r})"
    try:
        return re.sub(r" at 0x[0-9a-f]+", "", repr(value))[:80]
    except Exception:
        return type(value).__name__


def _id(value: object) -> str:
    if type(value) is int and value.bit_length() > 64:
        return f"int:{'-' if value < 0 else ''}{value.bit_length()}bits"
    return f"{type(value).__name__}:{_stable(value)[:60]}"


def _check(value: object, want: object) -> None:
    """Both implementations write ``value`` as the same bytes, and read them back (and each
    other's) as ``want``."""
    data = pure_encode(value)
    assert type(data) is bytes
    assert fast_encode(value) == data
    assert_same(pure_decode(data), want)
    assert_same(fast_decode(data), want)


@pytest.mark.parametrize("value", CORPUS, ids=_id)
def test_same_bytes_and_values(value: object) -> None:
    _check(value, value)


@pytest.mark.parametrize("value,want", CONVERTED, ids=[_id(v) for v, _ in CONVERTED])
def test_converted_values(value: object, want: object) -> None:
    """Values that come back as another value (bytes-likes, ZoneInfo datetimes)."""
    _check(value, want)


def test_corpus_covers_every_form() -> None:
    """Every MessagePack opcode encode can write, and every extension type, occurs."""
    seen: set[int] = set()
    codes: set[int] = set()

    def walk(data: bytes) -> None:
        seen.add(data[0])
        if data[0] in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8):
            codes.add(struct.unpack_from(">b", data, 1)[0])
        elif data[0] in (0xC7, 0xC8, 0xC9):
            codes.add(struct.unpack_from(">b", data, {0xC7: 2, 0xC8: 3, 0xC9: 5}[data[0]])[0])

    def form(op: int) -> int:  # the fixed forms (fixint, fixmap...) by their first opcode
        for first in (0xE0, 0xC0, 0xA0, 0x90, 0x80, 0x00):
            if op >= first:
                return op if first == 0xC0 else first
        raise AssertionError  # pragma: no cover

    for value in CORPUS:
        walk(pure_encode(value))
    forms = {0x00, 0x80, 0x90, 0xA0, 0xE0} | set(range(0xC0, 0xE0))
    forms -= {0xC1, 0xCA}  # never used; float32, which encode never writes
    assert {form(op) for op in seen} == forms
    assert codes == {-1, *range(1, 11)}


# -- random values ----------------------------------------------------------------------------


class RandomValues:
    """Random supported values, built from ``random.Random(seed)``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self) -> int:
        rng = self.rng
        bits = rng.choice([3, 5, 7, 8, 15, 16, 31, 32, 63, 64, 65, 100, 300])
        v = rng.getrandbits(bits) if rng.random() < 0.8 else 2 ** rng.choice([7, 8, 16, 63, 64])
        return v if rng.random() < 0.6 else -v - rng.randrange(2)

    def float(self, key: bool = False) -> float:
        rng = self.rng
        v = rng.choice(FLOATS) if rng.random() < 0.3 else struct.unpack(">d", rng.randbytes(8))[0]
        return 0.5 if key and math.isnan(v) else v  # nan != nan: not usable as a key here

    def str(self) -> str:
        rng = self.rng
        n = rng.choice([0, 1, 5, 31, 32, 33, 200, 300])
        alphabet = rng.choice(["ascii", "bmp", "any"])
        top = {"ascii": 0x7F, "bmp": 0xFFFF, "any": 0x10FFFF}[alphabet]
        return "".join(chr(rng.randint(0, top)) for _ in range(n))

    def datetime(self) -> object:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            seconds = rng.randint(-(2**35), 2**35) if rng.random() < 0.5 else rng.getrandbits(32)
            micros = rng.choice([0, rng.randrange(1_000_000)])
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
                seconds=seconds, microseconds=micros
            )
        base = datetime.min + timedelta(microseconds=rng.randrange(3 * 10**17))
        base = base.replace(fold=rng.randrange(2))
        minutes = rng.randint(-1439, 1439)
        tz = rng.choice([None, UTC, timezone(timedelta(minutes=minutes))])
        if kind == 1:
            return base.replace(tzinfo=tz)
        if kind == 2:
            return base.time().replace(tzinfo=tz, fold=base.fold)
        if kind == 3:
            return base.date()
        return timedelta(microseconds=rng.randint(-(10**17), 10**17))

    def decimal(self, key: bool = False) -> Decimal:
        rng = self.rng
        if not key and rng.random() < 0.2:
            return Decimal(rng.choice(["NaN", "sNaN", "-Infinity", "-0", "0E+3"]))
        return Decimal(f"{self.int()}E{rng.randint(-30, 30)}")

    def key(self, depth: int) -> object:
        rng = self.rng
        kind = rng.randrange(9 if depth < 3 else 7)
        makers: list[Callable[[], object]] = [
            lambda: self.str(),
            self.int,
            lambda: self.float(key=True),
            lambda: rng.choice([None, True, False]),
            lambda: rng.randbytes(rng.choice([0, 3, 40])),
            self.datetime,
            lambda: self.decimal(key=True),
            lambda: tuple(self.key(depth + 1) for _ in range(rng.randrange(4))),
            lambda: frozenset(self.key(depth + 1) for _ in range(rng.randrange(4))),
        ]
        return makers[kind]()

    def value(self, depth: int = 0) -> object:
        rng = self.rng
        if depth >= 4 or rng.random() < 0.4:
            return self.key(3)
        n = rng.choice([0, 1, 2, 3, 8, 16, 17])
        kind = rng.randrange(5)
        if kind == 0:
            return [self.value(depth + 1) for _ in range(n)]
        if kind == 1:
            return tuple(self.value(depth + 1) for _ in range(n))
        if kind == 2:
            return {self.key(depth + 1): self.value(depth + 1) for _ in range(n)}
        if kind == 3:
            return {self.key(depth + 1) for _ in range(n)}
        return frozenset(self.key(depth + 1) for _ in range(n))


@pytest.mark.parametrize("seed", [1, 2, 3, 20240501])
def test_random_values(seed: int) -> None:
    values = RandomValues(seed)
    for _ in range(400):
        value = values.value()
        _check(value, value)


# -- rejection --------------------------------------------------------------------------------


def _errors(value: object) -> tuple[str, str]:
    with pytest.raises(CodecError) as pure:
        pure_encode(value)
    with pytest.raises(CodecError) as fast:
        fast_encode(value)
    return str(pure.value), str(fast.value)


def _cycles() -> list[object]:
    a: list[object] = []
    a.append(a)
    d: dict[str, object] = {"x": [1]}
    d["x"].append({"y": d})  # type: ignore[attr-defined]
    t: tuple[list[object]] = ([],)
    t[0].append(t)
    inner: list[object] = []
    outer = {"a": [inner]}
    inner.append(outer["a"])
    b: list[object] = []
    b.extend([b, b, b])
    return [a, d, t, outer, b, {"k": {1: (d,)}}]


BAD_VALUES: list[object] = [
    *(case.value for case in REJECTED + SUBCLASSES),
    *({"items": [1, 2, case.value]} for case in REJECTED + SUBCLASSES),
    *({(1, case.value): 0} for case in REJECTED if case.value.__hash__ is not None),
    *({"s": {1, (2, case.value)}} for case in REJECTED if case.value.__hash__ is not None),
    nest(MAX_DEPTH + 1, lambda v: [v]),
    nest(MAX_DEPTH + 1, lambda v: (v,)),
    nest(MAX_DEPTH + 1, lambda v: {"k": v}),
    nest(MAX_DEPTH + 1, lambda v: frozenset([v])),
    nest(MAX_DEPTH, lambda v: [{"a": 1}] * 9 + [v]),
    nest(100_000, lambda v: [v]),
    [2**70, "\ud800", {"k": object()}],
    *_cycles(),
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=_id)
def test_same_rejections(value: object) -> None:
    pure, fast = _errors(value)
    assert pure == fast
    with pytest.raises(CodecError) as cloned:
        codec.clone(value, lambda _: False)
    assert str(cloned.value) == pure.replace("cannot store", "cannot send", 1)


# -- clone: what RPC passes -------------------------------------------------------------------


@pytest.mark.parametrize("value", CORPUS, ids=_id)
def test_clone_gives_what_decoding_gives(value: object) -> None:
    cloned = codec.clone(value, lambda _: False)
    assert_same(pure_decode(pure_encode(value)), cloned)


def test_clone_copies_containers_and_keeps_what_it_is_told() -> None:
    def callback() -> None:
        pass

    class Row(dict[str, object]):
        _rpc_as_dict = True

    value = {"f": callback, "list": [1, (2, [3])], "row": Row(a=[1]), "b": bytearray(b"x")}
    cloned = codec.clone(value, callable)
    assert cloned["f"] is callback
    assert cloned["list"] == [1, (2, [3])] and cloned["list"] is not value["list"]
    assert cloned["list"][1][1] is not value["list"][1][1]  # type: ignore[index]
    assert type(cloned["row"]) is dict and cloned["row"] == {"a": [1]}
    assert type(cloned["b"]) is bytes
    with pytest.raises(
        CodecError, match=r"cannot send a value of type 'function' \(at value\['f'\]\)"
    ):
        codec.clone(value, lambda _: False)


# -- decoding anything ------------------------------------------------------------------------


def _outcome(decode: Callable[[bytes], object], data: bytes) -> object:
    try:
        return decode(data)
    except DecodeError:
        return DecodeError


def _agree(data: bytes) -> bool:
    """Both decoders raise ``DecodeError``, or both give the same value; whether it decoded."""
    pure = _outcome(pure_decode, data)
    fast = _outcome(fast_decode, data)
    if pure is DecodeError or fast is DecodeError:
        assert pure is fast, (data.hex(), pure, fast)
        return False
    assert_only_supported(pure)
    assert_only_supported(fast)
    try:  # the encoding tells every type, float bit and order apart, and nan from nan
        same = pure_encode(pure) == pure_encode(fast)
    except CodecError:  # deeper than encode allows
        assert_same(pure, fast)
    else:
        assert same, data.hex()
    return True


def test_random_bytes_decode_alike() -> None:
    rng = random.Random(99)
    decoded = sum(_agree(rng.randbytes(rng.randint(0, 40))) for _ in range(20_000))
    assert decoded > 100


def test_mutated_encodings_decode_alike() -> None:
    rng = random.Random(5)
    seeds = [pure_encode(v) for v in CORPUS if len(pure_encode(v)) < 2000]
    decoded = 0
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if not data:
                break
            i = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i]
            else:
                data.insert(i, rng.randrange(256))
        decoded += _agree(bytes(data))
    assert decoded > 1000


def _ext(code: int, payload: bytes) -> bytes:
    return msgspec.msgpack.encode(Ext(code, payload))


def test_forged_extensions_decode_alike() -> None:
    payloads = [*PAYLOADS, msgspec.msgpack.encode([2**64 - 1, 1, 1]), b"\x93\x01\x02"]
    payloads += [msgspec.msgpack.encode([[1], {"a": (1,)}]), b"\x90\x00", b"\xdc\x00\x00"]
    payloads += [bytes(n) for n in (4, 8, 12)] + [b"\xff" * n for n in (4, 8, 12)]
    for code in range(-128, 128):
        for payload in payloads:
            data = _ext(code, payload)
            for forged in (data, b"\x92\x01" + data, b"\x81" + data + b"\x01"):
                _agree(forged)
            _agree(_ext(3, msgspec.msgpack.encode([Ext(code, payload)])))
            _agree(b"\x81\x91" + data + b"\x01")  # in an array used as a map key


def _timestamp(nanoseconds: int, seconds: int) -> bytes:
    return b"\xc7\x0c\xff" + struct.pack(">Iq", nanoseconds, seconds)


def test_timestamps_decode_alike() -> None:
    """Timestamps encode never writes (nanoseconds, the edges of datetime's range) are read
    the same way: rounded half up to microseconds, or rejected."""
    low, high = -62135596800, 253402300799
    for seconds in (low - 1, low, low + 1, -1, 0, 2**32, high - 1, high, high + 1, 2**63 - 1):
        for nanoseconds in (0, 1, 499, 500, 501, 1500, 2500, 999_999_499, 999_999_500):
            _agree(_timestamp(nanoseconds, seconds))
        _agree(_timestamp(10**9, seconds))
    rng = random.Random(3)
    for _ in range(2000):
        _agree(b"\xd7\xff" + rng.randbytes(8))
        _agree(b"\xd6\xff" + rng.randbytes(4))
        _agree(b"\xc7\x0c\xff" + rng.randbytes(12))


def test_array_map_keys_become_tuples() -> None:
    for data in (
        b"\x81\x91\x01\x01",
        b"\x81\x91\x91\x01\x01",
        b"\x81\x90\xc0",
        b"\x81\x92\x80\x01\x01",
        b"\x81\xdc\x00\x01\x01\x01",  # the wider array forms
        b"\x81\xdd\x00\x00\x00\x01\xdc\x00\x00\x01",
        b"\x81\xd5\x02\x91\x91\x01",  # a tuple holding an array: a list, so unhashable
    ):
        _agree(data)
    assert_same(pure_decode(b"\x81\x92\x01\x91\xa1a\x02"), {(1, ("a",)): 2})
    assert_same(pure_decode(b"\x81\xdd\x00\x00\x00\x01\xdc\x00\x00\x01"), {((),): 1})


# -- the reference decoder on corrupt input ---------------------------------------------------


def test_every_truncation_is_a_decode_error() -> None:
    for value in (
        CONTAINERS[-1].value,
        {key: [key, (key,), {key}] for key in _keys()},
        _datetimes(),
        _decimals(),
        [2**64, "\ud800", 1.5, b"x" * 300, "y" * 300, list(range(20)), {i: i for i in range(20)}],
    ):
        data = pure_encode(value)
        for end in range(len(data)):
            with pytest.raises(DecodeError):
                pure_decode(data[:end])
        with pytest.raises(DecodeError):
            pure_decode(data + b"\xc0")


@pytest.mark.timeout(10)
def test_huge_lengths_fail_fast() -> None:
    for op in (b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"):
        for length in (b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"):
            with pytest.raises(DecodeError, match="truncated"):
                pure_decode(op + length + b"\x01" * 64)
            with pytest.raises(DecodeError):
                pure_decode(_ext(2, op + length + b"\x01"))


def test_deep_input_is_a_decode_error() -> None:
    for data in (b"\x91" * 100_000, b"\x81" * 100_000, b"\x81\x91" * 50_000, b"\xd5\x02" * 5):
        with pytest.raises(DecodeError):
            pure_decode(data)
    deep = b"\xc0"  # a tuple of tuples, each inside the other's payload
    for _ in range(2000):
        deep = b"\xc9" + struct.pack(">I", len(deep) + 1) + b"\x02\x91" + deep
    with pytest.raises(DecodeError):
        pure_decode(deep)


def test_bad_extension_payloads() -> None:
    enc = msgspec.msgpack.encode
    for data in (
        _ext(2, b""),  # a tuple with no array
        _ext(2, enc(1)),
        _ext(2, b"\x92\x01"),  # its array truncated
        _ext(2, b"\x91\x01\x01"),  # a byte after its array
        _ext(3, enc([[1]])),  # a set of lists
        _ext(3, enc([{}])),
        _ext(5, enc([2020, 1, 1, 0, 0, 0, 0, 0.5])),
        _ext(5, enc([2020, 1, 1, 0, 0, 0, 0, Ext(1, b"\x01")])),
        _ext(5, enc([2020, 1, 1, 0, 0, 0, 0, 0]) + b"\x00"),
        _ext(6, enc([2020, 1, 32])),
        _ext(6, enc([2**64 - 1, 1, 1])),
        _ext(6, enc((2020, 1, 1))[:-1]),
        _ext(7, enc([1, 2, 3, 4, 0, 86_400 * 10**6])),
        _ext(8, enc([2**63, 0, 0])),
        _ext(9, b""),
        _ext(9, "١".encode()),  # not ASCII
        _ext(10, b"\xc3"),
        _ext(-1, b"\x00" * 5),
        _ext(-1, b"\xff" * 4 + b"\x00"),
        _timestamp(10**9, 0),
        _timestamp(0, 2**62),
    ):
        with pytest.raises(DecodeError):
            pure_decode(data)


def test_unknown_extension_codes() -> None:
    for code in [*range(-128, -1), 0, *range(11, 128)]:
        for payload in (b"", b"\x00", b"\x90", bytes(16), bytes(300)):
            with pytest.raises(DecodeError, match=f"unknown extension type {code}"):
                pure_decode(_ext(code, payload))


def test_decode_reads_every_input_type() -> None:
    data = pure_encode({"a": (1,)})
    for decode in (pure_decode, fast_decode):
        for given in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
            assert_same(decode(given), {"a": (1,)})
        with pytest.raises(TypeError, match="decode\\(\\) expects bytes, got str"):
            decode("abc")  # type: ignore[arg-type]


# -- installing an accelerator ----------------------------------------------------------------


def test_install_and_uninstall() -> None:
    before = codec.accelerator()
    calls: list[str] = []

    def spy_encode(value: object) -> bytes:
        calls.append("encode")
        return fast_encode(value)

    def spy_decode(data: bytes | bytearray | memoryview) -> object:
        calls.append("decode")
        return fast_decode(data)

    try:
        codec.install(spy_encode, spy_decode)
        assert codec.accelerator() == (spy_encode, spy_decode)
        assert codec.decode(codec.encode([1])) == [1]
        assert calls == ["encode", "decode"]
        codec.uninstall()
        assert codec.accelerator() is None
        assert codec.decode(codec.encode([1])) == [1]
        assert calls == ["encode", "decode"]  # the reference ran
        fastcodec.install()
        assert codec.accelerator() == (fast_encode, fast_decode)
    finally:
        if before is None:
            codec.uninstall()
        else:
            codec.install(*before)


def test_reference_imports_only_the_standard_library() -> None:
    """The codec, its rules and its reference implementation import the standard library
    and each other, nothing else (tests/test_layers.py checks all of core the same way)."""
    import ast
    import sys
    from pathlib import Path

    assert codec.__file__ is not None
    for name in ("codec.py", "values.py", "msgpack.py"):
        tree = ast.parse((Path(codec.__file__).parent / name).read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:  # a sibling in core
                    assert node.module in ("values", "msgpack"), (name, node.module)
                    continue
                assert node.level == 0 and node.module is not None
                imported.add(node.module.split(".")[0])
        assert imported - {"__future__"} <= sys.stdlib_module_names, (name, imported)
        assert "importlib" not in imported and "__import__" not in ast.dump(tree)
