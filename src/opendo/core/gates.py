"""Input and output gates: why user code in a Durable Object needs no locks.

An object runs one event at a time *between awaits*: a request, an RPC call, a WebSocket
message or an alarm runs until it awaits, and then another event may start. Two gates make
that model safe for storage:

**The input gate** stops *new* events from being delivered while the object waits on its own
storage, so that in

    value = await storage.get("n")
    await storage.put("n", value + 1)

no other event can run between the read and the write: the read-modify-write is atomic
without a lock in user code. opendo's storage calls never wait for I/O (they run against the
object's database at once; only durability is waited for, by the output gate), so they need
no ``InputLock``: nothing else can start while they run. What does wait holds one: an async
``storage.transaction(fn)`` for as long as ``fn`` runs, and ``block_concurrency_while(fn)``.
Events that arrive meanwhile queue up and are delivered, in order, when the last lock is
released. Awaiting anything *other* than the object's storage (an outbound fetch, another
object) takes no lock, so the gate stays open, as on Cloudflare.

**The output gate** holds everything the object sends out — an HTTP response, a WebSocket
message, an outbound call — until every write made *before* it was sent is durable. A write
in flight takes an ``OutputLock``; a message asks ``when_clear`` and is released once every
lock taken before it was released. Later writes do not delay earlier messages. If a lock
fails (the write did not reach disk), the gate breaks: every held message is dropped with the
error, and the object must be reset. So nothing the outside world sees can depend on a write
that might still be lost.

Both gates are plain bookkeeping: no I/O and no event loop. Callers pass callbacks; the
runtime decides how to schedule them. Callbacks of the input gate run synchronously inside
``release()``, so the runtime should only *schedule* work from them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["GateBrokenError", "InputGate", "InputLock", "OutputGate", "OutputLock"]


class GateBrokenError(Exception):
    """A write this message depended on failed; the message was dropped."""


class InputLock:
    __slots__ = ("_gate",)

    def __init__(self, gate: InputGate) -> None:
        self._gate: InputGate | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is None:
            raise RuntimeError("input lock released twice")
        gate._release()

    def __enter__(self) -> InputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class InputGate:
    """Blocks delivery of new events while any ``InputLock`` is held."""

    __slots__ = ("_locks", "_waiters")

    def __init__(self) -> None:
        self._locks = 0
        self._waiters: deque[Callable[[], None]] = deque()

    @property
    def is_open(self) -> bool:
        return self._locks == 0

    def lock(self) -> InputLock:
        self._locks += 1
        return InputLock(self)

    def when_open(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the gate is open (now, if it is)."""
        if self._locks == 0:
            callback()
        else:
            self._waiters.append(callback)

    def _release(self) -> None:
        self._locks -= 1
        while self._locks == 0 and self._waiters:
            self._waiters.popleft()()


class OutputLock:
    __slots__ = ("_gate", "seq")

    def __init__(self, gate: OutputGate, seq: int) -> None:
        self._gate: OutputGate | None = gate
        self.seq = seq

    def release(self) -> None:
        """The write this lock stands for is durable."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._settle(self, None)

    def fail(self, error: BaseException) -> None:
        """The write this lock stands for failed: break the gate."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._settle(self, error)


OutputCallback = Callable[[BaseException | None], None]


class FutureLike(Protocol):
    """What ``resolve_when_clear`` settles: an ``asyncio.Future``, or anything shaped so."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class OutputGate:
    """Holds outgoing messages until the writes made before them are durable."""

    __slots__ = ("_seq", "_locks", "_waiters", "broken")

    def __init__(self) -> None:
        self._seq = 0
        self._locks: deque[OutputLock] = deque()  # in the order they were taken
        self._waiters: deque[tuple[int, OutputCallback]] = deque()
        self.broken: BaseException | None = None

    @property
    def is_clear(self) -> bool:
        """True when a message sent now can leave at once."""
        return not self._locks and self.broken is None

    def lock(self) -> OutputLock:
        if self.broken is not None:
            raise GateBrokenError("the output gate is broken") from self.broken
        self._seq += 1
        lock = OutputLock(self, self._seq)
        self._locks.append(lock)
        return lock

    def when_clear(self, callback: OutputCallback) -> None:
        """Call ``callback(None)`` once every lock taken so far is released, or
        ``callback(error)`` if one of them fails. Callbacks run in the order given."""
        if self.broken is not None:
            callback(self.broken)
        elif not self._locks and not self._waiters:
            callback(None)
        else:
            self._waiters.append((self._seq, callback))

    def resolve_when_clear(
        self,
        future: FutureLike,
        value: object = None,
        wrap: Callable[[BaseException], BaseException] | None = None,
    ) -> None:
        """``when_clear`` for a future: its result is ``value`` once the gate is clear, its
        exception the failed lock's error (``wrap(error)`` if given); a future done
        meanwhile (cancelled) is left as it is."""

        def settle(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error if wrap is None else wrap(error))

        self.when_clear(settle)

    def _settle(self, lock: OutputLock, error: BaseException | None) -> None:
        self._locks.remove(lock)
        if error is not None and self.broken is None:
            self.broken = error
        if self.broken is not None:
            waiters, self._waiters = self._waiters, deque()
            for _, callback in waiters:
                callback(self.broken)
            return
        low = self._locks[0].seq if self._locks else self._seq + 1
        while self._waiters and self._waiters[0][0] < low:
            _, callback = self._waiters.popleft()
            callback(None)
