"""GET /counter/<name>: one Counter object per name adds one to its stored value.

The read-modify-write needs no lock: nothing else runs in the object between the get and the
put, and the response leaves only once the new value is on disk.
"""

from opendo import DurableObject, Request, Response, WorkerEntrypoint


class Counter(DurableObject):
    async def fetch(self, request: Request) -> Response:
        value = (await self.ctx.storage.get("value") or 0) + 1
        await self.ctx.storage.put("value", value)
        return Response(str(value))


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        prefix = "/counter/"
        if not request.path.startswith(prefix) or len(request.path) == len(prefix):
            return Response("Not found: use /counter/<name>", status=404)
        name = request.path[len(prefix) :]
        return await self.env.COUNTER.get_by_name(name).fetch(request)
