"""The pure core of the Kafka changelog backend: which value a restore sees, whatever the record order."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from aiops.state.kafka import ChangelogReader, Manifest, chunk_key, plan_records

KEY = "g/t-0"


def _read(records: list[tuple[str, bytes | None]], keys: list[str] | None = None) -> ChangelogReader:
    r = ChangelogReader(keys)
    for offset, (k, v) in enumerate(records):
        r.add(k.encode(), v, offset)
    return r


def test_torn_write_after_a_good_one_is_ignored_and_reported_as_garbage() -> None:
    good = plan_records(KEY, b"a" * 30, 8, "g1")
    torn = plan_records(KEY, b"b" * 30, 8, "g2")[:2]  # two chunks, no manifest
    r = _read(good + torn)
    assert r.finish()[KEY].data == b"a" * 30
    assert r.garbage(KEY, r.finish()[KEY].chunk_keys) == {k for k, _ in torn}


def test_missing_and_damaged_chunks_are_errors_not_values() -> None:
    recs = plan_records(KEY, b"c" * 30, 8, "g1")
    assert _read(recs[:1] + recs[2:]).finish()[KEY].error.reason == "missing_chunks"  # type: ignore[union-attr]
    bad = [(k, v.replace(b"c", b"d", 1)) if k == chunk_key(KEY, "g1", 1) else (k, v) for k, v in recs]
    assert _read(bad).finish()[KEY].error.reason == "corrupt_data"  # type: ignore[union-attr]
    assert _read([(KEY, b"aiops-changelog-manifest/1\n{")]).finish()[KEY].error.reason == "bad_manifest"  # type: ignore[union-attr]


def test_tombstone_deletes_and_filters_and_foreign_records() -> None:
    recs = plan_records(KEY, b"e" * 3, 8, "g1") + [("other", b"x"), (KEY, None)]
    out = _read(recs).finish()
    assert out[KEY].data is None and out[KEY].error is None
    assert set(_read(recs, keys=["other"]).finish()) == {"other"}
    r = ChangelogReader()
    r.add(None, b"x", 0)
    r.add(b"\xff", b"x", 1)
    r.add(b"a#b", b"x", 2)
    assert r.skipped == {"no_key": 1, "bad_key": 2} and r.finish() == {}


def test_superseded_generations_are_dropped_from_memory() -> None:
    recs: list[tuple[str, bytes | None]] = []
    for g in range(50):
        recs += plan_records(KEY, bytes([g]) * 64, 8, f"g{g}")  # an uncompacted topic: 50 generations
    r = _read(recs)
    assert sum(len(v) for v in r._chunks[KEY].values()) == 64  # only the newest generation's bytes
    assert r.finish()[KEY].data == bytes([49]) * 64
    assert len(r.garbage(KEY, r.finish()[KEY].chunk_keys)) == 49 * 8


@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=6), st.integers(1, 9),
       st.data())
def test_restore_is_the_newest_complete_write(values: list[bytes], limit: int, data: st.DataObject) -> None:
    """Writes, each possibly torn (a prefix of its records lost to a crash): the newest whole one wins."""
    records: list[tuple[str, bytes | None]] = []
    newest: bytes | None = None
    for i, v in enumerate(values):
        recs = plan_records(KEY, v, limit, f"g{i}")
        keep = data.draw(st.integers(0, len(recs)))
        records += recs[:keep]
        if keep == len(recs):
            newest = v
    out = _read(records).finish()
    if newest is None:
        assert KEY not in out
    else:
        assert out[KEY].error is None and out[KEY].data == newest


def test_manifest_names_size_and_checksum() -> None:
    data = b"x" * 20
    *_, (key, head) = plan_records(KEY, data, 8, "g")
    assert key == KEY and Manifest.parse(head) == Manifest("g", 3, 20, zlib.crc32(data))


def test_prefix_keeps_only_matching_keys_with_their_chunks() -> None:
    """Scale-out reads its action hand-over markers by prefix, next to other states in the same partition."""
    reader = ChangelogReader(prefix="g/acted/")
    records = [*plan_records("g/detect", b"d" * 10, 4, "aa"), ("g/acted/inc-1/rollback/0a", b"m1"),
               *plan_records("g/acted/inc-2/scale_up/0b", b"m" * 9, 4, "bb"), ("g/correlator", b"c")]
    for offset, (k, v) in enumerate(records):
        reader.add(k.encode(), v, offset)
    got = reader.finish()
    assert sorted(got) == ["g/acted/inc-1/rollback/0a", "g/acted/inc-2/scale_up/0b"]
    assert got["g/acted/inc-2/scale_up/0b"].data == b"m" * 9
