"""The value codec: exact round trips, strict rejection, safe decoding.

Every test runs on both implementations: the reference (``opendo.core.codec``, plain Python)
and the accelerator (``opendo.storage.fastcodec``, msgspec), installed by the ``codec``
fixture. ``test_codec_impls`` holds them to the same bytes.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import enum
import math
import os
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec
import pytest
from msgspec.msgpack import Ext

from opendo.core import codec as core_codec
from opendo.core.codec import (
    MAX_DEPTH,
    SUPPORTED_TYPES,
    CodecError,
    DecodeError,
    decode,
    encode,
)
from opendo.storage import fastcodec

IMPLEMENTATIONS = ["pure", "msgspec"]


def use(implementation: str) -> None:
    """Make ``encode`` and ``decode`` run on ``implementation``."""
    if implementation == "msgspec":
        fastcodec.install()
    else:
        core_codec.uninstall()


@pytest.fixture(autouse=True, params=IMPLEMENTATIONS)
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    """The implementation this test runs on (installed for its duration)."""
    before = core_codec.accelerator()
    use(request.param)
    try:
        yield request.param
    finally:
        if before is None:
            core_codec.uninstall()
        else:
            core_codec.install(*before)


# -- helpers --------------------------------------------------------------------------------


def assert_same(got: object, want: object, path: str = "value") -> None:
    """``got`` equals ``want``, with the same type at every level (and nan, -0.0 and Decimal
    exponents told apart)."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, float):
        assert isinstance(got, float)
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    elif isinstance(want, Decimal):
        assert str(got) == str(want), path
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple)
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict)
        assert len(got) == len(want), path
        for (gk, gv), (wk, wv) in zip(got.items(), want.items(), strict=True):  # order too
            assert_same(gk, wk, f"{path}<key {wk!r}>")
            assert_same(gv, wv, f"{path}[{wk!r}]")
    elif isinstance(want, set | frozenset):
        assert isinstance(got, set | frozenset)
        assert len(got) == len(want), path
        nans = [x for x in want if isinstance(x, float) and math.isnan(x)]
        assert len([x for x in got if isinstance(x, float) and math.isnan(x)]) == len(nans)
        by_value = {x: x for x in got}
        for w in want:
            if not (isinstance(w, float) and math.isnan(w)):
                assert w in by_value, f"{path}: {w!r} missing"
                assert_same(by_value[w], w, f"{path}<element {w!r}>")
    elif isinstance(want, datetime | time):
        assert isinstance(got, datetime | time)
        assert got == want and got.fold == want.fold, path
        assert got.utcoffset() == want.utcoffset(), path
        assert got.tzinfo is None or type(got.tzinfo) is timezone, path
    else:
        assert got == want, path


def round_trip(value: object) -> object:
    data = encode(value)
    assert type(data) is bytes
    return decode(data)


def assert_only_supported(value: object) -> None:
    """Every object in ``value`` is of a supported type (iterative: ``value`` may be deep)."""
    stack = [value]
    while stack:
        v = stack.pop()
        assert type(v) in SUPPORTED_TYPES, type(v)
        if isinstance(v, list | tuple | set | frozenset):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, datetime | time):
            assert v.tzinfo is None or type(v.tzinfo) is timezone


