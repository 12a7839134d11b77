"""Requests batched by an alarm, written as a Cloudflare Python Worker.

The first request of a batch sets an alarm ten seconds out; every request until then joins
the batch; the alarm delivers the batch (here: into an outbox table of the object's SQL
storage, where a real Worker would POST it upstream) and the next request starts a new one.

POST /batch     queues the request's body: {"queued": n}
GET  /status    {"queued": n, "alarm": epoch milliseconds, or null}
GET  /batches   the batches delivered so far, oldest first
POST /flush     delivers the batch now and cancels the alarm
"""

import json
from urllib.parse import urlparse

from js import Date
from workers import DurableObject, Response, WorkerEntrypoint

BATCH_WINDOW_MS = 10_000
MAX_KEYS = 128  # keys in one storage call


class Batcher(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.storage = ctx.storage

        @self.ctx.blockConcurrencyWhile
        async def initialize():
            self.storage.sql.exec(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, "
                "entries TEXT NOT NULL, delivered_at INTEGER NOT NULL, attempt INTEGER NOT NULL)"
            )
            last = await self.storage.list(prefix="item:", reverse=True, limit=1)
            self.count = int(next(iter(last)).removeprefix("item:")) if last else 0

    async def fetch(self, request):
        path = urlparse(request.url).path
        if request.method == "POST" and path == "/batch":
            self.count += 1
            key = f"item:{self.count:08d}"
            # If there is no alarm set, set one: this request starts a batch.
            if await self.storage.getAlarm() is None:
                self.storage.setAlarm(Date.now() + BATCH_WINDOW_MS)
            await self.storage.put(key, await request.text())
            return Response.json({"queued": self.count})
        if request.method == "GET" and path == "/status":
            return Response.json({"queued": self.count, "alarm": await self.storage.getAlarm()})
        if request.method == "GET" and path == "/batches":
            rows = self.storage.sql.exec(
                "SELECT id, entries, delivered_at, attempt FROM outbox ORDER BY id"
            )
            return Response.json(
                [
                    {
                        "id": row.id,
                        "items": json.loads(row.entries),
                        "deliveredAt": row.delivered_at,
                        "attempt": row.attempt,
                    }
                    for row in rows
                ]
            )
        if request.method == "POST" and path == "/flush":
            await self.storage.deleteAlarm()
            return Response.json({"delivered": await self.deliver(attempt=1)})
        return Response("Not found", status=404)

    async def alarm(self, alarm_info):
        await self.deliver(attempt=alarm_info.retryCount + 1)

    async def deliver(self, attempt):
        items = await self.storage.list({"prefix": "item:"})
        if items:
            self.storage.sql.exec(
                "INSERT INTO outbox (entries, delivered_at, attempt) VALUES (?, ?, ?)",
                json.dumps(list(items.values())),
                Date.now(),
                attempt,
            )
            keys = list(items)
            for start in range(0, len(keys), MAX_KEYS):
                await self.storage.delete(keys[start : start + MAX_KEYS])
        self.count = 0
        return len(items)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.BATCHER.getByName("default").fetch(request)
