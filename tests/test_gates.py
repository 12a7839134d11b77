import pytest

from opendo.core.gates import GateBrokenError, InputGate, OutputGate


def test_input_gate_runs_callbacks_when_the_last_lock_is_released() -> None:
    gate = InputGate()
    opened: list[int] = []
    gate.when_open(lambda: opened.append(0))
    assert opened == [0]  # open: at once
    a, b = gate.lock(), gate.lock()
    gate.when_open(lambda: opened.append(1))
    gate.when_open(lambda: opened.append(2))
    a.release()
    assert opened == [0] and not gate.is_open
    b.release()
    assert opened == [0, 1, 2] and gate.is_open


def test_input_lock_cannot_be_released_twice() -> None:
    lock = InputGate().lock()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_callback_that_locks_again_holds_the_rest() -> None:
    gate = InputGate()
    opened: list[str] = []
    held = []
    lock = gate.lock()
    gate.when_open(lambda: held.append(gate.lock()))
    gate.when_open(lambda: opened.append("second"))
    lock.release()
    assert opened == [] and not gate.is_open
    held[0].release()
    assert opened == ["second"]


def test_output_gate_is_clear_without_writes() -> None:
    gate = OutputGate()
    got: list[object] = []
    gate.when_clear(got.append)
    assert got == [None] and gate.is_clear


def test_output_gate_holds_messages_until_earlier_writes_are_durable() -> None:
    gate = OutputGate()
    sent: list[str] = []
    w1 = gate.lock()
    gate.when_clear(lambda e: sent.append("m1"))
    w2 = gate.lock()
    gate.when_clear(lambda e: sent.append("m2"))
    assert not gate.is_clear and sent == []
    w1.release()
    assert sent == ["m1"]  # m1 needed only w1; m2 waits for w2
    w2.release()
    assert sent == ["m1", "m2"] and gate.is_clear


def test_a_later_message_never_overtakes_an_earlier_one() -> None:
    gate = OutputGate()
    sent: list[str] = []
    w1 = gate.lock()
    gate.when_clear(lambda e: sent.append("m1"))
    w2 = gate.lock()
    w2.release()  # durable out of order
    gate.when_clear(lambda e: sent.append("m2"))  # needs nothing new, but m1 is ahead
    assert sent == []
    w1.release()
    assert sent == ["m1", "m2"]


def test_a_failed_write_breaks_the_gate_and_drops_held_messages() -> None:
    gate = OutputGate()
    outcomes: list[object] = []
    w1 = gate.lock()
    gate.when_clear(outcomes.append)
    error = OSError("disk full")
    w1.fail(error)
    assert outcomes == [error]
    assert gate.broken is error and not gate.is_clear
    gate.when_clear(outcomes.append)
    assert outcomes == [error, error]
    with pytest.raises(GateBrokenError):
        gate.lock()


class Settled:
    """A future-shaped recorder (``core.gates.FutureLike``)."""

    def __init__(self, done: bool = False) -> None:
        self.outcome: tuple[str, object] | None = ("already", None) if done else None

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, result: object) -> None:
        self.outcome = ("result", result)

    def set_exception(self, exception: BaseException) -> None:
        self.outcome = ("exception", exception)


def test_resolve_when_clear_settles_a_future_with_the_value_or_the_wrapped_error() -> None:
    gate = OutputGate()
    clear = Settled()
    gate.resolve_when_clear(clear, "now")
    assert clear.outcome == ("result", "now")  # nothing held: at once

    lock = gate.lock()
    held, cancelled = Settled(), Settled(done=True)
    gate.resolve_when_clear(held, 42)
    gate.resolve_when_clear(cancelled, 1)
    assert held.outcome is None
    lock.release()
    assert held.outcome == ("result", 42) and cancelled.outcome == ("already", None)

    failing = gate.lock()
    wrapped = Settled()
    gate.resolve_when_clear(wrapped, wrap=lambda error: RuntimeError(f"lost: {error}"))
    failing.fail(OSError("disk"))
    assert wrapped.outcome is not None and wrapped.outcome[0] == "exception"
    assert str(wrapped.outcome[1]) == "lost: disk"
