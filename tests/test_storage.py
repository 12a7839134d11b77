"""The storage contract: ``ctx.storage`` (KV, SQL, transactions), driven the way users drive it.

Every test runs against every storage driver (the ``driver`` fixture): ``SqliteDriver`` over
real files in a temporary directory, ``MemoryDriver``, and a cluster node on a real PostgreSQL
(``ClusterStore``: its storage is an SQLite cache replicated to PostgreSQL, which must behave
exactly as the others). A new backend joins the contract by being added to ``driver`` (and,
if it is not reopened by building it again over the same place, to ``reopen``).

Objects are driven through stubs, in-process: ``Box.run(fn)`` runs ``fn(instance)`` inside the
object as one RPC call (in-process RPC arguments are passed by reference, so ``fn`` may be a
closure), so a test body can use ``self.ctx.storage`` exactly as a method would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import itertools
import math
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clusters import cluster_runtime
from conftest import reopen, run_inside

from opendo import (
    CodecError,
    DurableObject,
    DurableObjectError,
    MemoryDriver,
    Runtime,
    SqlError,
    SqliteDriver,
    StorageDriver,
    StorageError,
)
from opendo.core.codec import decode
from opendo.runtime.stubs import DurableObjectStub
from opendo.storage.database import RUNTIME_TABLES

MIB = 1024 * 1024

pytest_plugins = ["pg"]


# -- objects --------------------------------------------------------------------------------


class Box(DurableObject):
    """Runs any function inside the object: ``await stub.run(lambda self: ...)``."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.kept: Any = None

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        return await run_inside(self, fn)


class Counter(DurableObject):
    async def increment(self) -> int:
        storage = self.ctx.storage
        value = await storage.get("n") or 0
        await storage.put("n", value + 1)
        return value + 1


class Thing:
    """A class instance: not a storable value."""


# -- fixtures -------------------------------------------------------------------------------


class ClusterStore:
    """The cluster "driver": where a node's objects are (a PostgreSQL database); each runtime
    made over it is a new node, which restores what the last one wrote."""

    def __init__(self, dsn: str, directory: Path) -> None:
        self.dsn = dsn
        self.directory = directory
        self.nodes = 0


