"""Where prediction logs come from: a Kafka topic (live) or ``predictions.jsonl`` in a scenario directory.

Live, ``drift.predictions_topic`` is one more topic of the daemon's Kafka source
(:class:`~aiops.sources.kafka.KafkaSource`), decoded by :func:`decode_value`: predictions then
share the telemetry's event-time alignment, and their offsets are committed only after the
checkpoint that covers them, like every other record.

Both are thin: bytes -> :func:`~aiops.drift.records.decode_prediction` -> records, with every bad
line or message a counted, logged skip in :class:`~aiops.observe.rejects.Rejects` (stage
``drift``). ``predictions.jsonl`` is an extra file of the scenario format, ignored by tools that
do not know it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiops.decode.jsonline import DecodeError
from aiops.drift.records import PredictionRecord, decode_prediction
from aiops.observe.rejects import Rejects

PREDICTIONS_FILE = "predictions.jsonl"
MAX_LINE_BYTES = 1024 * 1024


def read_predictions(scenario_dir: Path, rejects: Rejects) -> Iterator[PredictionRecord]:
    """Records of ``predictions.jsonl`` (or ``.jsonl.gz``) in file order; none if absent."""
    path = scenario_dir / PREDICTIONS_FILE
    gz = scenario_dir / (PREDICTIONS_FILE + ".gz")
    if path.is_file():
        f: Any = path.open("rb")
    elif gz.is_file():
        path, f = gz, gzip.open(gz, "rb")
    else:
        return
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                rejects.reject("drift", "line_too_long", where=f"{path}:{n}")
                continue
            try:
                yield decode_prediction(line)
            except DecodeError as exc:
                rejects.reject("drift", exc.reason, where=f"{path}:{n}", detail=exc.detail)


def decode_value(value: bytes) -> tuple[list[PredictionRecord], list[DecodeError]]:
    """Decode a Kafka message value of one or more newline-separated prediction lines.

    Returns the good records and one error per bad line, as the telemetry decoders do, so the
    Kafka source counts and dead-letters them the same way.

    >>> recs, errs = decode_value(b'{"ts": 1, "model": "m", "prediction": 1}\\n{"ts": 2}')
    >>> [r.model for r in recs], [e.reason for e in errs]
    (['m'], ['missing_model'])
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [DecodeError("bad_utf8", str(exc)[:120])]
    records: list[PredictionRecord] = []
    errors: list[DecodeError] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            records.append(decode_prediction(line))
        except DecodeError as exc:
            errors.append(exc)
    return records, errors


def decode_message(value: bytes | None, rejects: Rejects, where: str = "") -> PredictionRecord | None:
    """Decode one Kafka message value; a bad one is counted and gives None."""
    if value is None:
        rejects.reject("drift", "empty_message", where=where)
        return None
    if len(value) > MAX_LINE_BYTES:
        rejects.reject("drift", "message_too_large", where=where)
        return None
    try:
        return decode_prediction(value)
    except DecodeError as exc:
        rejects.reject("drift", exc.reason, where=where, detail=exc.detail)
        return None
