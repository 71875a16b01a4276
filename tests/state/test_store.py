"""Checkpoint stores: one contract for every backend, then what the file backend adds."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from aiops.state import CheckpointStore, FileCheckpointStore, MemoryCheckpointStore
from aiops.state.envelope import Checkpoint, CheckpointError, decode, encode

QUIET = structlog.wrap_logger(structlog.ReturnLogger())

Factory = Callable[..., Any]


@pytest.fixture(params=["file", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    def make(**kw: Any) -> Any:
        kw.setdefault("logger", QUIET)
        if request.param == "file":
            return FileCheckpointStore(tmp_path / "state", **kw)
        return MemoryCheckpointStore(**kw)
    return make


# -- contract: every backend -----------------------------------------------------------------

def test_empty_store_loads_none(make_store: Factory) -> None:
    store = make_store()
    assert isinstance(store, CheckpointStore)
    assert store.load() is None
    assert store.load_checkpoint() is None


def test_round_trip_is_exact(make_store: Factory) -> None:
    store = make_store()
    snap = {"floats": [0.1, 1e-300, -2.5e17, 1 / 3], "nan": math.nan, "inf": [math.inf, -math.inf],
            "nested": {"a": [[1, "x"], None, True]}, "unicode": "sérvice ✓"}
    store.save(snap, event_ts=1234.5, offsets={("aiops.metrics", 0): 10, ("aiops.logs", 7): 99})
    cp = store.load_checkpoint()
    assert cp is not None
    got = cp.state
    assert got["floats"] == snap["floats"]
    assert math.isnan(got["nan"]) and got["inf"] == [math.inf, -math.inf]
    assert got["nested"] == {"a": [[1, "x"], None, True]} and got["unicode"] == "sérvice ✓"
    assert cp.created_event_ts == 1234.5
    assert cp.offsets == {("aiops.metrics", 0): 10, ("aiops.logs", 7): 99}


def test_newest_wins(make_store: Factory) -> None:
    store = make_store(keep=2)
    for i in range(5):
        store.save({"i": i}, event_ts=float(i))
    assert store.load() == {"i": 4}


def test_set_aside_falls_back_to_previous_generation(make_store: Factory) -> None:
    store = make_store(keep=1)
    store.save({"i": 1})
    store.save({"i": 2})
    assert store.load() == {"i": 2}
    store.set_aside("incompatible_state", "stage refused it")
    assert store.failures == {"incompatible_state": 1}
    assert store.load() == {"i": 1}


# -- envelope ---------------------------------------------------------------------------------

def test_envelope_rejects_damage_with_reasons() -> None:
    good = encode(Checkpoint(state={"a": list(range(100))}, created_event_ts=5.0))
    header_end = good.index(b"\n") + 1
    cases = {
        "bad_header": b"PK\x03\x04 not ours",
        "unsupported_version": good.replace(b"/1 ", b"/2 ", 1),
        "unknown_codec": good.replace(b" zlib\n", b" lz4\n", 1),
        "corrupt_data": good[:-7],  # truncated: the Adler-32 trailer and some data missing
        "bad_json": good[:header_end] + zlib.compress(b"{not json"),
        "bad_envelope": good[:header_end] + zlib.compress(b'{"format_version": 1, "state": [1]}'),
    }
    flipped = bytearray(good)
    flipped[header_end + 20] ^= 0xFF
    for reason, data in cases.items():
        with pytest.raises(CheckpointError) as err:
            decode(data)
        assert err.value.reason == reason, (reason, err.value)
    with pytest.raises(CheckpointError) as err:
        decode(bytes(flipped))
    assert err.value.reason in ("corrupt_data", "bad_json")


def test_envelope_rejects_wrong_body_version_and_bad_offsets() -> None:
    header = b"aiops-checkpoint/1 zlib\n"
    for body, reason in [
        (b'{"format_version": 2, "state": {}}', "unsupported_version"),
        (b'{"format_version": 1, "state": {}, "offsets": [["t", "0", 1]]}', "bad_envelope"),
        (b'{"format_version": 1, "state": {}, "offsets": {"t": 1}}', "bad_envelope"),
        (b'{"format_version": 1, "state": {}, "created_event_ts": "yesterday"}', "bad_envelope"),
        (b'[1, 2]', "bad_envelope"),
    ]:
        with pytest.raises(CheckpointError) as err:
            decode(header + zlib.compress(body))
        assert err.value.reason == reason, body


def test_header_is_human_readable() -> None:
    data = encode(Checkpoint(state={}))
    assert data.split(b"\n", 1)[0] == b"aiops-checkpoint/1 zlib"


# -- file backend -----------------------------------------------------------------------------

def test_file_save_is_atomic_and_prunes(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path, keep=2, logger=QUIET)
    for i in range(6):
        store.save({"i": i})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["state-0000000004.ckpt", "state-0000000005.ckpt", "state-0000000006.ckpt"]
    # keep=0 (the default) leaves exactly one file.
    solo = FileCheckpointStore(tmp_path / "solo", logger=QUIET)
    solo.save({"x": 1})
    solo.save({"x": 2})
    assert [p.name for p in (tmp_path / "solo").iterdir()] == ["state-0000000002.ckpt"]


def test_corrupt_newest_is_reported_moved_aside_and_older_used(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = FileCheckpointStore(tmp_path, keep=1, registry=registry)
    store.save({"gen": 1}, event_ts=10.0)
    store.save({"gen": 2}, event_ts=20.0)
    newest = tmp_path / "state-0000000002.ckpt"
    newest.write_bytes(newest.read_bytes()[:-10])  # a torn write by something other than us
    with capture_logs() as logs:
        cp = FileCheckpointStore(tmp_path, keep=1, registry=CollectorRegistry()).load_checkpoint()
        reloaded = FileCheckpointStore(tmp_path, keep=1, logger=QUIET)
    assert cp is not None and cp.state == {"gen": 1} and cp.created_event_ts == 10.0
    bad = [e for e in logs if e["event"] == "checkpoint_unusable"]
    assert len(bad) == 1 and bad[0]["reason"] == "corrupt_data" and bad[0]["log_level"] == "warning"
    assert (tmp_path / "state-0000000002.ckpt.corrupt-1").exists() and not newest.exists()
    # The next save does not collide with the file set aside.
    reloaded.save({"gen": 3})
    assert reloaded.load() == {"gen": 3}
    assert registry.get_sample_value("aiops_checkpoint_saves_total", {"backend": "file"}) == 2.0


def test_only_corrupt_checkpoint_gives_none_and_counts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = FileCheckpointStore(tmp_path, registry=registry, logger=QUIET)
    (tmp_path / "state-0000000001.ckpt").write_bytes(b"garbage")
    (tmp_path / "state-0000000002.ckpt").write_bytes(b"aiops-checkpoint/7 zlib\n...")
    assert store.load() is None
    assert store.failures == {"bad_header": 1, "unsupported_version": 1}
    assert registry.get_sample_value("aiops_checkpoint_unusable_total",
                                     {"backend": "file", "reason": "bad_header"}) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-0000000001.ckpt.corrupt-1",
                                                           "state-0000000002.ckpt.corrupt-1"]
    # Setting aside twice the same name numbers the copies instead of overwriting evidence.
    (tmp_path / "state-0000000001.ckpt").write_bytes(b"garbage again")
    assert store.load() is None
    assert (tmp_path / "state-0000000001.ckpt.corrupt-2").read_bytes() == b"garbage again"


def test_empty_file_and_directory_named_like_checkpoint(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path, logger=QUIET)
    store.save({"ok": True})
    (tmp_path / "state-0000000009.ckpt").write_bytes(b"")
    (tmp_path / "state-0000000010.ckpt").mkdir()
    assert store.load() == {"ok": True}
    assert store.failures == {"bad_header": 1, "unreadable": 1}


def test_crash_before_rename_leaves_previous_state(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path, logger=QUIET)
    store.save({"v": "old"})
    # What a SIGKILL between write and rename leaves behind: a temporary file, never a checkpoint.
    stale = tmp_path / ".state.tmp-abc123"
    stale.write_bytes(encode(Checkpoint(state={"v": "half"}))[:20])
    restarted = FileCheckpointStore(tmp_path, logger=QUIET)
    assert not stale.exists()
    assert restarted.load() == {"v": "old"}


def test_failed_write_removes_temporary_and_keeps_old(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path, logger=QUIET)
    store.save({"v": 1})
    with pytest.raises(TypeError):
        store.save({"v": object()})  # not JSON-able: a bug in the caller, raised loudly
    assert [p.name for p in tmp_path.iterdir()] == ["state-0000000001.ckpt"]
    assert store.load() == {"v": 1}


def test_stores_with_related_names_share_a_directory(tmp_path: Path) -> None:
    a = FileCheckpointStore(tmp_path, name="p", logger=QUIET)
    b = FileCheckpointStore(tmp_path, name="p-1", logger=QUIET)
    a.save({"who": "a"})
    b.save({"who": "b"})
    b.save({"who": "b2"})
    assert a.load() == {"who": "a"} and b.load() == {"who": "b2"}
    assert len(a.generations()) == 1


def test_file_is_what_the_format_says(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path, logger=QUIET)
    store.save({"k": [1, 2, 3]}, event_ts=99.0, offsets={("t", 2): 5})
    (path,) = store.generations()
    assert decode(path.read_bytes()) == Checkpoint(state={"k": [1, 2, 3]}, created_event_ts=99.0,
                                                   offsets={("t", 2): 5})
    assert os.stat(path).st_size < 200


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileCheckpointStore(tmp_path, name="../escape")


def test_numpy_arrays_are_stored_as_binary_exactly(make_store: Factory) -> None:
    import numpy as np

    season = np.full((3, 288), np.nan, dtype=np.float32)
    season[1, 5] = 0.25
    snap = {"season": season, "n": np.arange(5, dtype=np.int64), "empty": np.zeros((0, 4)),
            "scalar": np.float64(2.5), "nested": [{"a": np.array([1.5, -np.inf])}]}
    store = make_store()
    store.save(snap)
    got = store.load()
    assert got is not None
    assert got["season"].dtype == np.float32 and got["season"].shape == (3, 288)
    assert np.array_equal(got["season"], season, equal_nan=True) and got["season"].flags.writeable
    assert got["n"].tolist() == [0, 1, 2, 3, 4] and got["empty"].shape == (0, 4)
    assert got["scalar"] == 2.5 and got["nested"][0]["a"].tolist() == [1.5, -np.inf]


def test_damaged_array_table_is_a_reason() -> None:
    import numpy as np

    good = encode(Checkpoint(state={"a": np.arange(4.0)}))
    header_end = good.index(b"\n") + 1
    raw = zlib.decompress(good[header_end:])
    body, table, blob = raw.split(b"\n", 2)
    for damaged in [body + b"\n" + table + b"\n" + blob[:-3],             # truncated data
                    body + b"\n" + b'[["|O", [4]]]' + b"\n" + blob,       # object dtype
                    body + b"\n" + b'[["<f8", [9]]]' + b"\n" + blob,      # more than there is
                    body.replace(b'{"__ndarray__":0}', b'{"__ndarray__":3}') + b"\n" + table + b"\n" + blob]:
        with pytest.raises(CheckpointError) as err:
            decode(good[:header_end] + zlib.compress(damaged))
        assert err.value.reason == "bad_envelope"
