"""The chat example: the tutorial's app, grown into a chat people can use.

Every connection to /<room> reaches the one Chat object of that room. The tutorial's frames
still work as they did — the first frame is {"id": n}, and a {"from", "text"} message reaches
everyone, sender included — and the room now also keeps its history, knows who is there by
name, refuses bad frames with an error frame, and limits how fast one client may talk. The
protocol is in README.md beside this file.

Sockets are accepted with the hibernation API: an idle room leaves memory while its clients
stay connected. So nothing lasting lives in instance attributes: the id counter and the
history are in storage, and each client's id and name are in its socket's attachment.
"""

import json
import time
import unicodedata
import weakref

from opendo import (
    DurableObject,
    DurableObjectError,
    Request,
    Response,
    WebSocket,
    WebSocketPair,
    WorkerEntrypoint,
)

HISTORY = 100  # messages kept and sent to a client that joins
TRIM_EVERY = 20  # older messages are deleted every 20 messages, not on each one
MAX_FRAME = 4096  # bytes in one frame from a client
MAX_NAME = 32  # characters in a display name
BURST = 10  # rate limit: a bucket of 10 messages, refilled at [vars] MESSAGES_PER_SECOND
ANNOUNCE_UP_TO = 256  # larger rooms don't announce every join and leave


