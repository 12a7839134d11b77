"""The tutorial's chat app on opendo.

Every connection to /<room> reaches the one Chat object of that room. The object hands each
WebSocket an auto-incrementing id ({"id": n}) and broadcasts every {"from", "text"} message
to everyone in the room, sender included.

The sockets are accepted with the hibernation API: when the room is idle, the object is
evicted from memory while its clients stay connected, and the next message brings it back.
So nothing lives in instance attributes: the counter is in storage, and each client's id is
in its socket's attachment.
"""

import json

from opendo import DurableObject, Request, Response, WebSocketPair, WorkerEntrypoint


class Chat(DurableObject):
    async def fetch(self, request: Request) -> Response:
        if request.headers.get("Upgrade") != "websocket":
            return Response("Expected upgrade: websocket", status=426)

        # The counter is in storage, so ids keep counting up across restarts. No lock is
        # needed: nothing else runs in this object between the get and the put.
        id = (await self.ctx.storage.get("counter") or 0) + 1
        await self.ctx.storage.put("counter", id)

        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        server.serialize_attachment({"id": id})

        # Let the client know its id, then hand the other end back to it.
        server.send(json.dumps({"id": id}))
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message: str | bytes) -> None:
        try:
            data = json.loads(message)
            frame = json.dumps({"from": data["from"], "text": data["text"]}, allow_nan=False)
        except (ValueError, TypeError, KeyError, RecursionError):
            return  # not a {"from", "text"} message: ignore it
        for session in self.ctx.get_websockets():
            session.send(frame)

    async def web_socket_close(self, ws, code: int, reason: str, was_clean: bool) -> None:
        pass  # the closing handshake is completed for us; nothing to clean up


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        room = request.path[1:]
        if not room:
            return Response("Bad request", status=400)
        return await self.env.CHAT.get_by_name(room).fetch(request)
