"""FreeRanges against a plain set of used addresses.

The model is the set of *used* addresses inside `[low, high]`, so the same model
serves a 40-address universe and a 2**64 one (an IPv6 /64): memory stays with the
number of used addresses, as the index's own does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipamd.core.freeranges import FreeRanges

BIG = 2**64
# (name, address, width): one step of a random sequence
Op = tuple[Any, ...]
Case = tuple[int, int, list[Op]]

# -- a plain-set model ------------------------------------------------------


@dataclass
class UsedModel:
    low: int
    high: int
    used: set[int] = field(default_factory=set)

    def in_bounds(self, address: int) -> bool:
        return self.low <= address <= self.high

    def is_free(self, address: int) -> bool:
        return self.in_bounds(address) and address not in self.used

    def first_free_at_or_after(self, address: int, limit: int) -> int | None:
        candidate = max(address, self.low)
        while candidate in self.used:
            candidate += 1
        return candidate if candidate <= min(limit, self.high) else None

    def count_free(self, first: int, last: int) -> int:
        first, last = max(first, self.low), min(last, self.high)
        if first > last:
            return 0
        return last - first + 1 - sum(1 for u in self.used if first <= u <= last)


def check_against(index: FreeRanges, model: UsedModel) -> None:
    runs = list(index.runs())
    assert index.run_count == len(runs)
    # Runs are sorted, inside the universe, non-empty, disjoint and never touch.
    for start, end in runs:
        assert model.low <= start <= end <= model.high
    for (_, end), (next_start, _) in pairwise(runs):
        assert next_start > end + 1
    # Every used address lies in a gap, and the gaps hold nothing else.
    for address in model.used:
        assert not index.is_free(address)
    covered = sum(end - start + 1 for start, end in runs)
    assert covered == model.high - model.low + 1 - len(model.used)
    # Memory grows with the holes, not with the universe.
    assert index.run_count <= len(model.used) + 1
    # The index of a free set is unique, so a rebuild compares equal.
    assert FreeRanges.from_used(model.low, model.high, model.used) == index


# -- strategies --------------------------------------------------------------


@st.composite
def small_universe(draw: st.DrawFn) -> tuple[int, int]:
    low = draw(st.integers(0, 3))
    return low, low + draw(st.integers(0, 40))


@st.composite
def big_universe(draw: st.DrawFn) -> tuple[int, int]:
    # An IPv6 /64 minus its network address, or the whole of it.
    return draw(st.sampled_from([(1, BIG - 1), (0, BIG - 1)]))


def addresses(low: int, high: int) -> st.SearchStrategy[int]:
    """Addresses near the interesting places: both ends, the middle, just outside."""
    if high - low <= 64:
        return st.integers(low - 2, high + 2)
    middle = (low + high) // 2
    return st.one_of(
        st.integers(low - 2, low + 40),
        st.integers(middle - 20, middle + 20),
        st.integers(high - 40, high + 2),
    )


@st.composite
def operations(draw: st.DrawFn, universe: st.SearchStrategy[tuple[int, int]]) -> Case:
    low, high = draw(universe)
    address = addresses(low, high)
    op = st.one_of(
        st.tuples(st.just("take"), address),
        st.tuples(st.just("give"), address),
        st.tuples(st.just("take_range"), address, st.integers(-3, 48)),
        st.tuples(st.just("query"), address, st.integers(-3, 48)),
        st.tuples(st.just("take_first"), address, st.integers(-3, 48)),
        st.tuples(st.just("give_if_used"), address),
        st.tuples(st.just("give_range"), address, st.integers(-3, 48)),
    )
    return low, high, draw(st.lists(op, max_size=60))


def run_operations(low: int, high: int, ops: list[Op]) -> None:
    index = FreeRanges(low, high)
    model = UsedModel(low, high)
    check_against(index, model)
    for op in ops:
        name, address = op[0], op[1]
        if name == "take":
            if model.is_free(address):
                index.take(address)
                model.used.add(address)
            else:
                with pytest.raises(ValueError):
                    index.take(address)
        elif name == "give":
            if model.in_bounds(address) and address in model.used:
                index.give(address)
                model.used.discard(address)
            else:
                with pytest.raises(ValueError):
                    index.give(address)
        elif name == "take_range":
            last = address + op[2]
            index.take_range(address, last)
            model.used |= set(range(max(address, low), min(last, high) + 1))
        elif name == "give_range":
            last = address + op[2]
            span = set(range(max(address, low), min(last, high) + 1))
            assert index.give_range(address, last) == len(span & model.used)
            model.used -= span
        elif name == "give_if_used":
            if model.in_bounds(address):
                assert index.give_if_used(address) == (address in model.used)
                model.used.discard(address)
            else:
                with pytest.raises(ValueError):
                    index.give_if_used(address)
        elif name == "take_first":
            limit = address + op[2]
            expected = model.first_free_at_or_after(address, limit)
            assert index.take_first_at_or_after(address, limit) == expected
            if expected is not None:
                model.used.add(expected)
        else:
            limit = address + op[2]
            assert index.is_free(address) == model.is_free(address)
            assert index.first_free_at_or_after(address, limit) == (
                model.first_free_at_or_after(address, limit)
            )
            assert index.count_free(address, limit) == model.count_free(address, limit)
            # An empty span counts nothing, whichever way round it is given.
            assert index.count_free(limit, address) == model.count_free(limit, address)
        check_against(index, model)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(operations(small_universe()))
def test_matches_set_model_small_universe(case: Case) -> None:
    run_operations(*case)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(operations(big_universe()))
def test_matches_set_model_ipv6_sized_universe(case: Case) -> None:
    run_operations(*case)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(
    small_universe().flatmap(
        lambda u: st.tuples(st.just(u), st.lists(st.integers(u[0] - 2, u[1] + 2), max_size=50))
    )
)
def test_from_used_is_the_complement(case: tuple[tuple[int, int], list[int]]) -> None:
    (low, high), used = case
    index = FreeRanges.from_used(low, high, used)
    expected_free = set(range(low, high + 1)) - set(used)
    assert {a for start, end in index.runs() for a in range(start, end + 1)} == expected_free
    check_against(index, UsedModel(low, high, {u for u in used if low <= u <= high}))


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.lists(st.integers(0, BIG - 1), max_size=40))
def test_from_used_equals_taking_one_by_one_in_a_64_bit_universe(used: list[int]) -> None:
    built = FreeRanges(0, BIG - 1)
    for address in set(used):
        built.take(address)
    assert FreeRanges.from_used(0, BIG - 1, used) == built


# -- examples: each branch of take and give ---------------------------------


def runs(index: FreeRanges) -> list[tuple[int, int]]:
    return list(index.runs())


def test_new_index_is_one_run_or_none() -> None:
    assert runs(FreeRanges(1, BIG - 1)) == [(1, BIG - 1)]
    assert runs(FreeRanges(1, 14, free=False)) == []
    assert FreeRanges(1, 14, free=False).first_free_at_or_after(1, 14) is None


def test_take_splits_trims_and_drops_runs() -> None:
    index = FreeRanges(0, 9)
    index.take(4)  # split
    assert runs(index) == [(0, 3), (5, 9)]
    index.take(0)  # trim the start
    index.take(9)  # trim the end
    assert runs(index) == [(1, 3), (5, 8)]
    for address in (1, 2, 3):
        index.take(address)
    assert runs(index) == [(5, 8)]  # a run taken to nothing disappears


def test_give_merges_left_right_both_and_none() -> None:
    index = FreeRanges.from_used(0, 9, [2, 3, 4, 7])
    assert runs(index) == [(0, 1), (5, 6), (8, 9)]
    index.give(2)  # joins the left run
    index.give(4)  # joins the right run
    assert runs(index) == [(0, 2), (4, 6), (8, 9)]
    index.give(3)  # joins both
    assert runs(index) == [(0, 6), (8, 9)]
    lonely = FreeRanges.from_used(0, 9, [3, 4, 5])
    lonely.give(4)  # joins neither
    assert runs(lonely) == [(0, 2), (4, 4), (6, 9)]


def test_runs_of_one_address() -> None:
    index = FreeRanges.from_used(0, 9, [1, 3, 5])
    assert runs(index) == [(0, 0), (2, 2), (4, 4), (6, 9)]
    assert index.take_first_at_or_after(1, 9) == 2  # a run of one, taken whole
    assert runs(index) == [(0, 0), (4, 4), (6, 9)]
    index.take(4)
    assert runs(index) == [(0, 0), (6, 9)]
    index.give(2)  # a new run of one, between used neighbours
    assert runs(index) == [(0, 0), (2, 2), (6, 9)]
    index.give(1)  # joins two runs of one
    assert runs(index) == [(0, 2), (6, 9)]


def test_taking_the_first_and_last_address_of_a_run() -> None:
    index = FreeRanges.from_used(0, 20, [5, 15])
    assert runs(index) == [(0, 4), (6, 14), (16, 20)]
    assert index.take_first_at_or_after(6, 20) == 6  # the first: the run keeps its end
    index.take(14)  # the last: the run gets a new end
    assert runs(index) == [(0, 4), (7, 13), (16, 20)]
    assert index.take_first_at_or_after(14, 20) == 16  # past a hole, into the next run
    assert index.take_first_at_or_after(21, 30) is None
    assert index.take_first_at_or_after(17, 16) is None  # an empty span takes nothing
    assert runs(index) == [(0, 4), (7, 13), (17, 20)]


def test_a_stale_hint_never_answers() -> None:
    index = FreeRanges(0, 9)
    assert index.first_free_at_or_after(0, 9) == 0  # remembers the run ending at 9
    index.take(9)  # that run now ends at 8; nothing ends at 9
    index.take(8)
    index.give(9)  # a run of one ends at 9 again, but does not hold 0
    assert runs(index) == [(0, 7), (9, 9)]
    assert index.first_free_at_or_after(0, 9) == 0
    assert index.is_free(9) and not index.is_free(8)
    assert index.take_first_at_or_after(8, 9) == 9


def test_first_free_wraps_to_the_start_of_the_lease_range() -> None:
    """Rule 1's wrap-around, at the index level: after the cursor first, then from the start."""
    index = FreeRanges.from_used(1, 14, [2, 12, 13, 14])
    assert index.take_first_at_or_after(12, 14) is None
    assert index.take_first_at_or_after(1, 11) == 1
    assert index.take_first_at_or_after(1, 11) == 3


