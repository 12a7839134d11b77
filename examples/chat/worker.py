"""The tutorial's chat app on opendo.

Every connection to /<room> reaches the one Chat object of that room. The object hands each
WebSocket an auto-incrementing id ({"id": n}) and broadcasts every {"from", "text"} message
to everyone in the room, sender included.
"""

import json

from opendo import DurableObject, Request, Response, WebSocketPair, WorkerEntrypoint


class Chat(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.sessions = {}  # id -> the server end of that client's WebSocket

    async def fetch(self, request: Request) -> Response:
        if request.headers.get("Upgrade") != "websocket":
            return Response("Expected upgrade: websocket", status=426)

        # The counter is in storage, so ids keep counting up across restarts. No lock is
        # needed: nothing else runs in this object between the get and the put.
        id = (await self.ctx.storage.get("counter") or 0) + 1
        await self.ctx.storage.put("counter", id)

        client, server = WebSocketPair()
        server.accept()
        server.add_event_listener("message", lambda event: self.broadcast(event.data))
        server.add_event_listener("close", lambda event: self.sessions.pop(id, None))
        self.sessions[id] = server

        # Let the client know its id, then hand the other end back to it.
        server.send(json.dumps({"id": id}))
        return Response(status=101, web_socket=client)

    def broadcast(self, data: str | bytes) -> None:
        try:
            message = json.loads(data)
            frame = json.dumps({"from": message["from"], "text": message["text"]}, allow_nan=False)
        except (ValueError, TypeError, KeyError, RecursionError):
            return  # not a {"from", "text"} message: ignore it
        for session in self.sessions.values():
            session.send(frame)


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        room = request.path[1:]
        if not room:
            return Response("Bad request", status=400)
        return await self.env.CHAT.get_by_name(room).fetch(request)
