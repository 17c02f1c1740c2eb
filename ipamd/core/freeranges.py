"""The free-range index of one subnet: which addresses are free, as coalesced runs.

Addresses are plain ints (offsets from the subnet's network address, so an IPv6
/64 stores small numbers). Free addresses are kept as sorted, disjoint,
non-adjacent runs `start -> end` in a `SortedDict`. Memory grows with the
number of holes, never with the size of the subnet: an empty /64 is one run.

Rules this module keeps:
- Runs are sorted, disjoint and never touch (adjacent runs are merged), so the
  index of a given free set is unique and two indexes compare equal exactly when
  their free sets do.
- Every operation on one address is O(log n) in the number of runs: a lookup
  of the run at or before an address, and at most two inserts or deletes.
  (A plain pair of lists would memmove up to a million pointers per split,
  hundreds of microseconds; sortedcontainers' chunked lists keep that bounded,
  which benchmarks/bench_allocator.py measures.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict


class FreeRanges:
    """Free addresses within the universe `[low, high]`."""

    __slots__ = ("_runs", "high", "low")

    def __init__(self, low: int, high: int, *, free: bool = True) -> None:
        # REQUIRES: low <= high
        self.low = low
        self.high = high
        self._runs: SortedDict[int, int] = SortedDict({low: high} if free else {})

    @classmethod
    def from_used(cls, low: int, high: int, used: Iterable[int]) -> FreeRanges:
        """Build the complement of `used` (any order, duplicates ignored) in one pass."""
        runs: list[tuple[int, int]] = []
        cursor = low
        for address in sorted(set(used)):
            if address < low or address > high:
                continue
            if address > cursor:
                runs.append((cursor, address - 1))
            cursor = address + 1
        if cursor <= high:
            runs.append((cursor, high))
        index = cls(low, high, free=False)
        index._runs.update(runs)
        return index

    def _run_at_or_before(self, address: int) -> tuple[int, int] | None:
        for start in self._runs.irange(maximum=address, reverse=True):
            return start, self._runs[start]
        return None

    def _run_after(self, address: int) -> tuple[int, int] | None:
        for start in self._runs.irange(minimum=address, inclusive=(False, True)):
            return start, self._runs[start]
        return None

    def _run_containing(self, address: int) -> tuple[int, int] | None:
        # Dynamic allocation asks about the address after its cursor, which
        # is usually where a run starts: a dict lookup, not a sorted search.
        end = self._runs.get(address)
        if end is not None:
            return address, end
        run = self._run_at_or_before(address)
        return run if run is not None and run[1] >= address else None

    def is_free(self, address: int) -> bool:
        return self._run_containing(address) is not None

    def first_free_at_or_after(self, address: int, limit: int) -> int | None:
        """The lowest free address in `[address, limit]`, or None."""
        if self._run_containing(address) is not None:
            candidate = address
        else:
            after = self._run_after(address)
            if after is None:
                return None
            candidate = after[0]
        return candidate if candidate <= limit else None

    def take(self, address: int) -> None:
        """Mark one free address used. REQUIRES: is_free(address)."""
        run = self._run_containing(address)
        if run is None:
            raise ValueError(f"address offset {address} is not free")
        start, end = run
        if address == start:
            del self._runs[start]
        else:
            self._runs[start] = address - 1
        if address < end:
            self._runs[address + 1] = end

    def take_range(self, first: int, last: int) -> None:
        """Mark every address in `[first, last]` used, free or not (exclusions)."""
        first, last = max(first, self.low), min(last, self.high)
        if first > last:
            return
        overlapping = list(self._runs.irange(minimum=first, maximum=last))
        before = self._run_at_or_before(first)
        if before is not None and before[0] < first and before[1] >= first:
            overlapping.insert(0, before[0])
        for start in overlapping:
            end = self._runs.pop(start)
            if start < first:
                self._runs[start] = first - 1
            if end > last:
                self._runs[last + 1] = end

    def give(self, address: int) -> None:
        """Mark one used address free again. REQUIRES: not is_free(address), in bounds."""
        if address < self.low or address > self.high:
            raise ValueError(f"address offset {address} is outside [{self.low}, {self.high}]")
        left = self._run_at_or_before(address)
        if left is not None and left[1] >= address:
            raise ValueError(f"address offset {address} is already free")
        right_end = self._runs.pop(address + 1, None)  # a run starting just after
        end = address if right_end is None else right_end
        if left is not None and left[1] == address - 1:
            self._runs[left[0]] = end
        else:
            self._runs[address] = end

    def count_free(self, first: int, last: int) -> int:
        """How many free addresses lie in `[first, last]`. O(runs in that span)."""
        if first > last:
            return 0
        total = 0
        before = self._run_at_or_before(first)
        if before is not None and before[0] < first:
            total += max(0, min(before[1], last) - first + 1)
        for start in self._runs.irange(minimum=first, maximum=last):
            total += min(self._runs[start], last) - start + 1
        return total

    def runs(self) -> Iterator[tuple[int, int]]:
        return iter(self._runs.items())

    @property
    def run_count(self) -> int:
        return len(self._runs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FreeRanges):
            return NotImplemented
        return (self.low, self.high, list(self.runs())) == (
            other.low,
            other.high,
            list(other.runs()),
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}-{e}" for s, e in list(self._runs.items()[:8]))
        more = "" if self.run_count <= 8 else f", ... ({self.run_count} runs)"
        return f"FreeRanges([{self.low}, {self.high}]: {shown}{more})"
