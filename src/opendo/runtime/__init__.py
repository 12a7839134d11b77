"""The asyncio driver of opendo's core: object hosts (activation, event delivery through the
gates, eviction, hibernation), alarms, namespaces and stubs, wired by the ``Runtime``; and the
links that carry events to an owner in another process or node."""
