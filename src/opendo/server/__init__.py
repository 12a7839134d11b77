"""Serving HTTP and WebSockets: one gateway (``gateway``: the checks, assets, the Worker call,
the upgrade decision) under both opendo's own HTTP/1.1 protocol (``http``, with its WebSocket
connections, ``websocket``, on a pure frame codec, ``codec``) and the ASGI application
(``asgi``)."""
