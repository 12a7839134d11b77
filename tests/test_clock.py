import pytest

from opendo import FakeClock


def test_fake_clock_fires_due_timers_in_order() -> None:
    clock = FakeClock()
    fired: list[str] = []
    clock.call_at(5, lambda: fired.append("b"))
    clock.call_at(1, lambda: fired.append("a"))
    late = clock.call_at(10, lambda: fired.append("c"))
    assert clock.advance(4) == 1 and fired == ["a"]
    assert clock.monotonic() == 4
    late.cancel()
    assert clock.advance(100) == 1 and fired == ["a", "b"]
    assert clock.pending() == 0


def test_fake_clock_jump_goes_to_the_next_timer() -> None:
    clock = FakeClock(start=100)
    seen: list[float] = []
    clock.call_at(107.5, lambda: seen.append(clock.monotonic()))
    assert clock.jump() is True
    assert seen == [107.5] and clock.monotonic() == 107.5
    assert clock.jump() is False


def test_timer_set_by_a_timer_fires_in_the_same_advance() -> None:
    clock = FakeClock()
    fired: list[int] = []
    clock.call_at(1, lambda: clock.call_at(2, lambda: fired.append(2)))
    clock.advance(3)
    assert fired == [2]


def test_fake_clock_never_goes_back() -> None:
    with pytest.raises(ValueError):
        FakeClock().advance(-1)
