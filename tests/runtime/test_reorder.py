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
