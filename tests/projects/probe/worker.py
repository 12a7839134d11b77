"""The probe project of tests/test_workers.py: which process serves what.

GET /pid answers the pid of the process that ran the Worker. Everything else reaches a Box by
name, which answers with the pid of the process it lives in, so a test sees where each object
is and, with two servers on one persist directory, places objects deterministically (the
first event for an object claims it in the process that sends it). /exercise/A/B has Box A
call Box B by RPC with every kind of argument and reports what each side saw.
"""

import asyncio
import datetime
import os
from pathlib import Path
from urllib.parse import parse_qs

from opendo import DurableObject, Request, Response, WorkerEntrypoint

# Every kind of value an RPC call carries (core.codec), nested in each other too.
VALUES = [
    "text, with é and 😀",
    b"\x00\x01\xffbytes",
    -12345678901234567890,
    2.5,
    True,
    None,
    [1, [2, [3, "four"]]],
    (1, (2, (3, "four"))),
    {"nested": [1, (2, 3), {"deep": (b"x", "y", [None])}], 7: "int key", (1, 2): "tuple key"},
    datetime.datetime(2026, 12, 1, 12, 30, 15, 250_000, tzinfo=datetime.UTC),
    datetime.datetime(2026, 12, 1, 12, 30, 15),
    datetime.date(2026, 12, 1),
    datetime.timedelta(days=2, seconds=3),
    {1, 2, 3},
    frozenset({"a", "b"}),
]


class ProbeError(Exception):
    """An error type of the user's own: it cannot be rebuilt in another process."""


class Box(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        if (ctx.id.name or "").startswith("broken"):
            raise RuntimeError("this box cannot start, on purpose")

    async def pid(self) -> int:
        return os.getpid()

    async def echo(self, value):
        """What this side saw (its pid, the value's shape) and the value back."""
        return [os.getpid(), shape(value), value]

    async def call_stub(self, stub):
        """Use a stub another process sent: call the object it names."""
        return [os.getpid(), stub.name, await stub.pid()]

    async def check_id(self, id):
        return [os.getpid(), str(id), id.name, id == self.env.BOX.id_from_name(id.name)]

    async def fail(self, kind: str):
        if kind == "value":
            raise ValueError("the value was wrong, on purpose")
        if kind == "key":
            raise KeyError("missing-key")
        if kind == "own":
            raise ProbeError("a user's own error type")
        if kind == "codec":
            await self.ctx.storage.put("k", object())  # an unstorable value: CodecError
        raise AssertionError(f"no such failure {kind!r}")

    async def give_function(self):
        return lambda: 1

    async def exercise(self, other: str) -> dict:
        """Call Box ``other`` with every value, a stub, an id, failures and a function."""
        stub = self.env.BOX.get_by_name(other)
        report: dict = {"caller": os.getpid(), "values": [], "errors": {}}
        for value in VALUES:
            callee, seen, back = await stub.echo(value)
            report["values"].append(
                {"sent": shape(value), "seen": seen, "back": shape(back), "callee": callee}
            )
        third = self.env.BOX.get_by_name(other + "-third")
        report["third"] = await third.pid()
        report["stub"] = await stub.call_stub(third)
        report["self_stub"] = await stub.call_stub(self.env.BOX.get(self.ctx.id))
        report["id"] = await stub.check_id(self.ctx.id)
        report["id_expected"] = [str(self.ctx.id), self.ctx.id.name]
        for kind in ("value", "key", "own", "codec"):
            report["errors"][kind] = await failure(stub.fail(kind))
        report["errors"]["function_argument"] = await failure(stub.echo(lambda: 1))
        report["errors"]["function_result"] = await failure(stub.give_function())
        return report

    async def set_alarm_in(self, ms: int) -> int:
        now = datetime.datetime.now(datetime.UTC)
        await self.ctx.storage.set_alarm(now + datetime.timedelta(milliseconds=ms))
        return os.getpid()

    async def alarm(self, info=None) -> None:
        fired = await self.ctx.storage.get("fired") or []
        await self.ctx.storage.put("fired", [*fired, os.getpid()])

    async def fired(self) -> list:
        storage = self.ctx.storage
        return [os.getpid(), await storage.get("fired") or [], await storage.get_alarm()]


def shape(value) -> str:
    """``repr(value)``, with sets in a fixed order (their own order follows the hash seed of
    the process): a value and its copy have the same shape when they are equal and of the same
    types at every level."""
    if isinstance(value, set | frozenset):
        return f"{type(value).__name__}({sorted(map(shape, value))})"
    if isinstance(value, list | tuple):
        inner = ", ".join(map(shape, value))
        return f"[{inner}]" if isinstance(value, list) else f"({inner},)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{shape(k)}: {shape(v)}" for k, v in value.items()) + "}"
    return repr(value)


async def failure(call) -> dict:
    try:
        await call
    except BaseException as exc:  # what reached the caller: its type, message and origin
        return {
            "type": type(exc).__name__,
            "module": type(exc).__module__,
            "message": str(exc),
            "args": [repr(a) for a in exc.args],
            "remote": bool(getattr(exc, "remote", False)),
            "mro": [cls.__name__ for cls in type(exc).__mro__],
        }
    return {"type": None}


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        if parts == ["pid"]:
            return Response(str(os.getpid()))
        if parts == ["hold"]:
            # A request in flight: marked on disk once it runs, answered a moment later.
            mark = Path(self.env.MARKS) / f"{os.getpid()}-{request.headers.get('x-n')}"
            mark.write_text("")
            await asyncio.sleep(float(self.env.HOLD_SECONDS))
            return Response(str(os.getpid()))
        box = self.env.BOX.get_by_name(parts[-1])
        if parts[0] == "own":
            return Response.json({"worker": os.getpid(), "object": await box.pid()})
        if parts[0] == "exercise":
            return Response.json(await self.env.BOX.get_by_name(parts[1]).exercise(parts[2]))
        if parts[0] == "alarm":
            ms = int(parse_qs(request.query).get("ms", ["100"])[0])
            return Response.json(await box.set_alarm_in(ms))
        if parts[0] == "fired":
            pid, fired, pending = await box.fired()
            return Response.json({"object": pid, "fired": fired, "pending": pending})
        return Response("not found", status=404)