@pytest.fixture(params=["sqlite", "memory", "cluster"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SqliteDriver(tmp_path / "data")
    if request.param == "memory":
        return MemoryDriver()
    return ClusterStore(request.getfixturevalue("pg_database").dsn, tmp_path / "caches")


def make_runtime(driver: Any) -> Runtime:
    bindings = {"BOX": Box, "COUNTER": Counter}
    if isinstance(driver, ClusterStore):
        driver.nodes += 1
        _, runtime = cluster_runtime(
            driver.dsn, driver.directory / str(driver.nodes), bindings, lease=30
        )
        return runtime
    return Runtime(bindings=bindings, storage=driver)


@pytest.fixture
async def runtime(driver: StorageDriver) -> Any:
    runtime = make_runtime(driver)
    yield runtime
    await runtime.aclose()


@pytest.fixture
def box(runtime: Runtime) -> DurableObjectStub:
    return runtime.env.BOX.get_by_name("box")


async def run_in(stub: DurableObjectStub, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(instance)`` inside the object behind ``stub`` (awaiting it if async)."""
    return await stub.run(fn)


def utf8(key: str) -> bytes:
    return key.encode("utf-8")


def sql_names(obj: Any, kind: str = "table", *, everything: bool = False) -> list[str]:
    """Names in the schema of the given kind; the runtime's own ``_opendo_*`` tables (and
    their indexes) are left out unless ``everything``."""
    rows = obj.ctx.storage.sql.exec(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = ? ORDER BY name", kind
    )
    return [row["name"] for row in rows if everything or row["tbl_name"] not in RUNTIME_TABLES]


def user_tables(obj: Any) -> list[str]:
    return sql_names(obj, "table")


# -- KV: get / put / delete -----------------------------------------------------------------


async def test_get_of_a_missing_key_is_none(box: DurableObjectStub) -> None:
    assert await run_in(box, lambda o: o.ctx.storage.get("missing")) is None


async def test_put_then_get_round_trips(box: DurableObjectStub) -> None:
    async def put(o: Any) -> None:
        await o.ctx.storage.put("greeting", "hello")

    await run_in(box, put)
    assert await run_in(box, lambda o: o.ctx.storage.get("greeting")) == "hello"


async def test_get_many_returns_found_keys_only_in_utf8_byte_order(box: DurableObjectStub) -> None:
    keys = ["😀", "a", "\uffff", "B", "é", "missing", "", "ab"]

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put({k: f"v{k}" for k in keys if k != "missing"})
        return await st.get(keys), await st.get(("nope", "é")), await st.get([])

    found, from_tuple, empty = await run_in(box, fn)
    assert list(found) == ["", "B", "a", "ab", "é", "\uffff", "😀"]
    assert list(found) == sorted(found, key=utf8)
    assert found == {k: f"v{k}" for k in keys if k != "missing"}
    # U+FFFF (EF BF BF) sorts before U+1F600 (F0 9F 98 80) in UTF-8 (in UTF-16 it would not).
    assert list(found).index("\uffff") < list(found).index("😀")
    assert from_tuple == {"é": "vé"}
    assert empty == {}


async def test_put_many_delete_and_overwrite(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        assert await st.put({"a": 1, "b": 2, "c": 3, "d": 4}) is None
        await st.put("a", "one")  # overwrite
        await st.put({"b": "two"})  # overwrite through a dict
        results = [
            await st.delete("c"),
            await st.delete("c"),
            await st.delete("never"),
            await st.delete(["d", "never", "b"]),
            await st.delete(("d",)),
            await st.delete([]),
        ]
        return results, await st.list()

    results, remaining = await run_in(box, fn)
    assert results == [True, False, False, 2, 0, 0]
    assert [type(r) for r in results[:3]] == [bool, bool, bool]
    assert remaining == {"a": "one"}


async def test_the_empty_string_is_a_key(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("", "empty")
        got = (await st.get(""), await st.get(["", "x"]), await st.list())
        return got, await st.delete(""), await st.get("")

    assert await run_in(box, fn) == (("empty", {"": "empty"}, {"": "empty"}), True, None)


# -- KV: list -------------------------------------------------------------------------------

LIST_KEYS = [
    *("", "\x00", "\x01", " ", "0", "09", "9", "A", "B", "Z", "_", "~", "\x7f"),
    *("a", "a\x00", "a\x00b", "aa", "ab", "abc", "abcd", "abd", "ac", "b", "ba", "bb"),
    *("c", "m", "z", "zz", "zzz", "k1", "k10", "k2"),
    *("é", "éa", "ée", "ë", "ÿ", "ā", "Ω", "ω", "\u07ff", "\u0800", "中", "中文"),
    *("\ue000", "\uffef", "\ufffe", "\uffff", "\uffffa", "\uffff\uffff"),
    *("a\uffff", "a\uffffb", "ab\uffff"),
    *("😀", "😀a", "😀😀", "😁", "\U0010ffff", "\U0010ffffz"),
]
assert len(set(LIST_KEYS)) == len(LIST_KEYS) == 60
NON_ASCII_KEYS = [k for k in LIST_KEYS if not k[:1].isascii()]  # all sort after "~\x7f"


def list_model(
    data: dict[str, Any],
    *,
    start: str | None = None,
    start_after: str | None = None,
    end: str | None = None,
    prefix: str | None = None,
    reverse: bool = False,
    limit: int | None = None,
) -> list[tuple[str, Any]]:
    """What list() must return, by brute force over the data, in UTF-8 byte order."""
    keys = sorted(data, key=utf8)
    keys = [
        k
        for k in keys
        if (start is None or utf8(k) >= utf8(start))
        and (start_after is None or utf8(k) > utf8(start_after))
        and (end is None or utf8(k) < utf8(end))
        and (prefix is None or utf8(k).startswith(utf8(prefix)))
    ]
    if reverse:
        keys.reverse()
    if limit is not None:
        keys = keys[:limit]
    return [(k, data[k]) for k in keys]


async def fill(stub: DurableObjectStub) -> dict[str, Any]:
    data = {k: [i, k] for i, k in enumerate(LIST_KEYS)}

    async def put(o: Any) -> None:
        items = list(data.items())
        await o.ctx.storage.put(dict(items[:30]))
        await o.ctx.storage.put(dict(items[30:]))

    await run_in(stub, put)
    return data


async def test_list_without_options_returns_everything_in_utf8_order(
    box: DurableObjectStub,
) -> None:
    data = await fill(box)
    listed = await run_in(box, lambda o: o.ctx.storage.list())
    assert list(listed.items()) == sorted(data.items(), key=lambda kv: utf8(kv[0]))
    assert list(listed)[:3] == ["", "\x00", "\x01"]
    assert list(listed)[-3:] == ["😁", "\U0010ffff", "\U0010ffffz"]


async def test_list_options_explicit_cases(box: DurableObjectStub) -> None:
    await fill(box)

    async def fn(o: Any) -> dict[str, list[str]]:
        st = o.ctx.storage

        async def keys(**options: Any) -> list[str]:
            return list(await st.list(**options))

        return {
            "start": await keys(start="zz"),
            "start_missing": await keys(start="😀b"),
            "end": await keys(end="\x01"),
            "start_end": await keys(start="ab", end="ac"),
            "start_after": await keys(start_after="abc", end="ac"),
            "prefix_full_key": await keys(prefix="abc"),
            "prefix_ffff": await keys(prefix="\uffff"),
            "prefix_a_ffff": await keys(prefix="a\uffff"),
            "prefix_multibyte": await keys(prefix="é"),
            "prefix_4byte": await keys(prefix="😀"),
            "prefix_max": await keys(prefix="\U0010ffff"),
            "prefix_none_match": await keys(prefix="q"),
            "reverse": await keys(reverse=True, limit=3),
            "reverse_start_end": await keys(start="ab", end="ac", reverse=True),
            "reverse_start_after": await keys(start_after="abc", end="ac", reverse=True),
            "limit": await keys(limit=2),
            "combo": await keys(prefix="a", start="ab", end="abd", limit=2, reverse=True),
            "empty_range": await keys(start="b", end="a"),
        }

    got = await run_in(box, fn)
    assert got == {
        "start": ["zz", "zzz", "~", "\x7f", *sorted(NON_ASCII_KEYS, key=utf8)],
        "start_missing": ["😀😀", "😁", "\U0010ffff", "\U0010ffffz"],
        "end": ["", "\x00"],
        "start_end": ["ab", "abc", "abcd", "abd", "ab\uffff"],
        "start_after": ["abcd", "abd", "ab\uffff"],
        "prefix_full_key": ["abc", "abcd"],
        "prefix_ffff": ["\uffff", "\uffffa", "\uffff\uffff"],
        "prefix_a_ffff": ["a\uffff", "a\uffffb"],
        "prefix_multibyte": ["é", "éa", "ée"],
        "prefix_4byte": ["😀", "😀a", "😀😀"],
        "prefix_max": ["\U0010ffff", "\U0010ffffz"],
        "prefix_none_match": [],
        "reverse": ["\U0010ffffz", "\U0010ffff", "😁"],
        "reverse_start_end": ["ab\uffff", "abd", "abcd", "abc", "ab"],
        "reverse_start_after": ["ab\uffff", "abd", "abcd"],
        "limit": ["", "\x00"],
        "combo": ["abcd", "abc"],
        "empty_range": [],
    }


LIST_STARTS: list[dict[str, str]] = [
    {},
    *({"start": s} for s in ("", "a", "ab", "abc", "é", "\uffff", "😀", "nope")),
    *({"start_after": s} for s in ("", "ab", "\uffff", "😀", "\U0010ffff")),
]
LIST_ENDS = [None, "", "abc", "b", "é", "\uffff", "\uffffa", "😀", "\U0010ffffz"]
LIST_PREFIXES = [None, "", "a", "ab", "abc", "a\uffff", "\uffff", "é", "😀", "中", "q"]
LIST_LIMITS = [None, 1, 2, 7, 1000]


async def test_list_matches_a_brute_force_model(box: DurableObjectStub) -> None:
    data = await fill(box)
    cases = [
        {**start, "end": end, "prefix": prefix, "reverse": reverse, "limit": limit}
        for start, end, prefix, reverse, limit in itertools.product(
            LIST_STARTS, LIST_ENDS, LIST_PREFIXES, (False, True), LIST_LIMITS
        )
    ]

    async def fn(o: Any) -> list[Any]:
        st = o.ctx.storage
        mismatches = []
        for options in cases:
            expected = list_model(data, **options)
            got = list((await st.list(**options)).items())
            got_sync = list(st.kv.list(**options))
            if got != expected or got_sync != expected:
                mismatches.append((options, expected, got, got_sync))
        return mismatches

    mismatches = await run_in(box, fn)
    assert len(cases) == 14 * 9 * 11 * 2 * 5
    assert mismatches[:3] == []


async def test_list_rejects_bad_options(box: DurableObjectStub) -> None:
    await fill(box)

    async def fn(o: Any) -> None:
        st = o.ctx.storage
        with pytest.raises(StorageError, match="start and start_after cannot be combined"):
            await st.list(start="a", start_after="b")
        for limit in (0, -1, True, False, 1.5, "3"):
            with pytest.raises(StorageError, match=r"limit must be a positive int, got "):
                await st.list(limit=limit)
        with pytest.raises(StorageError, match="start and start_after cannot be combined"):
            list(st.kv.list(start="a", start_after="b"))
        with pytest.raises(StorageError, match="limit must be a positive int"):
            list(st.kv.list(limit=0))

    await run_in(box, fn)


# -- limits ---------------------------------------------------------------------------------


async def test_128_keys_per_call_are_allowed(box: DurableObjectStub) -> None:
    keys = [f"k{i:03}" for i in range(128)]

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put({k: i for i, k in enumerate(keys)})
        got = await st.get(keys)
        deleted = await st.delete(keys)
        return len(got), list(got) == keys, deleted, await st.list()

    assert await run_in(box, fn) == (128, True, 128, {})


async def test_129_keys_are_refused_and_nothing_is_written(box: DurableObjectStub) -> None:
    keys = [f"k{i:03}" for i in range(129)]

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put({"k000": "kept", "k128": "kept"})
        with pytest.raises(StorageError, match="129 entries in one call; the limit is 128"):
            await st.put(dict.fromkeys(keys, "new"))
        with pytest.raises(StorageError, match="129 keys in one call; the limit is 128"):
            await st.get(keys)
        with pytest.raises(StorageError, match="129 keys in one call; the limit is 128"):
            await st.delete(keys)
        return await st.list()

    assert await run_in(box, fn) == {"k000": "kept", "k128": "kept"}
    assert await run_in(box, lambda o: o.ctx.storage.list()) == {"k000": "kept", "k128": "kept"}


async def test_key_size_limit_is_2048_utf8_bytes(box: DurableObjectStub) -> None:
    ok_ascii = "k" * 2048
    ok_multibyte = "é" * 1024  # 1024 chars, 2048 bytes
    too_long = "k" * 2049
    few_chars_many_bytes = "😀" * 513  # 513 chars, 2052 bytes

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put(ok_ascii, 1)
        await st.put(ok_multibyte, 2)
        for key, size in ((too_long, 2049), (few_chars_many_bytes, 2052)):
            message = f"a key is {size} bytes of UTF-8; the limit is 2048"
            with pytest.raises(StorageError, match=message):
                await st.put(key, 1)
            with pytest.raises(StorageError, match=message):
                await st.put({"fine": 1, key: 1})
            with pytest.raises(StorageError, match=message):
                await st.get(key)
            with pytest.raises(StorageError, match=message):
                await st.get(["fine", key])
            with pytest.raises(StorageError, match=message):
                await st.delete(key)
            with pytest.raises(StorageError, match=message):
                await st.list(start=key)
            with pytest.raises(StorageError, match=message):
                st.kv.put(key, 1)
        return await st.get([ok_ascii, ok_multibyte]), list(await st.list())

    got, keys = await run_in(box, fn)
    assert got == {ok_ascii: 1, ok_multibyte: 2}
    assert keys == [ok_ascii, ok_multibyte]


async def test_key_and_value_over_2_mib_are_refused_and_nothing_is_written(
    box: DurableObjectStub,
) -> None:
    big = b"x" * (2 * MIB)  # its encoding alone is over the limit

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("small", b"x" * (2 * MIB - 1000))  # under the limit: fine
        with pytest.raises(StorageError, match=r"key and value together may take 2097152"):
            await st.put("big", big)
        with pytest.raises(StorageError, match=r"key and value together may take 2097152"):
            await st.put({"a": 1, "big": big, "z": 2})
        with pytest.raises(StorageError, match=r"key and value together may take 2097152"):
            st.kv.put("big", big)
        return sorted(await st.list())

    assert await run_in(box, fn) == ["small"]
    assert await run_in(box, lambda o: o.ctx.storage.get(["a", "big", "z"])) == {}


async def test_key_and_value_of_exactly_2_mib_are_accepted(box: DurableObjectStub) -> None:
    value = b"x" * (2 * MIB - 1 - 5)  # bin32 header (5 bytes) + 1-byte key == 2 MiB

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        try:
            await st.put({"a": 1, "k": value})
        except StorageError:
            return "refused", sorted(await st.list())
        return "stored", [len(v) if k == "k" else v for k, v in (await st.list()).items()]

    assert await run_in(box, fn) == ("stored", [1, len(value)])


async def test_non_str_keys_raise_type_error_naming_the_type(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> None:
        st = o.ctx.storage
        cases: list[tuple[Any, str]] = [
            (lambda: st.get(1), "got int"),
            (lambda: st.get(b"k"), "got bytes"),
            (lambda: st.get({"k"}), "got set"),
            (lambda: st.get(["ok", 1.5]), "keys must be str, got float"),
            (lambda: st.put(1, "v"), "got int"),
            (lambda: st.put({"ok": 1, 2: "v"}), "keys must be str, got int"),
            (lambda: st.delete(None), "got NoneType"),
            (lambda: st.delete(["ok", b"k"]), "keys must be str, got bytes"),
            (lambda: st.list(start=1), "keys must be str, got int"),
            (lambda: st.list(prefix=b"k"), "keys must be str, got bytes"),
        ]
        for call, message in cases:
            with pytest.raises(TypeError, match=message):
                await call()
        with pytest.raises(TypeError, match=r"storage\.kv\.get\(\) takes a str .*, got int"):
            st.kv.get(1)
        with pytest.raises(TypeError, match=r"storage\.kv\.put\(\) takes a str key .*, got tuple"):
            st.kv.put(("a",), 1)
        assert await st.list() == {}

    await run_in(box, fn)


# -- values ---------------------------------------------------------------------------------

PLUS_5_30 = dt.timezone(dt.timedelta(hours=5, minutes=30))

VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": -42,
    "int64_max": 2**63 - 1,
    "uint64_max": 2**64 - 1,
    "big": 2**200 + 1,
    "negative_big": -(2**100) - 7,
    "float": 1.5,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "-0.0": -0.0,
    "str": "héllo wörld 😀",
    "empty_str": "",
    "lone_surrogate": "a\ud800b",
    "bytes": b"\x00\xff\x80",
    "empty_bytes": b"",
    "list": [1, "a", None, 2.5],
    "empty_list": [],
    "tuple": (1, (2, 3), [4], ()),
    "empty_tuple": (),
    "dict": {"a": 1, 2: "b", None: [], (1, 2): b"t", b"k": 1.0, dt.date(2020, 1, 2): "d"},
    "frozenset_key": {frozenset({1, 2}): "f"},
    "set": {1, "a", (2, 3), None},
    "empty_set": set(),
    "frozenset": frozenset({1, 2, frozenset({3})}),
    "datetime": dt.datetime(2026, 11, 27, 12, 34, 56, 789012),
    "datetime_aware": dt.datetime(2026, 11, 27, 12, 34, 56, 1, tzinfo=PLUS_5_30),
    "datetime_utc": dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    "datetime_fold": dt.datetime(2026, 10, 25, 2, 30, fold=1),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 59, 999999),
    "time_aware": dt.time(1, 2, 3, tzinfo=dt.timezone(-dt.timedelta(hours=3))),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "decimal": Decimal("1.10"),
    "nested": {
        "list_of_tuples": [(1, "a", {"x": {2, 3}}), ((), [()])],
        "tuple_of_dicts": ({1: (True, 1, 1.0)}, {"d": [dt.date(2000, 1, 1)]}),
        "deep": [[[[[[(b"deep", -0.0, math.nan)]]]]]],
    },
}


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """``a`` and ``b`` are equal with the same type at every level (nan == nan, -0.0 != 0.0)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), path
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert len(a) == len(b), path
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same(ka, kb, f"{path}<key {ka!r}>")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif isinstance(a, set | frozenset):
        assert a == b, path
        for x in a:
            y = next(y for y in b if y == x)
            assert_same(x, y, f"{path}<element {x!r}>")
    elif isinstance(a, dt.datetime | dt.time):
        assert a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold, path
        assert (a.tzinfo is None) == (b.tzinfo is None), path
    else:
        assert a == b, path


async def test_every_supported_type_round_trips_through_storage(
    driver: StorageDriver, runtime: Runtime
) -> None:
    stub = runtime.env.BOX.get_by_name("values")

    async def put(o: Any) -> Any:
        st = o.ctx.storage
        await st.put(VALUES)
        singles = {k: await st.get(k) for k in VALUES}  # read back in the same batch
        return singles, await st.get(list(VALUES)), await st.list()

    async def read(o: Any) -> Any:
        st = o.ctx.storage
        return {k: await st.get(k) for k in VALUES}, await st.get(list(VALUES))

    singles, many, listed = await run_in(stub, put)
    assert_same(singles, VALUES)
    assert_same(many, dict(sorted(VALUES.items(), key=lambda kv: utf8(kv[0]))))
    assert_same(listed, many)

    runtime.evict_all()
    assert runtime.live_hosts() == []
    singles, many = await run_in(stub, read)
    assert_same(singles, VALUES)
    await runtime.aclose()

    fresh = make_runtime(reopen(driver))
    try:
        singles, _ = await run_in(fresh.env.BOX.get_by_name("values"), read)
        assert_same(singles, VALUES)
    finally:
        await fresh.aclose()


async def test_unsupported_values_raise_codec_error_and_nothing_is_written(
    box: DurableObjectStub,
) -> None:
    def function() -> None:
        pass

    async def fn(o: Any) -> None:
        st = o.ctx.storage
        with pytest.raises(CodecError, match=r"cannot store a value of type 'Thing' \(at value\)"):
            await st.put("thing", Thing())
        with pytest.raises(CodecError, match=r"of type 'function' \(at value\)"):
            await st.put("function", function)
        with pytest.raises(CodecError, match=r"of type 'Thing' \(at value\[1\]\)"):
            await st.put({"a": 1, "b": [1, Thing()], "c": 3})
        with pytest.raises(CodecError, match=r"of type 'complex' \(at value\['x'\]\)"):
            await st.put({"a": 1, "b": {"x": 1j}})
        with pytest.raises(TypeError, match="of type 'Thing'"):  # CodecError is a TypeError
            st.kv.put("thing", Thing())
        assert await st.get(["thing", "function", "a", "b", "c"]) == {}

    await run_in(box, fn)
    assert await run_in(box, lambda o: o.ctx.storage.list()) == {}


# -- read-your-writes, persistence ----------------------------------------------------------


async def test_reads_see_the_writes_of_the_same_batch(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        seen = []
        await st.put("a", 1)
        seen.append(await st.get("a"))
        await st.put("a", 2)
        seen.append(await st.get("a"))
        await st.put({"b": 3, "c": 4})
        seen.append(await st.list())
        await st.delete("a")
        seen.append(await st.get("a"))
        seen.append(await st.list(prefix="b"))
        st.kv.put("d", 5)
        seen.append(await st.get("d"))
        seen.append(st.kv.get("b"))
        return seen

    assert await run_in(box, fn) == [1, 2, {"a": 2, "b": 3, "c": 4}, None, {"b": 3}, 5, 3]


async def test_data_survives_eviction_and_a_new_runtime(
    driver: StorageDriver, runtime: Runtime
) -> None:
    stub = runtime.env.BOX.get_by_name("durable")

    async def write(o: Any) -> None:
        await o.ctx.storage.put({"a": 1, "b": [2]})
        o.ctx.storage.sql.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)")

    def read(o: Any) -> Any:
        st = o.ctx.storage
        return st.kv.get("a"), st.kv.get("b"), st.sql.exec("SELECT x FROM t").to_array()

    await run_in(stub, write)
    runtime.evict_all()
    assert runtime.live_hosts() == []
    assert await run_in(stub, read) == (1, [2], [{"x": 1}, {"x": 2}])
    [host] = runtime.live_hosts()
    assert host.constructions == 1  # a new host: the old one was dropped
    host.evict()
    assert await run_in(stub, read) == (1, [2], [{"x": 1}, {"x": 2}])
    await runtime.aclose()

    fresh = make_runtime(reopen(driver))
    try:
        assert await run_in(fresh.env.BOX.get_by_name("durable"), read) == (
            1,
            [2],
            [{"x": 1}, {"x": 2}],
        )
        # Other objects do not see it.
        assert (
            await run_in(fresh.env.BOX.get_by_name("other"), lambda o: o.ctx.storage.list()) == {}
        )
    finally:
        await fresh.aclose()


# -- delete_all -----------------------------------------------------------------------------


async def test_delete_all_removes_keys_tables_and_views(
    driver: StorageDriver, runtime: Runtime
) -> None:
    stub = runtime.env.BOX.get_by_name("wipe")

    async def setup(o: Any) -> Any:
        st = o.ctx.storage
        await st.put({"a": 1, "b": 2})
        st.sql.exec(
            "CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT);"
            'CREATE TABLE "odd ""name""" (z);'
            "CREATE INDEX t_y ON t (y);"
            "CREATE VIEW v AS SELECT y FROM t;"
            'CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO "odd ""name""" VALUES (1); END;'
            "INSERT INTO t (y) VALUES ('one');"
        )
        return user_tables(o), sql_names(o, "view"), sql_names(o, "index")

    async def wipe(o: Any) -> Any:
        await o.ctx.storage.delete_all()
        return (
            await o.ctx.storage.list(),
            user_tables(o),
            sql_names(o, "view"),
            sql_names(o, "trigger"),
            sql_names(o, "index"),
        )

    async def still_works(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("again", 1)
        st.sql.exec("CREATE TABLE t (x)")
        return await st.list(), st.sql.exec("SELECT count(*) AS n FROM t").one()

    assert await run_in(stub, setup) == (['odd "name"', "t"], ["v"], ["t_y"])
    assert await run_in(stub, wipe) == ({}, [], [], [], [])
    assert await run_in(stub, still_works) == ({"again": 1}, {"n": 0})
    await runtime.aclose()
    fresh = make_runtime(reopen(driver))
    try:
        got = await run_in(fresh.env.BOX.get_by_name("wipe"), lambda o: o.ctx.storage.list())
        assert got == {"again": 1}
    finally:
        await fresh.aclose()


async def test_delete_all_is_one_batch_with_writes_after_it(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    async def setup(o: Any) -> None:
        await o.ctx.storage.put({"old1": 1, "old2": 2})

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.delete_all()
        await st.put("new", 3)
        return await st.list()

    await run_in(box, setup)
    assert await run_in(box, fn) == {"new": 3}
    runtime.evict_all()
    assert await run_in(box, lambda o: o.ctx.storage.list()) == {"new": 3}


async def test_a_failed_transaction_rolls_back_its_delete_all(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    async def setup(o: Any) -> None:
        await o.ctx.storage.put({"a": 1, "b": 2})
        o.ctx.storage.sql.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")

    async def fn(o: Any) -> Any:
        st = o.ctx.storage

        async def body(txn: Any) -> None:
            await st.delete_all()  # storage calls inside transaction() join it
            await txn.put("new", 1)
            assert await txn.list() == {"new": 1}
            raise RuntimeError("undo")

        with pytest.raises(RuntimeError, match="undo"):
            await st.transaction(body)
        return await st.list(), st.sql.exec("SELECT x FROM t").to_array()

    await run_in(box, setup)
    assert await run_in(box, fn) == ({"a": 1, "b": 2}, [{"x": 1}])
    runtime.evict_all()
    assert await run_in(box, lambda o: o.ctx.storage.list()) == {"a": 1, "b": 2}


async def test_txn_delete_all_joins_the_transaction(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("a", 1)

        async def body(txn: Any) -> None:
            await txn.delete_all()
            raise RuntimeError("undo")

        with pytest.raises(RuntimeError, match="undo"):
            await st.transaction(body)
        return await st.list()

    assert await run_in(box, fn) == {"a": 1}


async def test_a_table_cannot_be_renamed_into_the_reserved_prefix(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        sql = o.ctx.storage.sql
        sql.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        with contextlib.suppress(SqlError):  # refusing the rename is fine
            sql.exec("ALTER TABLE t RENAME TO _opendo_x")
        await o.ctx.storage.delete_all()
        names = sql_names(o, everything=True)
        return [name for name in names if name not in RUNTIME_TABLES]

    assert await run_in(box, fn) == []


# -- SQL: cursors ---------------------------------------------------------------------------


async def test_sql_cursor_rows_one_raw_and_column_names(box: DurableObjectStub) -> None:
    def fn(o: Any) -> None:
        sql = o.ctx.storage.sql
        created = sql.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
        assert (created.column_names, created.rows_read, created.rows_written) == ([], 0, 0)
        assert created.to_array() == []

        inserted = sql.exec("INSERT INTO t (name, score) VALUES ('a', 1.5), ('b', 2.5), ('c', 0)")
        assert (inserted.rows_written, inserted.rows_read, inserted.to_array()) == (3, 0, [])

        cursor = sql.exec("SELECT id, name, score FROM t ORDER BY id")
        assert cursor.column_names == ["id", "name", "score"]
        assert cursor.rows_written == 0
        # opendo counts rows_read as the number of rows the statement returned (Cloudflare
        # counts rows scanned); three rows come back here.
        assert cursor.rows_read == 3
        assert list(cursor) == [
            {"id": 1, "name": "a", "score": 1.5},
            {"id": 2, "name": "b", "score": 2.5},
            {"id": 3, "name": "c", "score": 0.0},
        ]
        assert list(cursor) == []  # a cursor is consumed once

        rows = sql.exec("SELECT name, id FROM t WHERE id > ? ORDER BY id", 1).to_array()
        assert rows == [{"name": "b", "id": 2}, {"name": "c", "id": 3}]
        assert list(rows[0]) == ["name", "id"]

        raw = list(sql.exec("SELECT score, name FROM t ORDER BY id").raw())
        assert raw == [(1.5, "a"), (2.5, "b"), (0.0, "c")]
        assert all(type(r) is tuple for r in raw)

        partly = sql.exec("SELECT id FROM t ORDER BY id")
        assert next(partly) == {"id": 1}
        assert list(partly.raw()) == [(2,), (3,)]

        counted = sql.exec("SELECT count(*) AS n FROM t")
        assert counted.rows_read == 1
        assert counted.one() == {"n": 3}

        with pytest.raises(SqlError, match="one\\(\\) expected exactly one row, got 0"):
            sql.exec("SELECT id FROM t WHERE id > 100").one()
        with pytest.raises(SqlError, match="one\\(\\) expected exactly one row, got 2"):
            sql.exec("SELECT id FROM t WHERE id > 1").one()

        updated = sql.exec("UPDATE t SET score = score + 1 WHERE id >= 2")
        assert (updated.rows_written, updated.rows_read) == (2, 0)
        assert sql.exec("UPDATE t SET score = 0 WHERE id > 100").rows_written == 0
        returning = sql.exec("DELETE FROM t WHERE id = 1 RETURNING name")
        assert returning.column_names == ["name"]
        assert (returning.rows_written, returning.rows_read) == (1, 1)
        assert returning.to_array() == [{"name": "a"}]
        assert sql.exec("DELETE FROM t").rows_written == 2
        assert sql.exec("SELECT * FROM t").rows_read == 0

    await run_in(box, fn)


async def test_sql_bindings(box: DurableObjectStub) -> None:
    def fn(o: Any) -> None:
        sql = o.ctx.storage.sql
        values = (None, 7, -(2**63), 2**63 - 1, 2.5, "text é😀", b"\x00\xff", True, False)
        row = list(sql.exec("SELECT " + ", ".join("?" * len(values)), *values).raw())[0]
        assert row == (None, 7, -(2**63), 2**63 - 1, 2.5, "text é😀", b"\x00\xff", 1, 0)
        assert [type(v) for v in row] == [type(None), int, int, int, float, str, bytes, int, int]
        named = sql.exec("SELECT ?2 AS b, ?1 AS a", "first", "second").one()
        assert named == {"b": "second", "a": "first"}

        for bad, name in (([1], "list"), ({"a": 1}, "dict"), (dt.datetime(2020, 1, 1), "datetime")):
            with pytest.raises(SqlError, match=f"cannot bind a {name}; bindings must be None"):
                sql.exec("SELECT ?", bad)
        with pytest.raises(SqlError, match="cannot bind a Thing"):
            sql.exec("SELECT ?", Thing())

        hundred = list(sql.exec("SELECT " + ", ".join("?" * 100), *range(100)).raw())
        assert hundred == [tuple(range(100))]
        with pytest.raises(SqlError, match="101 bindings; the limit is 100"):
            sql.exec("SELECT " + ", ".join("?" * 101), *range(101))
        with pytest.raises(SqlError, match="Incorrect number of bindings"):
            sql.exec("SELECT ?, ?", 1)

    await run_in(box, fn)


@pytest.mark.parametrize("value", [2**64, "a\ud800"], ids=["int_over_64_bits", "lone_surrogate"])
async def test_sql_bindings_sqlite_cannot_hold_raise_sql_error(
    box: DurableObjectStub, value: Any
) -> None:
    def fn(o: Any) -> None:
        with pytest.raises(SqlError):
            o.ctx.storage.sql.exec("SELECT ?", value)

    await run_in(box, fn)


async def test_sql_several_statements_in_one_exec(box: DurableObjectStub) -> None:
    def fn(o: Any) -> None:
        sql = o.ctx.storage.sql
        first = sql.exec(
            "CREATE TABLE m (a); INSERT INTO m VALUES (1); INSERT INTO m VALUES ('x;y');"
            "SELECT a FROM m WHERE a = ? OR a = ?",
            1,
            "x;y",
        )
        assert first.column_names == ["a"]
        assert first.to_array() == [{"a": 1}, {"a": "x;y"}]
        second = sql.exec(
            "INSERT INTO m VALUES ('it''s; fine'); SELECT count(*) AS n FROM m WHERE a != ?;",
            "nothing",
        )
        assert second.one() == {"n": 3}
        literal = sql.exec(
            'SELECT \'a;b\' AS s, "m;" AS q FROM (SELECT 1 AS "m;") /* ; */ WHERE 1 = ?', 1
        )
        assert literal.to_array() == [{"s": "a;b", "q": 1}]
        with pytest.raises(SqlError, match="Incorrect number of bindings"):
            sql.exec("SELECT ?; SELECT 1")  # bindings go to the last statement only

    await run_in(box, fn)


async def test_sql_a_trailing_comment_is_not_a_statement(box: DurableObjectStub) -> None:
    def fn(o: Any) -> Any:
        return o.ctx.storage.sql.exec("SELECT ? AS x; -- the end", 5).to_array()

    assert await run_in(box, fn) == [{"x": 5}]


async def test_sql_errors_leave_earlier_writes_of_the_batch_intact(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        sql = st.sql
        await st.put("k", "kept")
        sql.exec("CREATE TABLE u (a UNIQUE); INSERT INTO u VALUES (1), (2)")
        for query in ("", "   ", " ; ;\n"):
            with pytest.raises(SqlError, match="the query holds no statement"):
                sql.exec(query)
        with pytest.raises(SqlError, match='near "SELEC": syntax error'):
            sql.exec("SELEC 1")
        with pytest.raises(SqlError, match="no such table: nope"):
            sql.exec("SELECT * FROM nope")
        with pytest.raises(SqlError, match="UNIQUE constraint failed: u.a"):
            sql.exec("INSERT INTO u VALUES (3), (1)")  # the statement is undone as a whole
        with pytest.raises(TypeError, match="takes a query str, got bytes"):
            sql.exec(b"SELECT 1")
        rows = sql.exec("SELECT a FROM u ORDER BY a").to_array()
        return await st.get("k"), rows

    expected = ("kept", [{"a": 1}, {"a": 2}])
    assert await run_in(box, fn) == expected
    runtime.evict_all()

    async def read(o: Any) -> Any:
        return await o.ctx.storage.get("k"), o.ctx.storage.sql.exec("SELECT a FROM u").to_array()

    assert await run_in(box, read) == expected


@pytest.mark.parametrize(
    "statement",
    [
        "BEGIN",
        "BEGIN IMMEDIATE TRANSACTION",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT sp",
        "RELEASE sp",
        "ROLLBACK TO sp",
    ],
)
async def test_sql_transaction_control_is_refused(box: DurableObjectStub, statement: str) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("k", 1)
        st.sql.exec("CREATE TABLE IF NOT EXISTS t (x)")
        with pytest.raises(SqlError) as info:
            st.sql.exec(statement)
        st.sql.exec("INSERT INTO t VALUES (1)")
        return str(info.value), await st.get("k")

    message, value = await run_in(box, fn)
    assert "transaction" in message.lower()
    assert "are not allowed in sql.exec()" in message
    assert value == 1
    count = await run_in(box, lambda o: o.ctx.storage.sql.exec("SELECT count(*) AS n FROM t").one())
    assert count == {"n": 1}


async def test_sql_attach_and_pragmas_are_refused(box: DurableObjectStub) -> None:
    def fn(o: Any) -> None:
        sql = o.ctx.storage.sql
        with pytest.raises(SqlError, match="ATTACH and DETACH are not allowed"):
            sql.exec("ATTACH DATABASE ':memory:' AS other")
        with pytest.raises(SqlError, match="ATTACH and DETACH are not allowed"):
            sql.exec("DETACH DATABASE other")
        for pragma, name in (
            ("PRAGMA journal_mode", "journal_mode"),
            ("PRAGMA journal_mode = DELETE", "journal_mode"),
            ("PRAGMA synchronous", "synchronous"),
            ("PRAGMA synchronous = OFF", "synchronous"),
            ("PRAGMA writable_schema = ON", "writable_schema"),
            ("PRAGMA main.locking_mode = EXCLUSIVE", "locking_mode"),
        ):
            with pytest.raises(SqlError, match=f"PRAGMA {name} is not allowed in sql.exec"):
                sql.exec(pragma)

    await run_in(box, fn)


async def test_sql_pragma_table_info_works(box: DurableObjectStub) -> None:
    def fn(o: Any) -> Any:
        sql = o.ctx.storage.sql
        sql.exec("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL)")
        return [(r["name"], r["type"], r["notnull"]) for r in sql.exec("PRAGMA table_info(t)")]

    assert await run_in(box, fn) == [("a", "INTEGER", 0), ("b", "TEXT", 1)]


async def test_sql_fts5_virtual_tables_work(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        sql = o.ctx.storage.sql
        sql.exec("CREATE VIRTUAL TABLE docs USING fts5(body)")
        sql.exec("INSERT INTO docs VALUES ('hello world'), ('goodbye')")
        found = sql.exec("SELECT body FROM docs WHERE docs MATCH 'hello'").to_array()
        await o.ctx.storage.delete_all()
        return found, user_tables(o)

    assert await run_in(box, fn) == ([{"body": "hello world"}], [])


RESERVED_QUERIES = [
    "SELECT * FROM _opendo_kv",
    "SELECT * FROM _opendo_meta",
    "SELECT * FROM _OPENDO_KV",
    'SELECT * FROM "_Opendo_Kv"',
    "SELECT * FROM main._opendo_kv",
    "SELECT (SELECT count(*) FROM _opendo_kv) AS n",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM _opendo_meta)",
    "WITH c AS (SELECT key FROM _opendo_kv) SELECT * FROM c",
    "INSERT INTO _opendo_kv (key, value) VALUES (x'01', x'c0')",
    "UPDATE _opendo_kv SET value = x'c0'",
    "DELETE FROM _opendo_kv",
    "DROP TABLE _opendo_kv",
    "ALTER TABLE _opendo_kv RENAME TO mine",
    "ALTER TABLE _opendo_kv ADD COLUMN extra",
    "CREATE INDEX i ON _opendo_kv (value)",
    "CREATE TABLE _opendo_new (x)",
    "CREATE TABLE _OPENDO_NEW (x)",
    "CREATE TRIGGER tr AFTER INSERT ON _opendo_kv BEGIN SELECT 1; END",
    "CREATE TABLE copy AS SELECT * FROM _opendo_kv",
    # The texts the runtime itself runs, typed verbatim (they must not reuse its authorization).
    "SELECT value FROM _opendo_kv WHERE key = ?",
    "SELECT key, value FROM _opendo_kv ORDER BY key",
]


async def test_sql_cannot_touch_the_runtimes_tables(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("k", "secret")
        await st.get("k")
        await st.list()
        refused = []
        for query in RESERVED_QUERIES:
            args = (b"k",) if "?" in query else ()
            try:
                st.sql.exec(query, *args)
            except SqlError as exc:
                refused.append(str(exc))
            else:
                refused.append(f"ALLOWED: {query}")
        return refused, await st.list()

    refused, kv = await run_in(box, fn)
    assert [m for m in refused if "is reserved for the runtime" not in m] == []
    assert kv == {"k": "secret"}
    assert await run_in(box, user_tables) == []


async def test_sql_cannot_reach_the_runtimes_tables_through_views_or_triggers(
    box: DurableObjectStub,
) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        sql = st.sql
        await st.put("k", "secret")
        sql.exec("CREATE TABLE t (x)")
        with contextlib.suppress(SqlError):  # refusing to create them at all is fine too
            sql.exec("CREATE VIEW v AS SELECT * FROM _opendo_kv")
        with contextlib.suppress(SqlError):
            sql.exec(
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN "
                "DELETE FROM _opendo_kv; INSERT INTO _opendo_meta VALUES ('evil', 1); END"
            )
        with pytest.raises(SqlError):
            sql.exec("SELECT * FROM v")
        with pytest.raises(SqlError):
            sql.exec("SELECT count(*) FROM (SELECT * FROM v)")
        with pytest.raises(SqlError):
            sql.exec("INSERT INTO t VALUES (1)")
        return await st.list(), sql.exec("SELECT count(*) AS n FROM t").one()

    assert await run_in(box, fn) == ({"k": "secret"}, {"n": 0})


async def test_sql_database_size(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        sql = o.ctx.storage.sql
        before = sql.database_size
        sql.exec("CREATE TABLE blobs (b BLOB)")
        for i in range(16):
            sql.exec("INSERT INTO blobs VALUES (?)", bytes([i]) * 65536)
        return before, sql.database_size

    before, after = await run_in(box, fn)
    assert before > 0 and before % 512 == 0  # whole pages (SQLite's smallest is 512 bytes)
    assert after % 512 == 0
    assert after - before >= 16 * 65536


async def test_kv_and_sql_share_one_transaction(runtime: Runtime, box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        st.sql.exec("CREATE TABLE t (x)")
        await st.put("before", 1)

        def body() -> None:
            st.kv.put("inside", 1)
            st.sql.exec("INSERT INTO t VALUES (1)")
            st.sql.exec("CREATE TABLE inner_table (y)")
            raise ValueError("undo both")

        with pytest.raises(ValueError, match="undo both"):
            st.transaction_sync(body)
        return await st.list(), st.sql.exec("SELECT count(*) AS n FROM t").one(), user_tables(o)

    expected = ({"before": 1}, {"n": 0}, ["t"])
    assert await run_in(box, fn) == expected
    runtime.evict_all()

    async def read(o: Any) -> Any:
        st = o.ctx.storage
        return await st.list(), st.sql.exec("SELECT count(*) AS n FROM t").one(), user_tables(o)

    assert await run_in(box, read) == expected


# -- transactions ---------------------------------------------------------------------------


async def test_transaction_sync_returns_and_rolls_back(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        st.sql.exec("CREATE TABLE t (x)")

        def ok() -> str:
            st.kv.put("a", 1)
            st.sql.exec("INSERT INTO t VALUES (1)")
            return "result"

        assert st.transaction_sync(ok) == "result"
        error = KeyError("mine")

        def fails() -> None:
            st.kv.put("b", 2)
            st.kv.delete("a")
            st.sql.exec("INSERT INTO t VALUES (2)")
            raise error

        with pytest.raises(KeyError) as info:
            st.transaction_sync(fails)
        assert info.value is error  # the very exception propagates
        return await st.list(), st.sql.exec("SELECT x FROM t").to_array()

    assert await run_in(box, fn) == ({"a": 1}, [{"x": 1}])


async def test_nested_transaction_sync_rolls_back_only_the_inner_part(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage

        def inner() -> None:
            st.kv.put("inner", 1)
            st.kv.delete("outer1")
            raise ValueError("inner fails")

        def outer() -> str:
            st.kv.put("outer1", 1)
            with pytest.raises(ValueError, match="inner fails"):
                st.transaction_sync(inner)
            st.kv.put("outer2", 2)
            assert st.transaction_sync(lambda: st.kv.put("inner_ok", 3)) is None
            return "outer done"

        assert st.transaction_sync(outer) == "outer done"
        return await st.list()

    expected = {"inner_ok": 3, "outer1": 1, "outer2": 2}
    assert await run_in(box, fn) == expected
    runtime.evict_all()
    assert await run_in(box, lambda o: o.ctx.storage.list()) == expected


async def test_transaction_sync_refuses_an_async_function(box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage

        async def body() -> None:
            st.kv.put("never", 1)

        with pytest.raises(TypeError, match=r"transaction_sync\(\) takes a plain function"):
            st.transaction_sync(body)
        return await st.list()

    assert await run_in(box, fn) == {}


async def test_transaction_commits_or_rolls_back(runtime: Runtime, box: DurableObjectStub) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put({"a": 1, "b": 2, "c": 3})

        async def ok(txn: Any) -> Any:
            seen = [await txn.get("a"), await txn.get(["a", "b", "zz"])]
            await txn.put("d", 4)
            await txn.put({"e": 5, "f": 6})
            seen.append(await txn.delete("a"))
            seen.append(await txn.delete("a"))
            seen.append(await txn.delete(["b", "zz"]))
            await asyncio.sleep(0)  # a transaction may await
            seen.append(await txn.list())
            seen.append(await txn.list(start="d", end="f", reverse=True, limit=1))
            seen.append(await txn.list(prefix="f"))
            return seen

        result = await st.transaction(ok)
        assert result == [
            1,
            {"a": 1, "b": 2},
            True,
            False,
            1,
            {"c": 3, "d": 4, "e": 5, "f": 6},
            {"e": 5},
            {"f": 6},
        ]

        async def fails(txn: Any) -> None:
            await txn.put("g", 7)
            await txn.delete("c")
            st.sql.exec("CREATE TABLE t (x)")
            await asyncio.sleep(0)
            raise LookupError("abandon")

        with pytest.raises(LookupError, match="abandon"):
            await st.transaction(fails)
        return await st.list(), user_tables(o)

    expected = ({"c": 3, "d": 4, "e": 5, "f": 6}, [])
    assert await run_in(box, fn) == expected
    runtime.evict_all()
    assert await run_in(box, lambda o: o.ctx.storage.list()) == expected[0]


async def test_txn_rollback_discards_writes_and_ends_the_txn(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        await st.put("keep", 1)
        kept_txn: list[Any] = []

        async def body(txn: Any) -> str:
            kept_txn.append(txn)
            await txn.put("gone", 1)
            await txn.delete("keep")
            txn.rollback()
            for call, name in (
                (lambda: txn.get("keep"), "get"),
                (lambda: txn.put("x", 1), "put"),
                (lambda: txn.delete("keep"), "delete"),
                (lambda: txn.list(), "list"),
            ):
                with pytest.raises(StorageError, match=rf"txn\.{name}\(\) was called after txn"):
                    await call()
            with pytest.raises(StorageError, match=r"txn\.rollback\(\) was called after"):
                txn.rollback()
            return "rolled back"

        assert await st.transaction(body) == "rolled back"
        with pytest.raises(StorageError, match=r"txn\.get\(\) was called after its transaction"):
            await kept_txn[0].get("keep")
        return await st.list()

    assert await run_in(box, fn) == {"keep": 1}
    runtime.evict_all()
    assert await run_in(box, lambda o: o.ctx.storage.list()) == {"keep": 1}


async def test_transaction_holds_other_calls_until_it_ends(runtime: Runtime) -> None:
    log: list[str] = []
    release = asyncio.Event()
    started = asyncio.Event()

    async def long(o: Any) -> str:
        async def body(txn: Any) -> str:
            log.append("txn start")
            await txn.put("k", "from txn")
            started.set()
            await release.wait()
            log.append("txn end")
            return "txn done"

        return await o.ctx.storage.transaction(body)

    async def other(o: Any) -> Any:
        log.append("other")
        return await o.ctx.storage.get("k")

    first = asyncio.ensure_future(run_in(runtime.env.BOX.get_by_name("held"), long))
    await started.wait()
    second = asyncio.ensure_future(run_in(runtime.env.BOX.get_by_name("held"), other))
    for _ in range(50):
        await asyncio.sleep(0)
    assert log == ["txn start"]
    assert not second.done()
    release.set()
    assert await first == "txn done"
    assert await second == "from txn"
    assert log == ["txn start", "txn end", "other"]


async def test_transaction_is_isolated_from_calls_already_in_flight(runtime: Runtime) -> None:
    resume_a, resume_b, a_waiting = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def call_a(o: Any) -> Any:
        a_waiting.set()
        await resume_a.wait()  # not a storage await: the input gate is open here
        seen = await o.ctx.storage.get("b")
        await o.ctx.storage.put("a", "from a")
        return seen

    async def call_b(o: Any) -> None:
        async def body(txn: Any) -> None:
            await txn.put("b", "uncommitted")
            resume_a.set()
            await resume_b.wait()
            raise RuntimeError("b rolls back")

        await o.ctx.storage.transaction(body)

    stub = runtime.env.BOX.get_by_name("isolation")
    a = asyncio.ensure_future(run_in(stub, call_a))
    await a_waiting.wait()
    b = asyncio.ensure_future(run_in(stub, call_b))
    for _ in range(50):
        await asyncio.sleep(0)
    resume_b.set()
    with pytest.raises(RuntimeError, match="b rolls back"):
        await b
    try:
        seen = await a
    except StorageError:
        acknowledged = False
    else:
        acknowledged = True
        assert seen is None  # no dirty read of b's uncommitted write
    final = await run_in(stub, lambda o: o.ctx.storage.list())
    assert final == ({"a": "from a"} if acknowledged else {})


# -- sync() ---------------------------------------------------------------------------------


async def test_sync_returns_once_writes_are_durable(
    driver: StorageDriver, runtime: Runtime
) -> None:
    stub = runtime.env.BOX.get_by_name("sync")

    async def fn(o: Any) -> Any:
        st = o.ctx.storage
        assert await st.sync() is None  # nothing pending
        await st.put("key", {"durable": True})
        st.sql.exec("CREATE TABLE t (x); INSERT INTO t VALUES (42)")
        assert await st.sync() is None
        if not isinstance(driver, SqliteDriver):
            return None
        # A separate reader of the files (database + WAL) sees the write.
        path = driver.path_of("Box", o.ctx.id)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            raw = reader.execute("SELECT value FROM _opendo_kv WHERE key = ?", (b"key",)).fetchone()
            table = reader.execute("SELECT x FROM t").fetchall()
        finally:
            reader.close()
        return decode(raw[0]), table

    result = await run_in(stub, fn)
    if isinstance(driver, SqliteDriver):
        assert result == ({"durable": True}, [(42,)])
    assert await run_in(stub, lambda o: o.ctx.storage.get("key")) == {"durable": True}


# -- guards ---------------------------------------------------------------------------------


async def test_the_storage_of_an_aborted_instance_refuses_every_call(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    async def first(o: Any) -> None:
        o.kept = o.ctx.storage
        await o.kept.put("committed", 1)

    old: list[Any] = []

    async def abort(o: Any) -> None:
        old.append(o)
        await o.kept.put("dropped", 1)  # same batch as the abort: never committed
        o.ctx.abort("test")

    await run_in(box, first)
    with contextlib.suppress(DurableObjectError):
        await run_in(box, abort)
    stale = old[0].kept

    async def later(o: Any) -> Any:
        assert o is not old[0]  # a new instance
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("get", lambda: stale.get("committed")),
            ("put", lambda: stale.put("x", 1)),
            ("delete", lambda: stale.delete("committed")),
            ("list", lambda: stale.list()),
            ("delete_all", lambda: stale.delete_all()),
            ("sync", lambda: stale.sync()),
            ("transaction", lambda: stale.transaction(lambda txn: txn.get("x"))),
            ("transaction_sync", lambda: stale.transaction_sync(lambda: None)),
            ("kv.get", lambda: stale.kv.get("committed")),
            ("kv.put", lambda: stale.kv.put("x", 1)),
            ("kv.delete", lambda: stale.kv.delete("committed")),
            ("kv.list", lambda: list(stale.kv.list())),
            ("sql.exec", lambda: stale.sql.exec("SELECT 1")),
            ("sql.database_size", lambda: stale.sql.database_size),
        ]
        for name, call in calls:
            with pytest.raises(StorageError, match=rf"^storage\.{name}\(\) was called on the "):
                result = call()
                if inspect.isawaitable(result):
                    await result
        with pytest.raises(StorageError, match="reset or evicted"):
            await stale.get("committed")
        st = o.ctx.storage
        assert st is not stale
        return await st.list()

    assert await run_in(box, later) == {"committed": 1}
    assert runtime.live_hosts()[0].constructions == 2


async def test_the_storage_of_an_evicted_instance_refuses_calls(runtime: Runtime) -> None:
    stub = runtime.env.BOX.get_by_name("evicted")
    kept: list[Any] = []

    async def first(o: Any) -> None:
        kept.append(o.ctx.storage)
        await o.ctx.storage.put("a", 1)

    await run_in(stub, first)
    runtime.evict_all()

    async def later(o: Any) -> Any:
        with pytest.raises(StorageError, match=r"^storage\.get\(\) was called on the storage"):
            await kept[0].get("a")
        with pytest.raises(StorageError, match=r"^storage\.put\(\) was called on the storage"):
            await kept[0].put("b", 1)
        return await o.ctx.storage.list()

    assert await run_in(stub, later) == {"a": 1}


async def test_a_reset_instance_cannot_write_through_its_ctx(
    runtime: Runtime, box: DurableObjectStub
) -> None:
    old: list[Any] = []

    async def abort(o: Any) -> None:
        old.append(o)
        await o.ctx.storage.put("committed", 1)
        await asyncio.sleep(0.01)  # let the batch commit
        o.ctx.abort("test")

    with contextlib.suppress(DurableObjectError):
        await run_in(box, abort)

    async def later(o: Any) -> Any:
        with pytest.raises(StorageError):
            await old[0].ctx.storage.put("zombie", 1)
        return await o.ctx.storage.list()

    assert await run_in(box, later) == {"committed": 1}


async def test_a_call_whose_writes_abort_dropped_does_not_succeed(box: DurableObjectStub) -> None:
    async def abort(o: Any) -> str:
        await o.ctx.storage.put("dropped", 1)
        o.ctx.abort("test")
        return "ok"

    with pytest.raises(DurableObjectError):
        await run_in(box, abort)
    assert await run_in(box, lambda o: o.ctx.storage.get("dropped")) is None


# -- storage.kv -----------------------------------------------------------------------------


async def test_sync_kv_api(runtime: Runtime, box: DurableObjectStub) -> None:
    def fn(o: Any) -> Any:
        kv = o.ctx.storage.kv
        assert kv.get("missing") is None
        assert kv.put("b", [2]) is None
        kv.put("a", 1)
        kv.put("ab", (3,))
        kv.put("é", {"x": None})
        kv.put("a", "one")  # overwrite
        assert kv.get("a") == "one"
        results = [kv.delete("b"), kv.delete("b"), kv.delete("never")]
        listing = kv.list()
        assert not isinstance(listing, dict | list)  # an iterable of pairs
        return (
            results,
            list(listing),
            list(kv.list(prefix="a")),
            list(kv.list(start="ab", reverse=True)),
            list(kv.list(start_after="a", end="é", limit=1)),
        )

    assert await run_in(box, fn) == (
        [True, False, False],
        [("a", "one"), ("ab", (3,)), ("é", {"x": None})],
        [("a", "one"), ("ab", (3,))],
        [("é", {"x": None}), ("ab", (3,))],
        [("ab", (3,))],
    )
    runtime.evict_all()
    assert await run_in(box, lambda o: dict(o.ctx.storage.kv.list())) == {
        "a": "one",
        "ab": (3,),
        "é": {"x": None},
    }


# -- concurrency ----------------------------------------------------------------------------


async def test_100_concurrent_read_modify_writes_lose_nothing(runtime: Runtime) -> None:
    stubs = [runtime.env.COUNTER.get_by_name("counter") for _ in range(100)]
    results = await asyncio.gather(*(s.increment() for s in stubs))
    assert sorted(results) == list(range(1, 101))
    stub = runtime.env.BOX.get_by_name("unrelated")
    assert await run_in(stub, lambda o: o.ctx.storage.get("n")) is None  # per-object storage
    runtime.evict_all()
    assert await runtime.env.COUNTER.get_by_name("counter").increment() == 101
