"""Open storage is a budget, not a wall: past ``open_objects`` (by default from the process's
file descriptor limit, ``runtime.open_budget``), the longest-idle objects are evicted at once
instead of at the end of their idle timeout, so their database handles and descriptors come
back; an evicted object opens its database again on its next event. A busy object keeps its
storage.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import OPENDO, ROOT

from opendo import DurableObject, Runtime, SqliteDriver
from opendo.runtime.runtime import FILES_PER_OBJECT, open_budget

COUNTER = ROOT / "examples" / "counter"
RELEASE: list[asyncio.Event] = []  # what Counter.hold waits for


class Counter(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.built = 1

    async def increment(self) -> int:
        value = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", value)
        return value

    async def hold(self) -> int:
        await RELEASE[0].wait()
        return await self.increment()


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_past_the_budget_the_longest_idle_objects_give_their_storage_back(
    tmp_path: Path,
) -> None:
    driver = SqliteDriver(tmp_path)
    runtime = Runtime(bindings={"C": Counter}, storage=driver, open_objects=10)
    try:
        ns = runtime.env.C
        assert await ns.get_by_name("c0").increment() == 1
        before = open_files()
        for i in range(1, 200):
            assert await ns.get_by_name(f"c{i}").increment() == 1
            assert runtime.statistics()["open_storage"] <= 10
        await driver.aclose()  # the evicted ones' databases are closed off the loop: done now
        assert open_files() - before <= 10 * FILES_PER_OBJECT
        evicted = runtime.live_host((Counter.__name__, ns.id_from_name("c0")))
        assert evicted is None  # the first was the longest idle: gone, with its handle
        for i in range(200):  # each opens its database again, with what it stored
            assert await ns.get_by_name(f"c{i}").increment() == 2
    finally:
        await runtime.aclose()


async def test_a_busy_object_keeps_its_storage_under_pressure(tmp_path: Path) -> None:
    runtime = Runtime(bindings={"C": Counter}, storage=SqliteDriver(tmp_path), open_objects=3)
    try:
        ns = runtime.env.C
        release = asyncio.Event()
        RELEASE[:] = [release]
        busy = asyncio.ensure_future(ns.get_by_name("busy").hold())
        key = (Counter.__name__, ns.id_from_name("busy"))
        for _ in range(100):  # until it runs
            if (host := runtime.live_host(key)) is not None and host.instance is not None:
                break
            await asyncio.sleep(0.01)
        for i in range(50):
            assert await ns.get_by_name(f"c{i}").increment() == 1
        host = runtime.live_host(key)
        assert host is not None and host.constructions == 1 and host.open_storage is not None
        release.set()
        assert await busy == 1
        assert host.constructions == 1
    finally:
        await runtime.aclose()


def test_the_default_budget_is_half_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert open_budget() == max(16, soft // 2 // FILES_PER_OBJECT)


def test_runtime_refuses_an_empty_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="open_objects must be at least 1"):
        Runtime(bindings={"C": Counter}, storage=SqliteDriver(tmp_path), open_objects=0)


@pytest.mark.slow
def test_a_server_under_a_low_descriptor_limit_serves_many_more_objects(tmp_path: Path) -> None:
    """``opendo serve`` with RLIMIT_NOFILE at 256 (a budget of 25 objects): 1,500 distinct
    counters, one request each, then the first 50 again — every answer right, no 500
    (before, it ran out of descriptors at the 60th object)."""
    command = ["prlimit", "--nofile=256:256", OPENDO, "serve", str(COUNTER), "--port", "0"]
    command += ["--persist-to", str(tmp_path / "state")]
    log = (tmp_path / "stderr.log").open("w")  # its access log: a line per request
    with log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True) as server:
        try:
            assert server.stdout is not None
            port = 0
            for _ in range(50):
                line = server.stdout.readline()
                if line.startswith("Ready on"):
                    port = int(line.rsplit(":", 1)[1])
                    break
            assert port, "the server did not start"
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for i in range(1500):
                    response = client.get(f"/counter/c{i}")
                    assert (response.status_code, response.text) == (200, "1"), (i, response.text)
                for i in range(50):
                    assert client.get(f"/counter/c{i}").text == "2"
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