def nest(depth: int, wrap: Any, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


class Foo:
    pass


class Color(enum.IntEnum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Plain(enum.Enum):
    A = "a"


class MyInt(int):
    pass


class MyStr(str):
    pass


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


class MyList(list[int]):
    pass


class MyDatetime(datetime):
    pass


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Data:
    x: int = 1


class FixedTz(tzinfo):
    """A user tzinfo with a fixed offset of +02:00."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "X"


class FixedTzZero(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "Zero"


class NoOffsetTz(tzinfo):
    """A tzinfo without offsets: its datetimes are naive, for Python."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None

    def dst(self, dt: datetime | None) -> None:
        return None

    def tzname(self, dt: datetime | None) -> None:
        return None


def helper_function() -> None:
    pass


# -- round trips ----------------------------------------------------------------------------

SCALARS = [
    None,
    True,
    False,
    0,
    1,
    -1,
    255,
    -129,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    2**1000,
    -(2**1000) + 7,
    10**5000,  # more digits than int -> str allows by default
    0.0,
    -0.0,
    1.0,
    1.5,
    -2.25,
    math.pi,
    1e308,
    5e-324,
    -5e-324,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "a",
    "héllo wörld",
    "日本語",
    "😀 emoji \U0010ffff",
    "\x00nul\x00",
    "\ud800",
    "a\udfffb",
    "\udc80" * 3 + "é",
    "x" * 100_000,
    b"",
    b"\x00\xff",
    bytes(range(256)),
    b"x" * 100_000,
    date(2024, 2, 29),
    date.min,
    date.max,
    datetime(2024, 5, 6, 7, 8, 9, 123456),
    datetime.min,
    datetime.max,
    datetime(2024, 11, 3, 1, 30, fold=1),
    datetime(2024, 5, 6, tzinfo=UTC),
    datetime(2024, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2024, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=-11))),
    datetime(2024, 5, 6, tzinfo=timezone(timedelta(seconds=-59, microseconds=7))),
    datetime.min.replace(tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime.min.replace(tzinfo=timezone(timedelta(hours=23, minutes=59))),
    datetime.max.replace(tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
    time(),
    time(23, 59, 59, 999999),
    time(1, 2, 3, fold=1),
    time(12, 0, tzinfo=timezone(timedelta(hours=-3))),
    time.min,
    time.max,
    timedelta(0),
    timedelta(days=-1, seconds=5, microseconds=7),
    timedelta(microseconds=1),
    timedelta.min,
    timedelta.max,
    Decimal("0"),
    Decimal("-0"),
    Decimal("1.10"),
    Decimal("-123456789012345678901234567890.000001"),
    Decimal("1E+1000"),
    Decimal("1e-1000"),
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("NaN123"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
]


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
    return f"{type(value).__name__}:{_stable(value):.40}"


@pytest.mark.parametrize("value", SCALARS, ids=_id)
def test_scalar_round_trip(value: object) -> None:
    assert_same(round_trip(value), value)


class Rec(NamedTuple):
    name: str
    value: object


CONTAINERS = [
    Rec("empty list", []),
    Rec("empty tuple", ()),
    Rec("empty dict", {}),
    Rec("empty set", set()),
    Rec("empty frozenset", frozenset()),
    Rec("list of scalars", [None, True, 0, 1.0, "s", b"b", 2**70, -0.0, math.nan]),
    Rec("tuple of one", (1,)),
    Rec("tuple of tuples", ((), ((),), (1, (2, (3,))))),
    Rec("list vs tuple", [[1, 2], (1, 2), [(1,)], ([1],)]),
    Rec("int float bool distinct", [1, 1.0, True, 0, 0.0, False]),
    Rec("dict order", {"b": 1, "a": 2, "c": 3, "0": 4}),
    Rec("dict reverse insertion", dict(reversed([(str(i), i) for i in range(50)]))),
    Rec(
        "dict key types",
        {
            "s": 0,
            2: 1,
            True: 2,
            None: 3,
            1.5: 4,
            -0.0: 5,
            math.inf: 6,
            b"k": 7,
            (1, "a", (2, None)): 8,
            (): 9,
            frozenset({1, 2}): 10,
            frozenset(): 11,
            2**80: 12,
            -(2**80): 13,
            datetime(2020, 1, 1): 14,
            datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=1): 15,
            date(2020, 1, 2): 16,
            time(3): 17,
            timedelta(1): 18,
            Decimal("1.50"): 19,
            "\ud800": 20,
            (b"x", 1.0, False): 21,
        },
    ),
    Rec("set of mixed", {1, "a", None, b"x", 2.5, (1, (2,)), frozenset({3}), 2**90, False}),
    Rec("set with nan", {math.nan, 1.0}),
    Rec("frozenset of frozensets", frozenset({frozenset(), frozenset({frozenset({1})})})),
    Rec("set of datetimes", {datetime(2020, 1, d) for d in range(1, 20)}),
    Rec("set of many strs", {f"item-{i}" for i in range(200)}),
    Rec("nested dicts", {"a": {"b": {"c": {"d": [1, {"e": ()}]}}}}),
    Rec("list of records", [{"id": i, "name": f"n{i}", "ok": i % 2 == 0} for i in range(100)]),
    Rec("list of records with a tuple", [{"id": i, "t": (i,)} for i in range(20)]),
    Rec("list of records with a big int", [{"id": i} for i in range(20)] + [{"id": 2**64}]),
    Rec("list of flat lists", [[i, str(i), None] for i in range(20)]),
    Rec("list of flat lists, one nested", [[i] for i in range(20)] + [[[1.5]]]),
    Rec("dict of flat dicts", {f"k{i}": {"v": i} for i in range(20)}),
    Rec("surrogate deep inside", {"a": [1, {"b": ("x", "\udc00")}], "\udfff": {"\ud800"}}),
    Rec("surrogate and big int", [2**65, "\ud800", {2**66: "\udc01"}]),
    Rec(
        "large flat members of a converted value",
        {
            "t": (1,),
            "flat": {f"k{i}": i for i in range(20)},
            "flat list": list(range(20)),
            "flat tuple": tuple(range(20)),
            "big ints": {f"k{i}": 2**70 + i for i in range(10)},
            "surrogates": ["\ud800"] * 10,
            "big int tuple": tuple(2**64 + i for i in range(10)),
        },
    ),
    Rec(
        "document",
        {
            "id": "user:1",
            "created": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "birthday": date(1990, 5, 17),
            "wake": time(7, 30),
            "ttl": timedelta(hours=1),
            "balance": Decimal("12.30"),
            "tags": {"admin", "beta"},
            "roles": frozenset({"r"}),
            "pos": (1.5, -2.0),
            "avatar": b"\x89PNG",
            "history": [{"at": datetime(2024, 1, 1), "delta": -1}, None, [[], {}]],
            "scores": {1: 10, 2: 20},
            "meta": {"nested": {"deeper": [(1, 2), {3, 4}]}},
        },
    ),
]


@pytest.mark.parametrize("case", CONTAINERS, ids=lambda c: c.name)
def test_container_round_trip(case: Rec) -> None:
    assert_same(round_trip(case.value), case.value)


def test_types_stay_distinct() -> None:
    encodings = {encode(v) for v in (1, 1.0, True, "1", b"1", (1,), [1], {1}, frozenset({1}))}
    assert len(encodings) == 9
    assert type(round_trip(True)) is bool
    assert type(round_trip(1)) is int
    assert type(round_trip(1.0)) is float


def test_bytes_like_come_back_as_bytes() -> None:
    assert_same(round_trip(bytearray(b"abc")), b"abc")
    assert_same(round_trip(memoryview(b"abc")), b"abc")
    assert_same(round_trip(memoryview(b"abcdef")[::2]), b"ace")  # not contiguous
    ints = array.array("i", [1, 2])
    assert_same(round_trip(memoryview(ints)), ints.tobytes())
    assert_same(round_trip([bytearray(b"x"), {"m": memoryview(b"y")}]), [b"x", {"m": b"y"}])
    assert_same(round_trip({memoryview(b"k"): 1}), {b"k": 1})
    assert_same(round_trip((bytearray(b"t"),)), (b"t",))


def test_zoneinfo_becomes_fixed_offset() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    for month, hours in ((1, 1), (7, 2)):
        value = datetime(2024, month, 1, 12, tzinfo=paris)
        got = round_trip(value)
        assert got == value  # the same instant
        assert_same(got, datetime(2024, month, 1, 12, tzinfo=timezone(timedelta(hours=hours))))
    # A ZoneInfo time has no offset (utcoffset() is None): Python counts it as naive.
    assert_same(round_trip(time(12, tzinfo=paris)), time(12))


def test_other_tzinfos() -> None:
    assert_same(
        round_trip(datetime(2024, 1, 1, tzinfo=FixedTz())),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2))),
    )
    assert_same(round_trip(time(1, tzinfo=FixedTz())), time(1, tzinfo=timezone(timedelta(hours=2))))
    assert_same(round_trip(datetime(2024, 1, 1, tzinfo=NoOffsetTz())), datetime(2024, 1, 1))
    named = timezone(timedelta(hours=1), "CET")
    got = round_trip(datetime(2024, 1, 1, tzinfo=named))
    assert isinstance(got, datetime) and got.utcoffset() == timedelta(hours=1)
    utc = round_trip(datetime(2024, 1, 1, tzinfo=timezone(timedelta(0))))
    assert isinstance(utc, datetime) and utc.tzinfo is UTC


