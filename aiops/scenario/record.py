"""``aiops record``: capture a time range of live telemetry into a scenario directory.

A real incident becomes a regression test: record the window around it, then
``aiops replay DIR --check`` runs it forever after. Sources:

* **kafka** — every partition of the metrics, logs and events topics (and of
  ``drift.predictions_topic``, into ``predictions.jsonl``) is read from the start up
  to the end offsets seen when recording began (no consumer group, nothing committed), decoded
  with the same decoders as the live daemon, and records with ``start <= ts < end`` are kept.
  Event time comes from the payload, not the Kafka timestamp, so data produced later than it
  happened (backfills, replays) is recorded correctly.
* **prometheus** — each ``--query`` selector through ``query_range`` at ``--step``.

Files are written in the contract form (SCENARIO_FORMAT.md), sorted by event time;
``scenario.yaml`` gets name, description, step and, with ``--expect-from``, an ``expect`` block
made from the incidents a live run decided (root cause, onset, actions taken), so the replay
check verifies the recording reproduces them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from aiops.config import PrometheusPollSettings, Settings
from aiops.decode.kafka_forms import parse_time
from aiops.drift.records import PredictionRecord, encode_prediction
from aiops.drift.source import PREDICTIONS_FILE
from aiops.drift.source import decode_value as decode_predictions
from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, LogRecord, MetricSample, Record
from aiops.sources.kafka import decoder_from, kafka_client_kwargs
from aiops.sources.prometheus_poll import PrometheusPoller


def _metric_line(s: MetricSample) -> dict[str, Any]:
    return {"ts": s.ts, "name": s.name, "labels": dict(s.labels), "value": None if math.isnan(s.value) else s.value}


def _log_line(r: LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": r.ts, "service": r.service, "message": r.message}
    if r.level:
        out["level"] = r.level
    return out


def _event_line(e: ChangeEvent) -> dict[str, Any]:
    return {"ts": e.ts, "type": e.type, "service": e.service, **dict(e.attrs)}


def write_scenario(out: Path, records: Iterable[Record | PredictionRecord], *, name: str, description: str, step: float | None,
                   expect: dict[str, Any] | None = None) -> dict[str, int]:
    """Write records (any order) as a scenario directory; returns line counts per file.

    Predictions, if any, go to ``predictions.jsonl`` (an extension of the format that replay reads).
    """
    out.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[Record | PredictionRecord]] = {"metrics": [], "logs": [], "events": []}
    for r in records:
        kind = ("metrics" if isinstance(r, MetricSample) else "logs" if isinstance(r, LogRecord)
                else "predictions" if isinstance(r, PredictionRecord) else "events")
        by_kind.setdefault(kind, []).append(r)
    counts = {}
    for kind, items in by_kind.items():
        items.sort(key=lambda r: r.ts)  # stable: equal timestamps keep arrival order
        path = out / (PREDICTIONS_FILE if kind == "predictions" else f"{kind}.jsonl")
        with path.open("w", encoding="utf-8") as f:
            for r in items:
                if isinstance(r, MetricSample):
                    line = _metric_line(r)
                elif isinstance(r, LogRecord):
                    line = _log_line(r)
                elif isinstance(r, PredictionRecord):
                    line = encode_prediction(r)
                else:
                    assert isinstance(r, ChangeEvent)
                    line = _event_line(r)
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
        counts[kind] = len(items)
    spec: dict[str, Any] = {"name": name, "description": description}
    if step:
        spec["step"] = step
    if expect:
        spec["expect"] = expect
    (out / "scenario.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return counts


def expect_from_decisions(path: Path, margin_s: float = 60.0) -> dict[str, Any]:
    """An ``expect`` block from decision lines: each incident's first root cause, onset and actions.

    ``detect_within`` is how long the run took to open it plus ``margin_s``: the replay must
    match the live run, not a stricter bar.
    """
    opened: dict[str, dict[str, Any]] = {}
    actions: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        if d.get("kind") == "incident" and d.get("status") == "open" and d["id"] not in opened:
            opened[d["id"]] = d
        elif d.get("kind") == "action":
            actions.setdefault(d["incident_id"], [])
            if d["type"] not in actions[d["incident_id"]]:
                actions[d["incident_id"]].append(d["type"])
    incidents = []
    for iid, d in opened.items():
        if not d.get("root_causes"):
            continue
        onset = float(d.get("opened_ts", d["ts"]))
        rc = d["root_causes"][0]
        inc: dict[str, Any] = {
            "root_cause": {"service": rc["service"]},
            "fault_start": onset,
            "detect_within": float(d["ts"]) - onset + margin_s,
        }
        inc["actions"] = actions.get(iid, [])
        incidents.append(inc)
    return {"incidents": incidents}


async def record_kafka(settings: Settings, start: float, end: float,
                       rejects: Rejects) -> list[Record | PredictionRecord]:
    """Every record in ``[start, end)`` currently in the telemetry (and predictions) topics."""
    s = settings.kafka
    decoder = decoder_from(s, settings.logs.max_line_bytes)
    fetch = max(s.max_message_bytes * 2, 1024 * 1024)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=fetch,
                                fetch_max_bytes=fetch * 4, **kafka_client_kwargs(s))
    await consumer.start()
    records: list[Record | PredictionRecord] = []
    try:
        kinds = {t: k for t, k in ((s.metrics_topic, "metric"), (s.logs_topic, "log"), (s.events_topic, "event"),
                                   (settings.drift.predictions_topic, "prediction")) if t}
        parts: list[TopicPartition] = []
        await consumer.topics()  # loads cluster metadata, which partitions_for_topic reads
        for topic in kinds:
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                parts.append(TopicPartition(topic, p))
        if not parts:
            return records
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        # Done with a partition once it shows event time well past the window, or once the
        # broker has nothing more to give (two empty fetches in a row). End offsets alone are
        # not trusted: some brokers (Tansu) report them per batch, not per record.
        todo = set(parts)
        beyond = end + settings.runtime.lateness_s
        empty = 0
        while todo and empty < 2:
            fetched = await consumer.getmany(*todo, timeout_ms=1000, max_records=s.max_batch)
            empty = 0 if fetched else empty + 1
            for tp, msgs in fetched.items():
                kind = kinds[tp.topic]
                for msg in msgs:
                    value = msg.value or b""
                    kafka_ts = msg.timestamp / 1000.0 if msg.timestamp and msg.timestamp > 0 else None
                    if not value or len(value) > s.max_message_bytes:
                        rejects.reject("kafka", "too_large" if value else "empty", where=f"{tp.topic}@{msg.offset}")
                        continue
                    got: Sequence[Record | PredictionRecord]
                    if kind == "metric":
                        got, errors = decoder.metrics(value)
                    elif kind == "prediction":
                        got, errors = decode_predictions(value)
                    elif kind == "log":
                        got, errors = decoder.logs(value, msg.key, msg.headers, kafka_ts)
                    else:
                        got, errors = decoder.events(value, kafka_ts)
                    for err in errors:
                        rejects.reject("kafka", err.reason, where=f"{tp.topic}@{msg.offset}", detail=err.detail)
                    for r in got:
                        if start <= r.ts < end:
                            records.append(r)
                        elif r.ts >= beyond:
                            todo.discard(tp)
    finally:
        await consumer.stop()
    return records


async def record_prometheus(settings: PrometheusPollSettings, step: float, start: float, end: float,
                            rejects: Rejects) -> list[Record]:
    """Each configured query over ``[start, end)`` at ``step``, through the poller's incremental reader."""
    poller = PrometheusPoller(settings, step, rejects, clock=lambda: end - step / 2 + settings.delay_s,
                              start_ts=start)
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        samples = await poller.poll_once(session)
    return [s for s in samples if start <= s.ts < end]


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise SystemExit(f"aiops record: bad time {text!r}: {exc}") from None


