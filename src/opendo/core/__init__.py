"""opendo's core: what Durable Objects are, with no I/O and the standard library only.

Ids, events as data, the lifecycle table, input and output gates, alarm timing and back-off,
the value format (its rules, its reference implementation), migrations, the injected clock,
errors, and the protocols the other layers implement (``protocols``: the runtime's seams;
``storage``: the storage drivers'). Everything here is tested directly, without sockets.
"""
