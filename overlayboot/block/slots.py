"""Which data slots of the store are free: free slots, the end of the used ones, and the
slots that become free only once the next commit is durable.

A slot that a chunk leaves (its new version went to another slot) is still named by the
committed index on disk until the next commit: it is *pending*, and reused only after
that commit. At open, every slot no committed index entry names is free, and the store is
truncated after the last named one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class Slots:
    """Slot allocation: the lowest free slot first, else a new one at the end."""

    def __init__(self, used: Iterable[int]) -> None:
        taken = set(used)
        self.end = max(taken) + 1 if taken else 0
        self.free = [s for s in range(self.end) if s not in taken]
        heapq.heapify(self.free)
        self.pending: list[int] = []

    def take(self) -> int:
        if self.free:
            return heapq.heappop(self.free)
        self.end += 1
        return self.end - 1

    def give_back(self, slot: int) -> None:
        """A slot taken for a write that failed: nothing names it."""
        if slot == self.end - 1:
            self.end -= 1
        else:
            heapq.heappush(self.free, slot)

    def leave(self, slot: int) -> None:
        """A chunk moved out of ``slot``: free after the next commit."""
        self.pending.append(slot)

    def commit_done(self) -> None:
        for slot in self.pending:
            heapq.heappush(self.free, slot)
        self.pending.clear()

    @property
    def in_use(self) -> int:
        return self.end - len(self.free) - len(self.pending)
