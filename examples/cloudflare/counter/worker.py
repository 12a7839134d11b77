"""A counter per name, written as a Cloudflare Python Worker.

GET  /?name=A            the count of counter A
GET  /increment?name=A   adds one and answers the new count
GET  /decrement?name=A   takes one away
GET  /history?name=A     the last changes, from the counter's SQL storage, as JSON
POST /reset?name=A       deletes everything the counter stored
"""

from urllib.parse import parse_qs, urlparse

from workers import DurableObject, Response, WorkerEntrypoint


class Counter(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)

        # Nothing else reaches this object until its state is loaded.
        @self.ctx.blockConcurrencyWhile
        async def initialize():
            self.create_tables()
            self.value = (await self.ctx.storage.get("value")) or 0

    def create_tables(self):
        self.ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS changes "
            "(id INTEGER PRIMARY KEY, delta INTEGER NOT NULL, value INTEGER NOT NULL)"
        )

    async def getCounterValue(self):
        return self.value

    async def increment(self, amount=1):
        return self.change(amount)

    async def decrement(self, amount=1):
        return self.change(-amount)

    def change(self, delta):
        self.value += delta
        # No await in between: the two writes commit together, and the caller hears of the
        # new value only once both are stored.
        self.ctx.storage.put("value", self.value)
        self.ctx.storage.sql.exec(
            "INSERT INTO changes (delta, value) VALUES (?, ?)", delta, self.value
        )
        return self.value

    async def history(self, limit=10):
        cursor = self.ctx.storage.sql.exec(
            "SELECT delta, value FROM changes ORDER BY id DESC LIMIT ?", limit
        )
        return [{"delta": row.delta, "value": row.value} for row in cursor.toArray()]

    async def reset(self):
        await self.ctx.storage.deleteAll()  # the key and the SQL table, atomically
        self.create_tables()
        self.value = 0


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        name = parse_qs(url.query).get("name", [""])[0]
        if not name:
            return Response(
                "Select a Durable Object to contact by using the `name` URL query string "
                "parameter, for example, ?name=A",
                status=400,
            )

        stub = self.env.COUNTERS.get(self.env.COUNTERS.idFromName(name))

        if url.path == "/increment":
            count = await stub.increment()
        elif url.path == "/decrement":
            count = await stub.decrement()
        elif url.path == "/history":
            return Response.json(await stub.history())
        elif url.path == "/reset" and request.method == "POST":
            await stub.reset()
            count = 0
        elif url.path == "/":
            count = await stub.getCounterValue()
        else:
            return Response("Not found", status=404)

        return Response(f"Durable Object '{name}' count: {count}")
