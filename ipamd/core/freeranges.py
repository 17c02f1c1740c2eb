"""The free-range index of one subnet: which addresses are free, as coalesced runs.

Addresses are plain ints (offsets from the subnet's network address, so an IPv6
/64 stores small numbers). Free addresses are kept as sorted, disjoint,
non-adjacent runs in a `SortedDict` keyed by each run's LAST address
(`end -> start`). Memory grows with the number of holes, never with the size of
the subnet: an empty /64 is one run.

Why keyed by the end: dynamic allocation takes the first free address after
the cursor, which is the START of a run. Keyed by the end, that run keeps its
key and only its value changes, an O(1) dict update; keyed by the start, every
allocation deleted one sorted key and inserted another. And the run holding an
address is the first run ending at or after it: one sorted search, which a
remembered hint (the end of the run last found) usually skips, since
consecutive allocations take from the same run.

Rules this module keeps:
- Runs are sorted, disjoint and never touch (adjacent runs are merged), so the
  index of a given free set is unique and two indexes compare equal exactly when
  their free sets do.
- Every operation on one address is O(log n) in the number of runs: at most one
  sorted search and two inserts or deletes.
  (A plain pair of lists would memmove up to a million pointers per split,
  hundreds of microseconds; sortedcontainers' chunked lists keep that bounded,
  which benchmarks/bench_allocator.py measures.)
- The hint is only a guess: it is checked against the runs before it is used,
  so a stale hint costs a search, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict


class FreeRanges:
    """Free addresses within the universe `[low, high]`."""

    __slots__ = ("_hint", "_runs", "high", "low")

    def __init__(self, low: int, high: int, *, free: bool = True) -> None:
        # REQUIRES: low <= high
        self.low = low
        self.high = high
        self._runs: SortedDict[int, int] = SortedDict({high: low} if free else {})
        # The end of the run a search last found (maybe gone since).
        self._hint = high

    @classmethod
    def from_used(cls, low: int, high: int, used: Iterable[int]) -> FreeRanges:
        """Build the complement of `used` (any order, duplicates ignored) in one pass."""
        runs: list[tuple[int, int]] = []  # (end, start)
        cursor = low
        for address in sorted(set(used)):
            if address < low or address > high:
                continue
            if address > cursor:
                runs.append((address - 1, cursor))
            cursor = address + 1
        if cursor <= high:
            runs.append((high, cursor))
        index = cls(low, high, free=False)
        index._runs.update(runs)
        return index

    def _first_run_ending_at_or_after(self, address: int) -> tuple[int, int] | None:
        """The run holding `address`, else the first run after it; as (start, end)."""
        end = self._hint
        start = self._runs.get(end)
        if start is not None and start <= address <= end:
            return start, end
        for end in self._runs.irange(minimum=address):
            self._hint = end
            return self._runs[end], end
        return None

    def _run_containing(self, address: int) -> tuple[int, int] | None:
        run = self._first_run_ending_at_or_after(address)
        return run if run is not None and run[0] <= address else None

    def is_free(self, address: int) -> bool:
        return self._run_containing(address) is not None

    def first_free_at_or_after(self, address: int, limit: int) -> int | None:
        """The lowest free address in `[address, limit]`, or None."""
        run = self._first_run_ending_at_or_after(address)
        if run is None:
            return None
        candidate = max(run[0], address)
        return candidate if candidate <= limit else None

    def take_first_at_or_after(self, address: int, limit: int) -> int | None:
        """Take and return the lowest free address in `[address, limit]`, or None.

        `first_free_at_or_after` then `take`, with one search instead of two."""
        run = self._first_run_ending_at_or_after(address)
        if run is None:
            return None
        start, end = run
        candidate = max(start, address)
        if candidate > limit:
            return None
        self._take_from(start, end, candidate)
        return candidate

    def take(self, address: int) -> None:
        """Mark one free address used. REQUIRES: is_free(address)."""
        run = self._run_containing(address)
        if run is None:
            raise ValueError(f"address offset {address} is not free")
        self._take_from(run[0], run[1], address)

    def _take_from(self, start: int, end: int, address: int) -> None:
        """Take `address` out of the run `[start, end]` that holds it."""
        runs = self._runs
        if address == start:
            if address == end:
                del runs[end]
            else:
                runs[end] = address + 1  # the common case: same key, new start
        elif address == end:
            del runs[end]
            runs[address - 1] = start
        else:
            runs[address - 1] = start
            runs[end] = address + 1

    def take_range(self, first: int, last: int) -> None:
        """Mark every address in `[first, last]` used, free or not (exclusions)."""
        first, last = max(first, self.low), min(last, self.high)
        if first > last:
            return
        overlapping: list[tuple[int, int]] = []
        for end in self._runs.irange(minimum=first):
            start = self._runs[end]
            if start > last:
                break
            overlapping.append((start, end))
        for start, end in overlapping:
            del self._runs[end]
            if start < first:
                self._runs[first - 1] = start
            if end > last:
                self._runs[end] = last + 1

    def give(self, address: int) -> None:
        """Mark one used address free again. REQUIRES: not is_free(address), in bounds."""
        if not self.give_if_used(address):
            raise ValueError(f"address offset {address} is already free")

    def give_if_used(self, address: int) -> bool:
        """`give(address)` if it is used, with one search; False if it is free already.
        REQUIRES: in bounds."""
        if address < self.low or address > self.high:
            raise ValueError(f"address offset {address} is outside [{self.low}, {self.high}]")
        right = self._first_run_ending_at_or_after(address)
        if right is not None and right[0] <= address:
            return False
        runs = self._runs
        left_start = runs.pop(address - 1, None)  # a run ending just before
        start = address if left_start is None else left_start
        if right is not None and right[0] == address + 1:
            runs[right[1]] = start  # joins the run after: its key stays
        else:
            runs[address] = start
        return True

    def give_range(self, first: int, last: int) -> int:
        """Mark every address in `[first, last]` free, used or not (clipped to the
        universe); how many of them were used. One sorted search and one insert,
        however many addresses: cluster mode opens a whole claimed block at once."""
        first, last = max(first, self.low), min(last, self.high)
        if first > last:
            return 0
        runs = self._runs
        start, end, freed = first, last, last - first + 1
        touching: list[int] = []  # runs overlapping or adjacent to the span merge into it
        for run_end in runs.irange(minimum=first - 1):
            run_start = runs[run_end]
            if run_start > last + 1:
                break
            touching.append(run_end)
            start, end = min(start, run_start), max(end, run_end)
            freed -= max(0, min(run_end, last) - max(run_start, first) + 1)
        for run_end in touching:
            del runs[run_end]
        runs[end] = start
        return freed

    def count_free(self, first: int, last: int) -> int:
        """How many free addresses lie in `[first, last]`. O(runs in that span)."""
        if first > last:
            return 0
        total = 0
        for end in self._runs.irange(minimum=first):
            start = self._runs[end]
            if start > last:
                break
            total += min(end, last) - max(start, first) + 1
        return total

    def runs(self) -> Iterator[tuple[int, int]]:
        """Every run as (start, end), in address order."""
        return ((start, end) for end, start in self._runs.items())

    @property
    def run_count(self) -> int:
        return len(self._runs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FreeRanges):
            return NotImplemented
        return (self.low, self.high, list(self._runs.items())) == (
            other.low,
            other.high,
            list(other._runs.items()),
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}-{e}" for e, s in list(self._runs.items()[:8]))
        more = "" if self.run_count <= 8 else f", ... ({self.run_count} runs)"
        return f"FreeRanges([{self.low}, {self.high}]: {shown}{more})"