class Chat(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.sql = ctx.storage.sql  # the messages table is made by the first connection
        self.buckets = weakref.WeakKeyDictionary()  # socket -> (tokens, when); memory only
        self.per_second = float(env.get("MESSAGES_PER_SECOND", 2))  # 0: no limit

    async def fetch(self, request: Request) -> Response:
        if (request.headers.get("Upgrade") or "").lower() != "websocket":
            return Response("Expected upgrade: websocket", status=426)

        # The counter is in storage, so ids keep counting up across restarts. No lock is
        # needed: nothing else runs in this object between the get and the put.
        id = (await self.ctx.storage.get("counter") or 0) + 1
        await self.ctx.storage.put("counter", id)
        # Made here, with the first write, rather than in the constructor: a room that only
        # ever answered 426 stores nothing (every message arrives on a socket made here).
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "sender INTEGER NOT NULL, name TEXT, text TEXT NOT NULL, at INTEGER NOT NULL)"
        )

        client, server = WebSocketPair()
        self.ctx.accept_websocket(server)
        user = {"id": id, "name": None}
        server.serialize_attachment(user)

        send(server, {"id": id})  # the tutorial's greeting: your id
        send(server, {"type": "history", "messages": self.history()})
        everyone = self.ctx.get_websockets()
        others = [ws for ws in everyone if ws is not server]
        send(server, {"type": "presence", "users": users(everyone), "count": len(everyone)})
        if len(others) < ANNOUNCE_UP_TO:
            broadcast(others, {"type": "join", "user": user})
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws: WebSocket, message: str | bytes) -> None:
        if isinstance(message, bytes):
            return refuse(ws, "binary", "binary frames are not accepted: send JSON text")
        if len(message) > MAX_FRAME or len(message.encode()) > MAX_FRAME:
            return refuse(ws, "too_large", f"a frame may be at most {MAX_FRAME} bytes")
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            return refuse(ws, "bad_json", 'expected a JSON object, like {"text": "hi"}')

        kind = data.get("type", "message")
        if kind == "message":
            self.post(ws, data.get("text"))
        elif kind == "name":
            self.rename(ws, data.get("name"))
        else:
            refuse(ws, "unknown_type", f"unknown frame type {str(kind)[:40]!r}")

    async def web_socket_close(self, ws: WebSocket, code: int, reason: str, was_clean: bool):
        others = self.ctx.get_websockets()  # without the one that left
        if len(others) < ANNOUNCE_UP_TO:
            broadcast(others, {"type": "leave", "user": ws.deserialize_attachment()})

    async def web_socket_error(self, ws: WebSocket, error: Exception) -> None:
        pass  # a lost connection: web_socket_close follows and announces it

    def post(self, ws: WebSocket, text) -> None:
        if not isinstance(text, str):
            return refuse(ws, "missing_text", 'a message needs a "text" string')
        if not text.strip():
            return refuse(ws, "empty_text", "a message cannot be empty")
        if not encodable(text):
            return refuse(ws, "bad_json", "the text is not valid Unicode")
        if self.per_second and not self.allow(ws):
            return refuse(
                ws, "rate_limited", f"slow down: at most {self.per_second:g} messages a second"
            )
        user = ws.deserialize_attachment()
        at = int(time.time() * 1000)
        seq = self.sql.exec(
            "INSERT INTO messages (sender, name, text, at) VALUES (?, ?, ?, ?) RETURNING seq",
            user["id"],
            user["name"],
            text,
            at,
        ).one()["seq"]
        if seq % TRIM_EVERY == 0:
            self.sql.exec("DELETE FROM messages WHERE seq <= ?", seq - HISTORY)
        frame = {"from": user["id"], "text": text, "name": user["name"], "at": at}
        broadcast(self.ctx.get_websockets(), frame)
        # The broadcast leaves once the message is on disk. If it cannot be stored (a full
        # disk), the broadcast is dropped and the room is reset: the sender is told, by a
        # callback, so that no handler waits for the disk.
        self.ctx.storage.sync().add_done_callback(lambda durable: stored(ws, durable))

    def rename(self, ws: WebSocket, name) -> None:
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME:
            return refuse(ws, "bad_name", f"a name has 1 to {MAX_NAME} characters")
        name = name.strip()
        if not encodable(name) or any(unicodedata.category(c) == "Cc" for c in name):
            return refuse(ws, "bad_name", "a name cannot hold control characters")
        user = ws.deserialize_attachment()
        user["name"] = name
        ws.serialize_attachment(user)
        broadcast(self.ctx.get_websockets(), {"type": "rename", "user": user})

    def allow(self, ws: WebSocket) -> bool:
        now = time.monotonic()
        tokens, then = self.buckets.get(ws, (BURST, now))
        tokens = min(BURST, tokens + (now - then) * self.per_second)
        if tokens < 1:
            self.buckets[ws] = (tokens, now)
            return False
        self.buckets[ws] = (tokens - 1, now)
        return True

    def history(self) -> list[dict]:
        rows = self.sql.exec(
            "SELECT sender, name, text, at FROM messages ORDER BY seq DESC LIMIT ?", HISTORY
        )
        return [
            {"from": r["sender"], "name": r["name"], "text": r["text"], "at": r["at"]}
            for r in reversed(list(rows))
        ]


def users(sockets: list[WebSocket]) -> list[dict]:
    """The first members, by id (sockets come in the order they joined)."""
    first = [ws.deserialize_attachment() for ws in sockets[:ANNOUNCE_UP_TO]]
    return sorted(first, key=lambda user: user["id"])


def encodable(text: str) -> bool:
    """False for text JSON can carry but UTF-8 cannot (lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def send(ws: WebSocket, frame: dict) -> None:
    ws.send(json.dumps(frame))


def broadcast(sockets: list[WebSocket], frame: dict) -> None:
    text = json.dumps(frame)  # one str for everyone: opendo frames it once
    for ws in sockets:
        ws.send(text)


def stored(ws: WebSocket, durable) -> None:
    if durable.exception() is not None:
        refuse(ws, "storage_failed", "your message was not stored, so no one got it")


def refuse(ws: WebSocket, code: str, message: str) -> None:
    send(ws, {"type": "error", "error": code, "message": message})


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        room = request.path[1:]
        if not room:
            return Response("Bad request", status=400)
        try:
            return await self.env.CHAT.get_by_name(room).fetch(request)
        except DurableObjectError as exc:  # the room could not store the new connection
            return Response(f"The room is unavailable: {exc}", status=503)
