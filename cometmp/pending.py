"""What a consumer delivered from one stream and its group has not acknowledged.

Who may call: cometmp.consumer only; not thread safe (one Flight per Cursor of one
Consumer). In-process bookkeeping beside the durable window (cometmp.window, FORMAT §7.2):

* ``runs``: the delivered ranges ``[lo, hi)`` with the monotonic time they were delivered,
  oldest first: one tuple per stream per read, so the in-order path (read, then
  ``ack(batch)``) costs one append and one pop (I43). ``pending()`` and ``ack_wait``
  (I47) are answered from them.
* ``acked``: entries acknowledged beyond the group's committed offset (the window's bits).
* ``counts``: deliveries so far of entries delivered more than once, or recovered from a
  dead reader (the window's counts; ``recover_hi``: entries below it, from the window's
  ``delivered``, were delivered before this consumer took the stream, I46).
* ``due``: entries to deliver again (nack, ack_wait) with the monotonic time they are due,
  and ``errors``: the last error given for an entry (nack(error=), process()).

``dirty`` is True while the durable window holds anything (acked bits or counts): an ack
must then go through it; while it is False an in-order ack is the plain cumulative ack.
"""

from __future__ import annotations

from collections import deque


class Flight:
    __slots__ = ("runs", "acked", "counts", "due", "errors", "last", "recover_hi", "dirty",
                 "marked", "loaded")

    def __init__(self) -> None:
        self.runs: deque[tuple[int, int, float]] = deque()
        self.acked: set[int] = set()
        self.counts: dict[int, int] = {}
        self.due: dict[int, float] = {}
        self.errors: dict[int, str] = {}
        self.last: dict[int, float] = {}   # redelivered entry -> when (later than its run)
        self.recover_hi = 0
        self.dirty = False
        self.marked = 0        # the window's ``delivered`` as this process last stored it
        self.loaded = False    # the window was read for the current (slot, resets)

    def deliveries(self, e: int) -> int:
        """Deliveries of entry ``e`` so far (0: never delivered, as far as is known)."""
        n = self.counts.get(e, 0)
        if n == 0 and e < self.recover_hi:
            return 1
        return n

    def trim(self, prefix: int) -> None:
        """Forget what lies below the committed offset ``prefix`` (all acked)."""
        runs = self.runs
        while runs and runs[0][1] <= prefix:
            runs.popleft()
        acked = self.acked
        if acked and min(acked) < prefix:   # the caller moved the prefix over them
            acked.difference_update([e for e in acked if e < prefix])
        for d in (self.counts, self.due, self.errors, self.last):
            if d:
                for e in [e for e in d if e < prefix]:
                    del d[e]
        self.dirty = bool(self.acked or self.counts)

    def unacked(self, prefix: int) -> list[tuple[int, float]]:
        """(entry, delivered at) of every delivered entry at or above ``prefix`` that is
        not acknowledged, oldest delivery first, each entry once."""
        seen: dict[int, float] = {}
        for lo, hi, t in self.runs:
            for e in range(max(lo, prefix), hi):
                if e not in self.acked:
                    seen[e] = self.last.get(e, t)
        for e in self.due:
            if e >= prefix and e not in self.acked and e not in seen:
                seen[e] = self.last.get(e, 0.0)
        return sorted(seen.items(), key=lambda x: (x[1], x[0]))

    def expire(self, prefix: int, now: float, ack_wait: float) -> None:
        """I47: every delivered, unacked entry delivered ``ack_wait`` seconds ago or more
        becomes due now (read() delivers it again)."""
        runs = self.runs
        while runs and runs[0][2] + ack_wait <= now:
            lo, hi, t = runs.popleft()
            for e in range(max(lo, prefix), hi):
                if e in self.acked or e in self.due:
                    continue
                if self.last.get(e, t) + ack_wait > now:
                    continue   # delivered again since: a later run holds it
                self.due[e] = now
                self.errors.setdefault(e, f"not acknowledged within ack_wait={ack_wait:g} s")

    def oldest_run(self) -> float | None:
        return self.runs[0][2] if self.runs else None
