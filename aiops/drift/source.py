"""Where prediction logs come from: a Kafka topic (live) or ``predictions.jsonl`` in a scenario directory.

Both are thin: bytes -> :func:`~aiops.drift.records.decode_prediction` -> records, with every bad
line or message a counted, logged skip in :class:`~aiops.observe.rejects.Rejects` (stage
``drift``). ``predictions.jsonl`` is an extra file of the scenario format, ignored by tools that
do not know it.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiops.config import DriftSettings, KafkaSettings
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


async def kafka_predictions(kafka: KafkaSettings, drift: DriftSettings, rejects: Rejects,
                            max_batch: int = 1000, offset_reset: str = "latest",
                            ) -> AsyncIterator[list[PredictionRecord]]:
    """Batches of prediction records from ``drift.predictions_topic`` (aiokafka, committed after use).

    Offsets are committed when the caller asks for the next batch, i.e. after it processed the
    previous one: a crash repeats predictions (harmless to a windowed monitor) but loses none.
    """
    from aiokafka import AIOKafkaConsumer

    from aiops.sources.kafka import kafka_client_kwargs

    if drift.predictions_topic is None:
        raise ValueError("drift.predictions_topic is not set")
    consumer = AIOKafkaConsumer(drift.predictions_topic, group_id=f"{kafka.group_id}-drift",
                                enable_auto_commit=False, auto_offset_reset=offset_reset, **kafka_client_kwargs(kafka))
    await consumer.start()
    try:
        while True:
            polled = await consumer.getmany(timeout_ms=1000, max_records=max_batch)
            batch = [rec for tp, msgs in polled.items() for m in msgs
                     if (rec := decode_message(m.value, rejects, f"{tp.topic}[{tp.partition}]@{m.offset}"))]
            if batch:
                yield batch
            if polled:
                await consumer.commit()
    finally:
        await consumer.stop()
