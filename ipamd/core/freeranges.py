"""The free-range index of one subnet: which addresses are free, as coalesced runs.

Addresses are plain ints (offsets from the subnet's network address, so an IPv6
/64 stores small numbers). Free addresses are kept as sorted, disjoint,
non-adjacent runs `[start, end]` in two parallel lists. Memory grows with the
number of holes, never with the size of the subnet: an empty /64 is one run.

Rules this module keeps:
- Runs are sorted, disjoint and never touch (adjacent runs are merged), so the
  index of a given free set is unique and two indexes compare equal exactly when
  their free sets do.
- Lookups are binary searches, O(log n) in the number of runs. Splitting or
  merging a run inserts or deletes one list slot: a C memmove of pointers,
  measured in benchmarks/bench_allocator.py to cost microseconds even at a
  million runs, which beats a pure-Python balanced tree at every size we serve.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class FreeRanges:
    """Free addresses within the universe `[low, high]`."""

    __slots__ = ("_ends", "_starts", "high", "low")

    def __init__(self, low: int, high: int, *, free: bool = True) -> None:
        # REQUIRES: low <= high
        self.low = low
        self.high = high
        self._starts: list[int] = [low] if free else []
        self._ends: list[int] = [high] if free else []

    @classmethod
    def from_used(cls, low: int, high: int, used: Iterable[int]) -> FreeRanges:
        """Build the complement of `used` (any order, duplicates ignored) in one pass."""
        index = cls(low, high, free=False)
        cursor = low
        for address in sorted(set(used)):
            if address < low or address > high:
                continue
            if address > cursor:
                index._starts.append(cursor)
                index._ends.append(address - 1)
            cursor = address + 1
        if cursor <= high:
            index._starts.append(cursor)
            index._ends.append(high)
        return index

    def _run_containing(self, address: int) -> int:
        """Index of the run holding `address`, or -1."""
        i = bisect_right(self._starts, address) - 1
        if i >= 0 and self._ends[i] >= address:
            return i
        return -1

    def is_free(self, address: int) -> bool:
        return self._run_containing(address) >= 0

    def first_free_at_or_after(self, address: int, limit: int) -> int | None:
        """The lowest free address in `[address, limit]`, or None."""
        i = bisect_right(self._starts, address) - 1
        if i >= 0 and self._ends[i] >= address:
            candidate = address
        elif i + 1 < len(self._starts):
            candidate = self._starts[i + 1]
        else:
            return None
        return candidate if candidate <= limit else None

    def take(self, address: int) -> None:
        """Mark one free address used. REQUIRES: is_free(address)."""
        i = self._run_containing(address)
        if i < 0:
            raise ValueError(f"address offset {address} is not free")
        start, end = self._starts[i], self._ends[i]
        if start == end:
            del self._starts[i]
            del self._ends[i]
        elif address == start:
            self._starts[i] = address + 1
        elif address == end:
            self._ends[i] = address - 1
        else:
            self._ends[i] = address - 1
            self._starts.insert(i + 1, address + 1)
            self._ends.insert(i + 1, end)

    def take_range(self, first: int, last: int) -> None:
        """Mark every address in `[first, last]` used, free or not (exclusions)."""
        first, last = max(first, self.low), min(last, self.high)
        if first > last:
            return
        lo = bisect_right(self._ends, first - 1)  # first run that ends at or after `first`
        hi = bisect_right(self._starts, last)  # runs [lo, hi) may overlap
        keep_starts: list[int] = []
        keep_ends: list[int] = []
        for start, end in zip(self._starts[lo:hi], self._ends[lo:hi], strict=True):
            if start < first:
                keep_starts.append(start)
                keep_ends.append(first - 1)
            if end > last:
                keep_starts.append(last + 1)
                keep_ends.append(end)
        self._starts[lo:hi] = keep_starts
        self._ends[lo:hi] = keep_ends

    def give(self, address: int) -> None:
        """Mark one used address free again. REQUIRES: not is_free(address), in bounds."""
        if address < self.low or address > self.high:
            raise ValueError(f"address offset {address} is outside [{self.low}, {self.high}]")
        i = bisect_right(self._starts, address) - 1  # run before, or -1
        if i >= 0 and self._ends[i] >= address:
            raise ValueError(f"address offset {address} is already free")
        joins_left = i >= 0 and self._ends[i] == address - 1
        joins_right = i + 1 < len(self._starts) and self._starts[i + 1] == address + 1
        if joins_left and joins_right:
            self._ends[i] = self._ends[i + 1]
            del self._starts[i + 1]
            del self._ends[i + 1]
        elif joins_left:
            self._ends[i] = address
        elif joins_right:
            self._starts[i + 1] = address
        else:
            self._starts.insert(i + 1, address)
            self._ends.insert(i + 1, address)

    def count_free(self, first: int, last: int) -> int:
        """How many free addresses lie in `[first, last]`. O(runs in that span)."""
        if first > last:
            return 0  # an empty span; a run straddling it would count negatively
        lo = bisect_right(self._ends, first - 1)
        hi = bisect_right(self._starts, last)
        return sum(
            min(end, last) - max(start, first) + 1
            for start, end in zip(self._starts[lo:hi], self._ends[lo:hi], strict=True)
        )

    def runs(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    @property
    def run_count(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FreeRanges):
            return NotImplemented
        return (self.low, self.high, self._starts, self._ends) == (
            other.low,
            other.high,
            other._starts,
            other._ends,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}-{e}" for s, e in list(self.runs())[:8])
        more = "" if self.run_count <= 8 else f", ... ({self.run_count} runs)"
        return f"FreeRanges([{self.low}, {self.high}]: {shown}{more})"
