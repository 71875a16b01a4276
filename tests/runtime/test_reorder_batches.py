"""ReorderBuffer.push_many on sorted batches (its shortcut) and on any others: what pushing one by one gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent
from aiops.runtime.reorder import ReorderBuffer

# A batch starts somewhere around the newest time so far (behind it: late or out of order;
# ahead of it: a jump) and is either sorted, as a Kafka fetch is, or as generated.
BATCHES = st.lists(
    st.tuples(st.floats(min_value=-30, max_value=30), st.lists(st.floats(min_value=0, max_value=8), max_size=30),
              st.booleans()),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(BATCHES, st.sampled_from([0.0, 5.0, 20.0]), st.booleans())
def test_push_many_is_push_in_turn(batches: list[tuple[float, list[float], bool]], lateness: float,
                                   with_advance: bool) -> None:
    one_rejects, many_rejects = Rejects(log_examples=False), Rejects(log_examples=False)
    one = ReorderBuffer(lateness_s=lateness, rejects=one_rejects)
    many = ReorderBuffer(lateness_s=lateness, rejects=many_rejects)
    newest, n = 100.0, 0
    for start, offsets, in_order in batches:
        stamps = [round(newest + start + o) for o in offsets]  # rounded: equal times are common
        if in_order:
            stamps.sort()
        batch = [ChangeEvent(ts=float(ts), type="deploy", service=str(n + k)) for k, ts in enumerate(stamps)]
        n += len(batch)
        newest = max([newest, *stamps])
        assert many.push_many(batch) == [r for x in batch for r in one.push(x)]
        assert many.watermark == one.watermark and many.pending() == one.pending()
        if with_advance and n % 3 == 0:
            assert many.advance(newest) == one.advance(newest)
    assert many.drain() == one.drain()
    assert many_rejects.by_reason() == one_rejects.by_reason()


def test_a_sorted_batch_is_released_up_to_its_newest_time_less_the_lateness() -> None:
    buf = ReorderBuffer(lateness_s=10, rejects=Rejects(log_examples=False))
    batch = [ChangeEvent(ts=float(t), type="deploy", service="a") for t in (0, 5, 5, 12, 30)]
    assert [r.ts for r in buf.push_many(batch)] == [0, 5, 5, 12]
    assert buf.watermark == 20 and len(buf) == 1
    late = [ChangeEvent(ts=15.0, type="deploy", service="b"), ChangeEvent(ts=40.0, type="deploy", service="c")]
    assert [r.ts for r in buf.push_many(late)] == [30]  # 15 is behind the watermark: rejected
    assert buf.push_many(iter([])) == []