def test_shared_references_become_copies() -> None:
    shared = [1, 2]
    got = round_trip([shared, shared, (shared,)])
    assert got == [[1, 2], [1, 2], ([1, 2],)]
    assert isinstance(got, list) and got[0] is not got[1]


def test_decoded_containers_are_fresh_and_mutable() -> None:
    value = {"a": [1]}
    got = round_trip(value)
    assert isinstance(got, dict)
    got["a"].append(2)
    assert value == {"a": [1]}


# -- rejection ------------------------------------------------------------------------------


def _reject(value: object) -> str:
    with pytest.raises(CodecError) as info:
        encode(value)
    assert isinstance(info.value, TypeError)
    return str(info.value)


REJECTED = [
    Rec("object", object()),
    Rec("Foo", Foo()),
    Rec("function", helper_function),
    Rec("function", lambda: None),
    Rec("complex", 1 + 2j),
    Rec("type", int),
    Rec("ellipsis", ...),
    Rec("range", range(3)),
    Rec("generator", (i for i in range(3))),
    Rec("Data", Data()),
    Rec("UUID", uuid.UUID(int=0)),
    Rec("Ext", Ext(2, b"\x90")),
    Rec("Raw", msgspec.Raw(b"\x01")),
    Rec("Plain", Plain.A),
]


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.name)
def test_rejects_unsupported_types(case: Rec) -> None:
    for value, where in (
        (case.value, "value"),
        ({"items": [1, 2, case.value]}, "value['items'][2]"),
        ([(0, {"k": case.value})], "value[0][1]['k']"),
    ):
        message = _reject(value)
        assert f"cannot store a value of type {case.name!r} (at {where})" in message
        assert "Supported types are None, bool, int" in message
    if case.name == "Plain":
        assert "store its .value" in _reject(case.value)


