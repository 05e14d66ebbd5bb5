"""The capacity search's rates: up while they hold, then the gap between the best held and
the lowest missed halved until it is within 10%; halving first while nothing holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.bench.capacity import CLOSE_ENOUGH, RateSearch


def run(search: RateSearch, capacity: float, max_steps: int = 50) -> list[float]:
    """The rates tried against a service that holds exactly up to `capacity`."""
    tried = []
    for _ in range(max_steps):
        tried.append(search.rate)
        ok = search.rate <= capacity
        if search.record(ok, "p99 above 100 ms") is None:
            break
    return tried


def test_rates_go_up_then_the_gap_is_halved_until_close() -> None:
    search = RateSearch(200, 20)
    # 1.5x steps alone would report 450/s for a service that holds 640/s.
    assert run(search, 640) == [200, 300, 450, 675, 562.5, 618.75]
    assert (search.held, search.missed) == (618.75, 675)
    assert search.stopped == "p99 above 100 ms; 619/s held, 675/s missed"


def test_a_first_rate_that_misses_is_halved_until_one_holds_then_refined() -> None:
    search = RateSearch(200, 20)
    assert run(search, 60) == [200, 100, 50, 75, 62.5, 56.25, 59.375]
    assert (search.held, search.missed) == (59.375, 62.5)


def test_nothing_held_above_the_floor_ends_with_the_first_reason() -> None:
    search = RateSearch(200, 20)
    tried = []
    while True:
        tried.append(search.rate)
        reason = "missing deliveries" if len(tried) == 1 else "p99 above 100 ms"
        if search.record(False, reason) is None:
            break
    assert tried == [200, 100, 50, 25]
    assert search.held is None and search.stopped == "missing deliveries"


@given(
    start=st.floats(1, 1000),
    capacity=st.floats(1, 100_000),
)
def test_the_search_ends_close_to_the_capacity_it_can_find(start: float, capacity: float) -> None:
    search = RateSearch(start, 20)
    tried = run(search, capacity, max_steps=200)
    assert len(tried) < 200
    if search.held is None:
        assert capacity < min(tried) and min(tried) / 2 < 20
    else:
        assert search.held <= capacity < search.missed
        assert search.missed is not None and search.missed <= search.held * CLOSE_ENOUGH
