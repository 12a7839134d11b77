"""GET /<op>/<name>: one Ledger object per name; every answer ends with the pid that ran it.

- ``inc``: add one to the stored value, answer ``VALUE PID``; ``get``: the value, unchanged;
- ``bookmark``: the current bookmark; ``restore?b=BOOKMARK``: restore it at the next session
  (answers the undo bookmark); ``restart``: end this session (``ctx.abort``);
- ``ws``: a hibernatable WebSocket that is told ``PID`` and echoes ``VALUE PID`` on a message.
"""

import os
from urllib.parse import parse_qs

from opendo import DurableObject, Request, Response, WebSocketPair, WorkerEntrypoint

PID = os.getpid()


class Ledger(DurableObject):
    async def fetch(self, request: Request) -> Response:
        op = request.path.split("/")[1]
        storage = self.ctx.storage
        if op == "ws":
            client, server = WebSocketPair()
            self.ctx.accept_websocket(server)
            server.send(str(PID))
            return Response(None, status=101, web_socket=client)
        if op == "inc":
            value = (await storage.get("value") or 0) + 1
            await storage.put("value", value)
            return Response(f"{value} {PID}")
        if op == "get":
            return Response(f"{await storage.get('value') or 0} {PID}")
        if op == "bookmark":
            return Response(await storage.get_current_bookmark())
        if op == "restore":
            bookmark = parse_qs(request.query).get("b", [""])[0]
            return Response(await storage.on_next_session_restore_bookmark(bookmark))
        if op == "restart":
            self.ctx.abort("restoring a bookmark")
        return Response(f"unknown operation {op!r}", status=404)

    async def web_socket_message(self, ws, message) -> None:
        ws.send(f"{await self.ctx.storage.get('value') or 0} {PID}")


class Default(WorkerEntrypoint):
    async def fetch(self, request: Request) -> Response:
        parts = request.path.split("/")
        if len(parts) != 3 or not parts[2]:
            return Response("use /<op>/<name>", status=404)
        return await self.env.LEDGER.get_by_name(parts[2]).fetch(request)
