"""A chat room per path, written as a Cloudflare Python Worker, on the WebSocket Hibernation
API: the room may leave memory between messages while its WebSockets stay connected.

Connect a WebSocket to /<room>?name=<your name>. Frames are JSON:

    you send      {"text": "hello"}
    you receive   {"type": "welcome", "name": "ada", "online": [...], "history": [...]}
                  {"type": "join", "name": "bob"}       {"type": "leave", "name": "bob"}
                  {"type": "message", "name": "ada", "text": "hello"}
                  {"type": "error", "error": "..."}     (to the sender only)

"ping" is answered with "pong" without waking the room.
"""

import json
from urllib.parse import parse_qs, urlparse

from js import WebSocketPair, WebSocketRequestResponsePair
from workers import DurableObject, Response, WorkerEntrypoint

HISTORY = 20  # messages kept, and sent to whoever joins


class ChatRoom(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        # This runs again when the room wakes from hibernation. The sockets stayed connected,
        # and who is who comes back from their attachments.
        self.ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))

    async def fetch(self, request):
        if (request.headers.get("Upgrade") or "").lower() != "websocket":
            return Response("Expected Upgrade: websocket", status=426)
        name = parse_qs(urlparse(request.url).query).get("name", ["anonymous"])[0][:32]

        # Every connection gets a number, kept in storage so numbers are never reused.
        session = (await self.ctx.storage.get("lastSession")) or 0
        session += 1
        await self.ctx.storage.put("lastSession", session)
        # With the first write, not in the constructor: a room that only answered 426
        # stores nothing.
        self.ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS messages "
            "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, text TEXT NOT NULL)"
        )

        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server)
        server.serializeAttachment({"session": session, "name": name})

        self.broadcast({"type": "join", "name": name}, skip=session)
        server.send(
            json.dumps(
                {
                    "type": "welcome",
                    "name": name,
                    "online": [ws.deserializeAttachment()["name"] for ws in self.sockets()],
                    "history": self.history(),
                }
            )
        )
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        sender = ws.deserializeAttachment()
        try:
            text = json.loads(message)["text"]
            if not isinstance(text, str) or not text:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            ws.send(json.dumps({"type": "error", "error": 'expected {"text": "..."}'}))
            return
        text = text[:1000]
        self.ctx.storage.sql.exec(
            "INSERT INTO messages (name, text) VALUES (?, ?)", sender["name"], text
        )
        self.ctx.storage.sql.exec(
            "DELETE FROM messages WHERE id <= (SELECT max(id) FROM messages) - ?", HISTORY
        )
        self.broadcast({"type": "message", "name": sender["name"], "text": text})

    async def webSocketClose(self, ws, code, reason, wasClean):
        ws.close(code, reason)  # complete the closing handshake
        leaver = ws.deserializeAttachment()
        self.broadcast({"type": "leave", "name": leaver["name"]}, skip=leaver["session"])

    async def webSocketError(self, ws, error):
        pass  # webSocketClose follows, with code 1006, and announces the leave

    def sockets(self):
        return self.ctx.getWebSockets()

    def broadcast(self, frame, skip=None):
        text = json.dumps(frame)
        for ws in self.sockets():
            if ws.deserializeAttachment()["session"] != skip:
                ws.send(text)

    def history(self):
        rows = self.ctx.storage.sql.exec("SELECT name, text FROM messages ORDER BY id")
        return [{"name": row.name, "text": row.text} for row in rows]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        room = urlparse(request.url).path.strip("/")
        if not room:
            return Response("Connect a WebSocket to /<room>?name=<your name>", status=400)
        return await self.env.ROOMS.getByName(room).fetch(request)