SUBCLASSES = [
    Rec("Color", Color.RED),
    Rec("Mode", Mode.FAST),
    Rec("MyInt", MyInt(3)),
    Rec("MyStr", MyStr("s")),
    Rec("MyFloat", MyFloat(1.5)),
    Rec("MyBytes", MyBytes(b"b")),
    Rec("MyList", MyList([1])),
    Rec("Point", Point(1, 2)),
    Rec("OrderedDict", collections.OrderedDict(a=1)),
    Rec("defaultdict", collections.defaultdict(list)),
    Rec("Counter", collections.Counter("ab")),
    Rec("MyDatetime", MyDatetime(2020, 1, 1)),
]


@pytest.mark.parametrize("case", SUBCLASSES, ids=lambda c: c.name)
def test_rejects_subclasses_of_supported_types(case: Rec) -> None:
    base = next(t for t in SUPPORTED_TYPES if isinstance(case.value, t))
    for value, where in ((case.value, "value"), ({"x": [case.value]}, "value['x'][0]")):
        message = _reject(value)
        assert f"cannot store a value of type {case.name!r} (at {where})" in message
        assert f"subclass of {base.__name__}" in message
    if isinstance(case.value, enum.Enum):
        assert "store its .value" in _reject(case.value)


def test_rejects_bad_dict_keys_and_set_elements() -> None:
    message = _reject({"a": {Foo(): 1}})
    assert "type 'Foo' (at value['a']<key <" in message
    message = _reject({(1, object()): "v"})
    assert "type 'object' (at value<key (1, <object object at" in message
    assert ">[1]). Supported" in message
    message = _reject({"s": {1, (2, Color.RED)}})
    assert "type 'Color' (at value['s']<element (2, <Color.RED: 1>)>[1])" in message
    message = _reject(frozenset({1j}))
    assert "type 'complex' (at value<element 1j>)" in message
    message = _reject({Color.RED: 1})
    assert "type 'Color' (at value<key <Color.RED: 1>>)" in message


def test_rejected_value_path_uses_first_occurrence() -> None:
    bad = Foo()
    assert "(at value[1])" in _reject([0, bad, bad])
    assert "(at value['k'])" in _reject({"k": bad, "l": bad})


