"""Bounded-lateness reorder buffer: releases records in event-time order behind a watermark.

The watermark trails the newest timestamp seen by ``lateness_s``. A record older than what
was already released is late: it is counted and skipped, because processing it would break
the event-time order every stage relies on (and so replay determinism).

Release order is ``(ts, arrival)``: equal timestamps come out in the order they arrived.
Most records arrive in order (a Kafka partition, a scrape, a replay file), so those are
appended to a sorted run and released by slicing it; only a record older than the newest one
already buffered goes to a heap, and the two are merged on release. The order is exactly what
one heap of ``(ts, arrival, record)`` would give, at a fraction of its per-record cost.

>>> from aiops.observe.rejects import Rejects
>>> from aiops.records import ChangeEvent
>>> buf = ReorderBuffer(lateness_s=10, rejects=Rejects(log_examples=False))
>>> ev = lambda ts: ChangeEvent(ts=ts, type="deploy", service="a")
>>> [r.ts for r in buf.push(ev(5))], [r.ts for r in buf.push(ev(3))], [r.ts for r in buf.push(ev(15))]
([], [], [3, 5])
>>> buf.push(ev(2)), [r.ts for r in buf.drain()]
([], [15])
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections.abc import Iterable
from itertools import islice
from operator import attrgetter, le

from aiops.observe.rejects import Rejects
from aiops.records import Record

_INF = float("inf")
_ts = attrgetter("ts")


class ReorderBuffer:
    """Holds records until the watermark passes them, then releases them sorted by ``(ts, arrival)``.

    Two containers keep the pending records: ``_run``, records that arrived in order (each at or
    after the newest one appended before it), sorted by construction; and ``_late``, a heap of
    ``(ts, arrival, record)`` for the others. A record in the run never ties with an earlier-arrived
    record in the heap: a record goes to the heap only when its time is below the run's newest,
    so every run record of the same time arrived before it. On equal times the run therefore
    goes first, which is arrival order.
    """

    def __init__(self, lateness_s: float, rejects: Rejects) -> None:
        self.lateness_s = lateness_s
        self._rejects = rejects
        self._run: list[Record] = []  # in-order arrivals; ``_run[_head:]`` are pending
        self._head = 0
        self._tail_ts = -_INF  # time of the newest record appended to the run
        self._late: list[tuple[float, int, Record]] = []  # out-of-order arrivals, a heap
        self._seq = itertools.count()  # ties in the heap keep arrival order, so equal timestamps replay stably
        self._max_ts = -_INF
        self._released = -_INF  # everything at or before this has been released

    @property
    def watermark(self) -> float:
        """Event time up to which every record has been released (or will be dropped as late)."""
        return self._released

    def __len__(self) -> int:
        return len(self._run) - self._head + len(self._late)

    def push(self, record: Record) -> list[Record]:
        """Accept one record; return the records the watermark now releases, oldest first."""
        ts = record.ts
        if ts < self._released:
            self._rejects.reject("runtime", "late_record", detail=f"{type(record).__name__} at {ts}, "
                                 f"watermark {self._released}")
            return []
        if ts >= self._tail_ts:
            self._run.append(record)
            self._tail_ts = ts
        elif self._head == len(self._run) and not self._late:  # nothing pending to order against
            self._run.append(record)
            self._tail_ts = ts
        else:
            heapq.heappush(self._late, (ts, next(self._seq), record))
        if ts > self._max_ts:
            self._max_ts = ts
            return self._release(ts - self.lateness_s)
        return []

    def push_many(self, records: Iterable[Record]) -> list[Record]:
        """:meth:`push` each record in turn; return everything released, in order, as one list.

        The same records come out in the same order as from the pushes one by one (what the
        runtime then does with them depends only on that sequence), for one call per batch.
        """
        if not isinstance(records, list):
            records = list(records)
        if not records:
            return []
        run = self._run
        lateness = self.lateness_s
        # The usual batch (a Kafka fetch, sorted by the source) is in order and not late: every
        # record would join the run, and the releases at each new newest time would together be
        # the one release at the batch's newest, so that is all this does. (With no lateness a
        # record equal to the newest would wait for the next newer one: one by one, then.)
        first = records[0].ts
        if (lateness > 0 and first >= self._released
                and (first >= self._tail_ts or (self._head == len(run) and not self._late))):
            stamps = [r.ts for r in records]
            if all(map(le, stamps, islice(stamps, 1, None))):
                run += records
                newest = stamps[-1]
                self._tail_ts = newest
                if newest > self._max_ts:
                    self._max_ts = newest
                    return self._release(newest - lateness)
                return []
        out: list[Record] = []
        for record in records:
            ts = record.ts
            if ts < self._released:
                self._rejects.reject("runtime", "late_record", detail=f"{type(record).__name__} at {ts}, "
                                     f"watermark {self._released}")
                continue
            if ts >= self._tail_ts or (self._head == len(run) and not self._late):
                run.append(record)
                self._tail_ts = ts
            else:
                heapq.heappush(self._late, (ts, next(self._seq), record))
            if ts > self._max_ts:
                self._max_ts = ts
                released = self._release(ts - lateness)
                if released:
                    out += released
        return out

    def advance(self, event_ts: float) -> list[Record]:
        """Move the watermark to ``event_ts - lateness`` although no record arrived (idle sources)."""
        if event_ts > self._max_ts:
            self._max_ts = event_ts
        return self._release(self._max_ts - self.lateness_s)

    def drain(self) -> list[Record]:
        """Release everything (end of a replay, or shutdown)."""
        return self._release(_INF)

    def pending(self) -> list[Record]:
        """The records not yet released, in the order they will be released (for checkpoints)."""
        late = sorted(self._late, key=lambda e: (e[0], e[1]))
        run = self._run[self._head:]
        out: list[Record] = []
        i = j = 0
        while i < len(run) and j < len(late):
            if run[i].ts <= late[j][0]:
                out.append(run[i])
                i += 1
            else:
                out.append(late[j][2])
                j += 1
        out.extend(run[i:])
        out.extend(e[2] for e in late[j:])
        return out

    # ``aiops.state.pipeline_state`` reads and rebuilds the pending records as ``_heap``, a list of
    # ``(ts, arrival, record)`` whose sort is the release order; this keeps that working.
    @property
    def _heap(self) -> list[tuple[float, int, Record]]:
        return [(r.ts, i, r) for i, r in enumerate(self.pending())]

    @_heap.setter
    def _heap(self, entries: list[tuple[float, int, Record]]) -> None:
        records = [e[2] for e in sorted(entries, key=lambda e: (e[0], e[1]))]
        self._run, self._head, self._late = records, 0, []
        self._tail_ts = records[-1].ts if records else -_INF

    def _release(self, upto: float) -> list[Record]:
        run, head = self._run, self._head
        if self._late:
            out = self._merge(upto)
        elif head < len(run) and run[head].ts <= upto:
            end = len(run) if upto == _INF else bisect_right(run, upto, head, len(run), key=_ts)
            out = run[head:end]
            self._head = end
        else:
            out = []
        head = self._head
        if head == len(run):
            run.clear()
            self._head = 0
        elif head > 1024 and head * 2 > len(run):  # drop the released prefix now and then, not per record
            del run[:head]
            self._head = 0
        if upto > self._released:
            self._released = upto if upto != _INF else (out[-1].ts if out else self._released)
        return out

    def _merge(self, upto: float) -> list[Record]:
        out: list[Record] = []
        run, head, late = self._run, self._head, self._late
        n = len(run)
        while True:
            if head < n:
                ts = run[head].ts
                if late and late[0][0] < ts:
                    if late[0][0] > upto:
                        break
                    out.append(heapq.heappop(late)[2])
                elif ts <= upto:
                    out.append(run[head])
                    head += 1
                else:
                    break
            elif late and late[0][0] <= upto:
                out.append(heapq.heappop(late)[2])
            else:
                break
        self._head = head
        return out
