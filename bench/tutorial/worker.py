"""The tutorial's chat as the workerd peer runs it (its src/chat.ts), for benchmarks only.

As faithful as the peer: an in-memory counter for ids, sessions never removed, each message
broadcast to every session, nothing stored. /<chatId> goes to the Chat object of that name.
The chat people use is examples/chat.
"""

import json

from opendo import DurableObject, Request, Response, WebSocketPair, WorkerEntrypoint


class Chat(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.counter = 0
        self.sessions = {}

    async def fetch(self, request: Request) -> Response:
        if request.headers.get("Upgrade") != "websocket":
            return Response("Expected upgrade: websocket", status=426)
        self.counter += 1
        id = self.counter
        client, server = WebSocketPair()
        server.accept()

        def on_message(event):
            message = json.loads(event.data)
            frame = json.dumps({"from": message["from"], "text": message["text"]})
            for session in self.sessions.values():
                session.send(frame)

        server.add_event_listener("message", on_message)
        self.sessions[id] = server
        server.send(json.dumps({"id": id}))
        return Response(status=101, web_socket=client)


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        chat_id = request.path[1:]
        if not chat_id:
            return Response("Bad request", status=400)
        return await self.env.CHAT.get_by_name(chat_id).fetch(request)