def test_error_for_unprintable_key() -> None:
    class Ugly:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        def __hash__(self) -> int:
            return 1

    message = _reject({Ugly(): 1})
    assert "type 'test_error_for_unprintable_key.<locals>.Ugly'" in message


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["list", "tuple", "dict", "frozenset", "list of records", "list of lists"]
)
def test_max_depth(kind: str) -> None:
    wrap: Any = {
        "list": lambda v: [v],
        "tuple": lambda v: (v,),
        "dict": lambda v: {"k": v},
        "frozenset": lambda v: frozenset([v]),
        # Long lists of flat records or flat lists take a shortcut in encode: the innermost
        # list's members are one level deeper than the list itself.
        "list of records": lambda v: [{"a": 1}] * 9 + [v],
        "list of lists": lambda v: [[1]] * 9 + [v],
    }[kind]
    levels = MAX_DEPTH - 1 if kind.startswith("list of") else MAX_DEPTH
    ok = nest(levels, wrap)
    assert_same(round_trip(ok), ok)
    too_deep = nest(levels + 1, wrap)
    assert f"nested more than {MAX_DEPTH} deep" in _reject(too_deep)
    assert f"nested more than {MAX_DEPTH} deep" in _reject(nest(levels + 1, wrap, leaf=Foo()))


def test_max_depth_counts_keys_and_sets() -> None:
    key = nest(MAX_DEPTH - 1, lambda v: (v,))
    assert_same(round_trip({key: 1}), {key: 1})
    assert "nested more than" in _reject({(key,): 1})
    assert "nested more than" in _reject({"a": {key}})
    assert_same(round_trip({key}), {key})


def test_max_depth_leaves_room_for_the_callers_stack() -> None:
    value = nest(MAX_DEPTH, lambda v: (v,))
    data = encode(value)

    def deep(n: int) -> object:
        return decode(encode(value)) if n == 0 else deep(n - 1)

    assert_same(deep(150), value)
    assert decode(data) == value


def test_very_deep_value_is_codec_error_not_recursion_error() -> None:
    for wrap in (lambda v: [v], lambda v: (v,), lambda v: {"k": v}):
        assert "nested more than" in _reject(nest(100_000, wrap))


def test_self_reference() -> None:
    a: list[object] = []
    a.append(a)
    assert "contains itself: value[0] is value" in _reject(a)
    d: dict[str, object] = {"x": [1]}
    d["x"].append({"y": d})  # type: ignore[attr-defined]
    assert "contains itself: value['x'][1]['y'] is value" in _reject(d)
    t: tuple[list[object]] = ([],)
    t[0].append(t)
    assert "contains itself: value[0][0] is value" in _reject(t)
    inner: list[object] = []
    outer = {"a": [inner]}
    inner.append(outer["a"])
    assert "contains itself: value['a'][0][0] is value['a']" in _reject(outer)


def test_branching_self_reference_fails_fast() -> None:
    a: list[object] = []
    a.extend([a, a, a])
    d: dict[int, object] = {}
    d.update({i: d for i in range(20)})
    assert "contains itself" in _reject(a)
    assert "contains itself" in _reject(d)


# -- decoding untrusted bytes ---------------------------------------------------------------


def _decodes_safely(data: bytes) -> None:
    try:
        value = decode(data)
    except DecodeError:
        return
    assert_only_supported(value)


def test_corrupt_inputs() -> None:
    for data in (
        b"",
        b"\xc1",  # never used
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # trailing bytes
        b"\xa3ab",  # truncated str
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\x81\x80\x01",  # a map as a map key
        b"\x81\x91\x80\x01",  # an array containing a map as a map key
        b"\xdd\xff\xff\xff\xff",  # huge array length
        b"\xc6\xff\xff\xff\xff",  # huge bin length
    ):
        with pytest.raises(DecodeError):
            decode(data)


def test_every_truncation_is_an_error() -> None:
    data = encode(CONTAINERS[-1].value)
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:end])
    with pytest.raises(DecodeError):
        decode(data + b"\x00")


def test_random_bytes() -> None:
    rng = random.Random(20240501)
    decoded = 0
    for _ in range(20_000):
        data = rng.randbytes(rng.randint(0, 40))
        try:
            value = decode(data)
        except DecodeError:
            continue
        decoded += 1
        assert_only_supported(value)
    assert decoded > 100  # the test does exercise successful decodes


def test_mutated_encodings() -> None:
    rng = random.Random(7)
    seeds = [encode(case.value) for case in CONTAINERS] + [encode(v) for v in SCALARS[:60]]
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if not data:
                break
            op = rng.randrange(3)
            i = rng.randrange(len(data))
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i]
            else:
                data.insert(i, rng.randrange(256))
        _decodes_safely(bytes(data))


