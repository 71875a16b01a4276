"""The reorder buffer: bounded disorder is sorted, late records are counted, not processed."""

from __future__ import annotations

import random

from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent
from aiops.runtime.reorder import ReorderBuffer


def ev(ts: float) -> ChangeEvent:
    return ChangeEvent(ts=ts, type="deploy", service="a")


def test_disorder_within_lateness_comes_out_sorted() -> None:
    rng = random.Random(7)
    stamps = [i + rng.uniform(-4, 4) for i in range(1000)]
    rejects = Rejects(log_examples=False)
    buf = ReorderBuffer(lateness_s=10, rejects=rejects)
    out = [r.ts for ts in stamps for r in buf.push(ev(ts))] + [r.ts for r in buf.drain()]
    assert out == sorted(stamps)
    assert rejects.total == 0


def test_late_records_are_counted_and_skipped() -> None:
    rejects = Rejects(log_examples=False)
    buf = ReorderBuffer(lateness_s=5, rejects=rejects)
    released = buf.push(ev(100)) + buf.push(ev(200))
    assert [r.ts for r in released] == [100]
    assert buf.push(ev(150)) == []  # older than what was released (195)
    assert rejects.by_reason() == {("runtime", "late_record"): 1}
    assert [r.ts for r in buf.drain()] == [200]


def test_equal_timestamps_keep_arrival_order_and_advance_releases_idle_data() -> None:
    buf = ReorderBuffer(lateness_s=30, rejects=Rejects(log_examples=False))
    a, b = ChangeEvent(10, "deploy", "a"), ChangeEvent(10, "deploy", "b")
    assert buf.push(a) == [] and buf.push(b) == []
    assert buf.advance(35) == []
    assert buf.advance(40) == [a, b]
    assert buf.watermark == 10


class HeapReference:
    """The buffer as it was before the in-order fast path: one heap of (ts, arrival, record)."""

    def __init__(self, lateness_s: float) -> None:
        import heapq
        import itertools

        self._heapq = heapq
        self.lateness_s = lateness_s
        self.heap: list[tuple[float, int, ChangeEvent]] = []
        self.seq = itertools.count()
        self.max_ts = float("-inf")
        self.released = float("-inf")
        self.late = 0

    def push(self, record: ChangeEvent) -> list[ChangeEvent]:
        if record.ts < self.released:
            self.late += 1
            return []
        self._heapq.heappush(self.heap, (record.ts, next(self.seq), record))
        if record.ts > self.max_ts:
            self.max_ts = record.ts
            return self.release(record.ts - self.lateness_s)
        return []

    def advance(self, event_ts: float) -> list[ChangeEvent]:
        self.max_ts = max(self.max_ts, event_ts)
        return self.release(self.max_ts - self.lateness_s)

    def release(self, upto: float) -> list[ChangeEvent]:
        out = []
        while self.heap and self.heap[0][0] <= upto:
            out.append(self._heapq.heappop(self.heap)[2])
        if upto > self.released:
            self.released = upto if upto != float("inf") else (out[-1].ts if out else self.released)
        return out


def _stream(seed: int, n: int) -> list[tuple[str, float]]:
    """Mostly in-order records with ties, some out of order (within and beyond lateness), some idle advances."""
    rng = random.Random(seed)
    out: list[tuple[str, float]] = []
    t = 0.0
    for _ in range(n):
        roll = rng.random()
        if roll < 0.5:
            t += rng.choice([0.0, 0.0, 1.0, 2.5])  # many equal timestamps: arrival order must decide
            out.append(("push", t))
        elif roll < 0.85:
            out.append(("push", t - rng.choice([0.0, 1.0, 2.5, 4.0, 7.0, 12.0])))  # late ones are rejected
        elif roll < 0.95:
            out.append(("push", float(rng.randint(0, int(t) + 1))))
        else:
            out.append(("advance", t + rng.uniform(0, 15)))
    return out


def test_in_order_fast_path_mixed_with_out_of_order_records_releases_what_one_heap_would() -> None:
    for seed in range(20):
        rejects = Rejects(log_examples=False)
        buf, ref = ReorderBuffer(lateness_s=10, rejects=rejects), HeapReference(10)
        for i, (op, ts) in enumerate(_stream(seed, 3000)):
            if op == "push":
                rec = ChangeEvent(ts=ts, type="deploy", service=str(i))  # distinct records: order is checked
                got, want = buf.push(rec), ref.push(rec)
            else:
                got, want = buf.advance(ts), ref.advance(ts)
            assert got == want, (seed, i)
            assert buf.watermark == ref.released and len(buf) == len(ref.heap)
        assert buf.drain() == ref.release(float("inf"))
        assert rejects.total == ref.late > 0


def test_pending_records_survive_a_restore_mid_stream_through_the_checkpoint_interface() -> None:
    # aiops.state.pipeline_state saves ``_heap`` sorted by (ts, arrival) and rebuilds a new buffer
    # from that list; the restored buffer must release exactly what the uninterrupted one does.
    for seed in range(10):
        stream = _stream(100 + seed, 2000)
        cut = random.Random(seed).randrange(200, 1800)
        one = ReorderBuffer(lateness_s=10, rejects=Rejects(log_examples=False))
        two = ReorderBuffer(lateness_s=10, rejects=Rejects(log_examples=False))
        out_one: list[ChangeEvent] = []
        out_two: list[ChangeEvent] = []
        for i, (op, ts) in enumerate(stream):
            if i >= cut and two._late and len(two._run) > two._head:  # both containers hold records
                cut = len(stream)
                saved = sorted(two._heap, key=lambda e: (e[0], e[1]))
                assert [e[2] for e in saved] == two.pending() and len(saved) == len(two)
                restored = ReorderBuffer(lateness_s=10, rejects=Rejects(log_examples=False))
                restored._heap = [(r.ts, k, r) for k, (_, _, r) in enumerate(saved)]
                restored._max_ts, restored._released = two._max_ts, two._released
                two = restored
            rec = ChangeEvent(ts=ts, type="deploy", service=str(i))
            for buf, out in ((one, out_one), (two, out_two)):
                out.extend(buf.push(rec) if op == "push" else buf.advance(ts))
        assert cut == len(stream), "the stream never had both in-order and out-of-order records pending"
        assert out_one + one.drain() == out_two + two.drain()


def test_push_many_releases_what_pushing_one_by_one_does() -> None:
    for seed in range(10):
        stream = [ChangeEvent(ts=ts, type="deploy", service=str(i))
                  for i, (op, ts) in enumerate(_stream(200 + seed, 2000)) if op == "push"]
        one_rejects, many_rejects = Rejects(log_examples=False), Rejects(log_examples=False)
        one = ReorderBuffer(lateness_s=10, rejects=one_rejects)
        many = ReorderBuffer(lateness_s=10, rejects=many_rejects)
        rng = random.Random(seed)
        i = 0
        while i < len(stream):
            batch = stream[i:i + rng.choice([1, 7, 100, 500])]
            i += len(batch)
            assert many.push_many(batch) == [r for x in batch for r in one.push(x)]
            assert many.watermark == one.watermark and len(many) == len(one)
        assert many.drain() == one.drain()
        assert many_rejects.by_reason() == one_rejects.by_reason() and many_rejects.total > 0
