"""What users subclass and construct: ``DurableObject``, ``WorkerEntrypoint``, ``Env``,
``Request``, ``Response``, ``Headers``, ``WebSocketPair`` and ``WebSocket``."""