def test_take_range_clips_and_spans_runs() -> None:
    index = FreeRanges.from_used(0, 20, [5, 10, 15])
    index.take_range(3, 12)
    assert runs(index) == [(0, 2), (13, 14), (16, 20)]
    index.take_range(-5, 0)  # clipped to the universe
    index.take_range(20, 99)
    index.take_range(9, 4)  # empty: nothing happens
    assert runs(index) == [(1, 2), (13, 14), (16, 19)]


def test_give_range_merges_the_runs_it_touches() -> None:
    index = FreeRanges.from_used(0, 20, [1, 2, 3, 5, 6, 7, 8, 12])
    assert index.give_range(3, 7) == 4  # 3, 5, 6, 7; 4 was free
    assert runs(index) == [(0, 0), (3, 7), (9, 11), (13, 20)]
    assert index.give_range(8, 8) == 1  # adjacent on both sides: one run
    assert runs(index) == [(0, 0), (3, 11), (13, 20)]
    assert index.give_range(15, 99) == 0  # clipped; free already
    assert index.give_range(9, 4) == 0  # empty: nothing happens
    assert runs(index) == [(0, 0), (3, 11), (13, 20)]


def test_misuse_raises_value_error_naming_the_offset() -> None:
    index = FreeRanges.from_used(1, 14, [5])
    with pytest.raises(ValueError, match="5 is not free"):
        index.take(5)
    with pytest.raises(ValueError, match="6 is already free"):
        index.give(6)
    with pytest.raises(ValueError, match="15 is outside"):
        index.give(15)
    with pytest.raises(ValueError, match="0 is not free"):
        index.take(0)


def test_first_free_respects_the_limit() -> None:
    index = FreeRanges.from_used(1, 14, range(1, 10))
    assert index.first_free_at_or_after(1, 14) == 10
    assert index.first_free_at_or_after(1, 9) is None
    assert index.first_free_at_or_after(12, 14) == 12
    assert index.first_free_at_or_after(15, 20) is None


def test_equality_and_repr() -> None:
    a = FreeRanges.from_used(0, 100, range(0, 100, 2))
    b = FreeRanges(0, 100, free=False)
    for address in [*range(1, 100, 2), 100]:
        b.give(address)
    assert a == b
    assert a != FreeRanges(0, 100)
    assert a != FreeRanges.from_used(0, 101, range(0, 100, 2))
    assert "(50 runs)" in repr(a)
    with pytest.raises(TypeError):
        hash(a)