def _ext(code: int, payload: bytes) -> bytes:
    return msgspec.msgpack.encode(Ext(code, payload))


PAYLOADS = [
    b"",
    b"\x00",
    b"\xff" * 9,
    msgspec.msgpack.encode(1),
    msgspec.msgpack.encode("1.5"),
    msgspec.msgpack.encode([]),
    msgspec.msgpack.encode([1, 2, 3]),
    msgspec.msgpack.encode([True, 2, 3]),
    msgspec.msgpack.encode([2020, 1, 1]),
    msgspec.msgpack.encode([2020, 13, 1]),
    msgspec.msgpack.encode([2020, 1, 1, 0, 0, 0, 0, 0]),
    msgspec.msgpack.encode([2020, 1, 1, 0, 0, 0, 0, 2]),
    msgspec.msgpack.encode([2020, 1, 1, 0, 0, 0, 0, 0, 86_400_000_000]),
    msgspec.msgpack.encode([1, 2, 3, 4, 0, 5]),
    msgspec.msgpack.encode([10**9, 0, 0]),
    msgspec.msgpack.encode([[1], 2]),
    msgspec.msgpack.encode([{"a": 1}]),
    msgspec.msgpack.encode([Ext(2, b"\x91\x90")]),  # a tuple holding a list
    msgspec.msgpack.encode([Ext(99, b"")]),
    msgspec.msgpack.encode({"a": 1}),
    b"abc",
    b"1e999999999999",
    b"\xe9",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
]


def test_forged_extensions_only_make_supported_types() -> None:
    for code in range(-128, 128):
        for payload in PAYLOADS:
            data = _ext(code, payload)
            _decodes_safely(data)
            _decodes_safely(msgspec.msgpack.encode([1, Ext(code, payload)]))
            _decodes_safely(b"\x81" + data + b"\x01")  # as a map key
            _decodes_safely(_ext(3, msgspec.msgpack.encode([Ext(code, payload)])))  # in a set
            if code not in range(1, 11) and code != -1:
                with pytest.raises(DecodeError):
                    decode(data)


def test_forged_extensions_are_validated() -> None:
    enc = msgspec.msgpack.encode
    for data in (
        _ext(2, enc(1)),  # a tuple that is not an array
        _ext(3, enc([[1]])),  # a set of lists
        _ext(4, enc([{}])),
        _ext(5, enc([2020, 1, 1])),  # too few datetime fields
        _ext(5, enc([2020, 2, 30, 0, 0, 0, 0, 0])),  # no such day
        _ext(5, enc([2020, 1, 1, 0, 0, 0, 0, 2])),  # fold must be 0 or 1
        _ext(5, enc([2020, 1, 1, 0, 0, 0, 0, 0, 24 * 3600 * 10**6])),  # offset too big
        _ext(5, enc([2020, 1, 1, 0, 0, 0, 0, 0, True])),  # a bool is not an int
        _ext(5, enc([2020.0, 1, 1, 0, 0, 0, 0, 0])),
        _ext(6, enc([2020, 1])),
        _ext(7, enc([25, 0, 0, 0, 0])),
        _ext(8, enc([10**10, 0, 0])),  # timedelta out of range
        _ext(8, enc(["1", 0, 0])),
        _ext(9, b"abc"),
        _ext(9, b"\xff"),
        _ext(10, b"\xff"),
        b"\x81" + _ext(2, enc([[1]])) + b"\x01",  # a tuple holding a list, as a map key
        enc(Ext(99, b"")),
    ):
        with pytest.raises(DecodeError):
            decode(data)


def test_utc_datetimes_are_msgpack_timestamps() -> None:
    # An aware datetime at offset 0 is written as MessagePack's own timestamp (extension -1),
    # which msgspec reads back as a datetime in timezone.utc.
    value = datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=UTC)
    data = encode(value)
    assert data == msgspec.msgpack.encode(value)
    assert data[:2] == b"\xd7\xff"
    assert_same(decode(data), value)
    for zero in (timezone(timedelta(0), "Z"), FixedTzZero()):
        assert encode(value.replace(tzinfo=zero)) == data
    # fold=1 has no timestamp form: it takes the general one, and comes back.
    folded = value.replace(fold=1)
    assert encode(folded)[1:2] != b"\xff"
    assert_same(round_trip(folded), folded)
    # A timestamp with nanoseconds (never written by encode) is rounded to microseconds.
    nanos = b"\xd7\xff" + ((1500 << 34) | 5).to_bytes(8, "big")
    assert_same(decode(nanos), datetime(1970, 1, 1, 0, 0, 5, 2, tzinfo=UTC))


