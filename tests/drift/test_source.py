"""Prediction logs from a scenario file and from Kafka message values; bad input is counted, not fatal.

The live path (the daemon's Kafka source reading the predictions topic) is tests/integration/test_live_drift.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from aiops.drift.source import decode_message, decode_value, read_predictions
from aiops.observe.rejects import Rejects

GOOD = {"ts": 1.0, "model": "ranker", "id": "p1", "features": {"x": 0.5}, "prediction": 1}


def test_file_reader_counts_bad_lines(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD), "{not json", json.dumps({"ts": 2, "features": {}}), "", json.dumps(
        {"ts": 3.0, "model": "ranker", "id": "p1", "label": 0})]
    with gzip.open(tmp_path / "predictions.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    rejects = Rejects(log_examples=False)
    recs = list(read_predictions(tmp_path, rejects))
    assert [r.ts for r in recs] == [1.0, 3.0] and recs[1].is_label_only
    assert rejects.by_reason() == {("drift", "bad_json"): 1, ("drift", "missing_model"): 1}
    assert list(read_predictions(tmp_path / "absent", rejects)) == []


def test_decode_message() -> None:
    rejects = Rejects(log_examples=False)
    assert decode_message(json.dumps(GOOD).encode(), rejects) is not None
    assert decode_message(None, rejects) is None and decode_message(b"\xff", rejects) is None
    assert rejects.by_reason() == {("drift", "empty_message"): 1, ("drift", "bad_json"): 1}


def test_decode_value_of_several_lines() -> None:
    good = json.dumps(GOOD).encode()
    records, errors = decode_value(good + b"\n\n" + good.replace(b'"p1"', b'"p2"') + b"\n{oops\n")
    assert [r.id for r in records] == ["p1", "p2"] and [e.reason for e in errors] == ["bad_json"]
    assert decode_value(b"\xff")[1][0].reason == "bad_utf8"
