"""``SlotTable``: which image slots of a continuous batch are taken, handed out as contiguous runs.

A request of n images takes n consecutive slots (first fit, lowest first), so its cache rows form one contiguous
range that its own prefill writes through a view; it frees them when it leaves. Lowest-first placement keeps the
occupied slots at the front, which is what a bucketed step (a prefix of the slots) computes.
"""

from __future__ import annotations


class SlotTable:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"SlotTable: a batch needs at least one slot, got {size}")
        self.size = size
        self._owner: list[object | None] = [None] * size

    def find(self, count: int) -> int | None:
        """The first slot of the lowest run of ``count`` free slots, or None."""
        run = 0
        for s, owner in enumerate(self._owner):
            run = run + 1 if owner is None else 0
            if run == count:
                return s - count + 1
        return None

    def take(self, first: int, count: int, owner: object) -> None:
        if any(o is not None for o in self._owner[first:first + count]) or first + count > self.size:
            raise ValueError(f"SlotTable.take: slots {first}..{first + count - 1} are not all free")
        self._owner[first:first + count] = [owner] * count

    def free(self, first: int, count: int) -> None:
        self._owner[first:first + count] = [None] * count

    @property
    def used(self) -> int:
        return sum(o is not None for o in self._owner)

    def end(self) -> int:
        """One past the highest occupied slot (0 when empty)."""
        for s in range(self.size - 1, -1, -1):
            if self._owner[s] is not None:
                return s + 1
        return 0

    def bucket(self) -> int:
        """The smallest power of two covering the occupied slots, at most ``size``."""
        need, k = max(self.end(), 1), 1
        while k < need:
            k *= 2
        return min(k, self.size)