def test_decode_accepts_bytes_like_and_rejects_other_types() -> None:
    data = encode({"a": (1,)})
    assert decode(bytearray(data)) == {"a": (1,)}
    assert decode(memoryview(data)) == {"a": (1,)}
    with pytest.raises(TypeError):
        decode("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode(None)  # type: ignore[arg-type]


def test_decode_never_returns_bytearray() -> None:
    assert type(decode(encode(bytearray(b"x")))) is bytes


def test_error_classes() -> None:
    assert issubclass(CodecError, TypeError)
    assert issubclass(DecodeError, ValueError)
    assert not issubclass(DecodeError, CodecError)


def test_supported_types() -> None:
    assert SUPPORTED_TYPES == (
        type(None),
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
        datetime,
        date,
        time,
        timedelta,
        Decimal,
    )


# -- determinism and format stability -------------------------------------------------------


@pytest.mark.parametrize("case", CONTAINERS, ids=lambda c: c.name)
def test_same_value_same_bytes(case: Rec) -> None:
    assert encode(case.value) == encode(case.value)
    again = decode(encode(case.value))
    assert encode(again) == encode(case.value)


def test_equal_sets_give_equal_bytes() -> None:
    items = [f"s{i}" for i in range(100)] + [(i, str(i)) for i in range(50)]
    forwards, backwards = set(items), set()
    for item in reversed(items):
        backwards.add(item)
    grown = set(range(1000)) | set(items)
    grown -= set(range(1000))  # same contents, a different table layout
    assert encode(forwards) == encode(backwards) == encode(grown)
    assert encode(frozenset(items)) == encode(frozenset(reversed(items)))


def test_bytes_do_not_depend_on_hash_seed(codec: str) -> None:
    code = (
        "from opendo.core import codec; from opendo.storage import fastcodec;"
        f"{'fastcodec.install()' if codec == 'msgspec' else 'codec.uninstall()'};"
        "print(codec.encode({'k': {f'x{i}' for i in range(50)}, 'f': frozenset('abcdef')}).hex())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


GOLDEN = [
    (None, "c0"),
    (True, "c3"),
    (42, "2a"),
    (-1, "ff"),
    (2**64 - 1, "cfffffffffffffffff"),
    (2**64, "c70901010000000000000000"),
    (-(2**63) - 1, "c70901ff7fffffffffffffff"),
    (-0.0, "cb8000000000000000"),
    ("a", "a161"),
    ("\ud800", "c7030aeda080"),
    (b"a", "c40161"),
    ([1, (2,)], "9201d5029102"),
    ({"a": 1}, "81a16101"),
    ({(1,): 2}, "81d502910102"),
    ({2, 1}, "c70303920102"),
    (frozenset({"b", "a"}), "c7050492a161a162"),
    (datetime(2020, 1, 2, 3, 4, 5, 6), "c70b0598cd07e401020304050600"),
    (datetime(2020, 1, 2, tzinfo=UTC), "d6ff5e0d3280"),
    (datetime(2020, 1, 2, tzinfo=UTC, fold=1), "c70c0599cd07e40102000000000100"),
    (
        datetime(2020, 1, 2, tzinfo=timezone(timedelta(hours=-5))),
        "c7140599cd07e401020000000000d3fffffffbcf1dcc00",
    ),
    (date(2020, 1, 2), "c7060693cd07e40102"),
    (time(1, 2, 3, 4), "c70607950102030400"),
    (time(1, tzinfo=timezone(timedelta(minutes=90))), "c70f07960100000000cf0000000141dd7600"),
    (timedelta(1, 2, 3), "d60893010203"),
    (Decimal("1.10"), "d609312e3130"),
]


@pytest.mark.parametrize("value,hexed", GOLDEN, ids=[_id(v) for v, _ in GOLDEN])
def test_golden_encodings(value: object, hexed: str) -> None:
    """The stored format must never change: these bytes are on disks."""
    assert encode(value).hex() == hexed
    assert_same(decode(bytes.fromhex(hexed)), value)