def record_command(args: argparse.Namespace, settings: Settings) -> int:
    """The CLI entry: exit 0 when the directory is written, 2 on unusable arguments."""
    start, end = _time(args.start), _time(args.end)
    if end <= start:
        print("aiops record: --end must be after --start", file=sys.stderr)
        return 2
    rejects = Rejects()
    step = args.step or settings.runtime.step_s
    if args.source == "kafka":
        records = asyncio.run(record_kafka(settings, start, end, rejects))
    else:
        prom = settings.prometheus
        if args.query:
            prom = prom.model_copy(update={"queries": list(args.query)})
        if not prom.url or not prom.queries:
            print("aiops record: --from prometheus needs prometheus.url and at least one --query", file=sys.stderr)
            return 2
        records = asyncio.run(record_prometheus(prom, step, start, end, rejects))
    name = args.name or args.out.name
    when = f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M:%S} to {datetime.fromtimestamp(end, UTC):%H:%M:%S} UTC"
    description = args.description or f"Recorded from {args.source} {when}."
    expect = expect_from_decisions(args.expect_from) if args.expect_from else None
    counts = write_scenario(args.out, records, name=name, description=description, step=step, expect=expect)
    predictions = f", {counts['predictions']} predictions" if counts.get("predictions") else ""
    print(f"recorded {args.out}: {counts['metrics']} samples, {counts['logs']} log lines, "
          f"{counts['events']} change events{predictions}; {rejects.total} bad records skipped")
    for line in rejects.report():
        print(f"  {line}")
    return 0


__all__ = ["expect_from_decisions", "record_command", "record_kafka", "record_prometheus", "write_scenario"]
