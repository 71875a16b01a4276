"""Kafka source: a consumer group over the metrics, logs and events topics (and a model's prediction log).

Messages are fetched in batches (``getmany``), decoded (:mod:`aiops.decode.kafka_forms`) and
handed out as :class:`KafkaBatch` objects that carry the offsets they cover. The consumer never
commits on its own (``enable_auto_commit=False``): the caller processes a batch and then calls
:meth:`KafkaSource.mark_processed`; processed offsets are committed at most every
``commit_interval_s`` and at :meth:`KafkaSource.stop`. A crash therefore repeats work and loses
none (at-least-once).

Bad messages — not UTF-8, not JSON, wrong types, larger than ``max_message_bytes``, empty —
are counted in :class:`~aiops.observe.rejects.Rejects` (``aiops_records_rejected_total{stage="kafka"}``),
forwarded unchanged to the dead-letter topic when one is configured (reason, source topic,
partition and offset in headers) and never stop the consumer.

:attr:`KafkaSource.connected` says whether the broker answers: aiokafka retries a lost broker
on its own and ``getmany`` simply returns nothing meanwhile, so an empty fetch is followed (at
most every ``probe_interval_s``) by a metadata request; a failed one marks the source
disconnected until a fetch delivers data or a later probe succeeds. ``/readyz`` reports it.

A group rebalance (a member joining or leaving, a broker restart that forgot the group) makes
aiokafka restart every partition it hands back from the group's committed offset, which lags
what was read by up to a checkpoint interval: those records would reach the pipeline twice.
The source remembers how far it read each partition and, when one it read comes back, seeks to
there, unless the group has committed further (another member processed on meanwhile). A
partition whose log now ends before the position (a broker that lost its data) is read again
by ``auto_offset_reset``: its records are new ones.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from aiops.config import KafkaSettings
from aiops.decode.jsonline import DecodeError
from aiops.decode.kafka_forms import KafkaDecoder, LogFields
from aiops.drift.source import decode_value as decode_predictions
from aiops.observe.metrics import SelfMetrics
from aiops.observe.rejects import Rejects
from aiops.records import Record

log = structlog.get_logger(__name__)

RebalanceHook = Callable[[set[TopicPartition]], Awaitable[None]]
"""An async callback given the partitions a rebalance revoked or assigned."""

REASON_HEADER = "aiops-reject-reason"
"""Dead-lettered messages carry the rejection reason in this header (plus detail and origin)."""


@dataclass(slots=True)
class _Held:
    """A decoded message waiting for the other partitions to catch up in event time."""

    offset: int
    min_ts: float
    max_ts: float  # -inf for a message with no records (bad input): released as soon as it is first
    records: list[Record]
    fetched: float  # time.monotonic() when it arrived


@dataclass(slots=True)
class KafkaBatch:
    """Decoded records of one ``getmany`` call and the offsets to commit once they are processed."""

    records: list[Record]
    offsets: dict[TopicPartition, int]  # next offset to read, per partition
    messages: int
    received: float = field(default=0.0)  # time.monotonic() at fetch, for the latency histogram
    # Only with ``split_partitions``: the same records by partition number (topics are co-partitioned
    # by service, so partition p of every topic feeds one per-partition pipeline in scale-out).
    by_partition: dict[int, list[Record]] = field(default_factory=dict)


def kafka_client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Connection arguments shared by every aiokafka client: bootstrap, TLS and SASL."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
        if settings.ssl_certfile:
            context.load_cert_chain(
                str(settings.ssl_certfile), str(settings.ssl_keyfile) if settings.ssl_keyfile else None)
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password
    return kwargs


def decoder_from(settings: KafkaSettings, max_line_bytes: int = 64 * 1024) -> KafkaDecoder:
    f = settings.log_fields
    return KafkaDecoder(
        metrics_format=settings.metrics_format,
        logs_format=settings.logs_format,
        log_fields=LogFields(ts=tuple(f.ts), service=tuple(f.service), level=tuple(f.level),
                             message=tuple(f.message)),
        service_header=settings.service_header,
        max_line_bytes=max_line_bytes,
    )


class KafkaSource:
    """Consume telemetry topics in batches; commit only what the caller has processed.

    Topics left empty in the settings are not consumed. Use as::

        source = KafkaSource(settings.kafka, rejects, metrics)
        await source.start()
        async for batch in source.batches():
            process(batch.records)
            source.mark_processed(batch)
            await source.maybe_commit()
        await source.stop()
    """

    def __init__(
        self, settings: KafkaSettings, rejects: Rejects, metrics: SelfMetrics | None = None,
        *, fetch_timeout_ms: int = 500, max_line_bytes: int = 64 * 1024, align_slack_s: float = 30.0,
        confirm_s: float = 1.0, probe_interval_s: float = 1.0, probe_timeout_s: float = 2.0,
        commit_timeout_s: float = 5.0, predictions_topic: str | None = None,
        split_partitions: bool = False, on_revoked: RebalanceHook | None = None,
        on_assigned: RebalanceHook | None = None,
    ) -> None:
        self.settings = settings
        self.rejects = rejects
        self.metrics = metrics
        self.decoder = decoder_from(settings, max_line_bytes)
        self.fetch_timeout_ms = fetch_timeout_ms
        self.split_partitions = split_partitions
        # Called after the source's own rebalance handling (scale-out: checkpoint revoked partitions' state,
        # restore assigned ones' and seek to the offsets it covers).
        self.on_revoked = on_revoked
        self.on_assigned = on_assigned
        self._kinds = {t: k for t, k in ((settings.metrics_topic, "metric"), (settings.logs_topic, "log"),
                                         (settings.events_topic, "event"),
                                         (predictions_topic, "prediction")) if t}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None  # dead letters
        self._processed: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self._stopping = False
        self._held: dict[TopicPartition, deque[_Held]] = {}
        self._head: dict[TopicPartition, float] = {}  # newest event time seen per partition
        self._read: dict[TopicPartition, int] = {}  # next offset after what was fetched (held or handed out)
        self.align_slack_s = align_slack_s
        self.confirm_s = confirm_s
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self._reachable = False
        self._last_probe = -math.inf  # time.monotonic() of the last metadata probe

    @property
    def topics(self) -> list[str]:
        return list(self._kinds)

    @property
    def connected(self) -> bool:
        """Started, not stopping, and the broker answered the latest fetch or metadata probe."""
        return self.consumer is not None and not self._stopping and self._reachable

    async def start(self) -> None:
        s = self.settings
        common = kafka_client_kwargs(s)
        # A message up to max_message_bytes must fit one fetch, or the consumer stalls on it.
        fetch = max(s.max_message_bytes * 2, 1024 * 1024)
        self.consumer = AIOKafkaConsumer(
            group_id=s.group_id, enable_auto_commit=False, auto_offset_reset=s.auto_offset_reset,
            max_partition_fetch_bytes=fetch, fetch_max_bytes=fetch * 4, **common,
        )
        self.consumer.subscribe(self.topics, listener=_KeepPosition(self))
        if s.dead_letter_topic:
            self.producer = AIOKafkaProducer(
                max_request_size=fetch * 2, acks="all", linger_ms=5, **common)
            await self.producer.start()
        try:
            await self.consumer.start()
            self._reachable = True  # start() returns only once the group coordinator answered
        except BaseException:
            if self.producer is not None:
                await self.producer.stop()
            raise
        log.info("kafka_source_started", topics=self.topics, group_id=s.group_id, bootstrap=s.bootstrap)

    def request_stop(self) -> None:
        """Stop fetching new batches; :meth:`batches` ends after the current one."""
        self._stopping = True

    async def batches(self) -> AsyncIterator[KafkaBatch]:
        """Decoded, event-time-aligned batches until :meth:`request_stop`, then what is still held.

        Dead letters are acknowledged before the batch carrying their offsets is yielded.
        """
        assert self.consumer is not None, "start() first"
        consumer = self.consumer
        while not self._stopping:
            fetched = await consumer.getmany(timeout_ms=self.fetch_timeout_ms, max_records=self.settings.max_batch)
            received = time.monotonic()
            if fetched:
                self._set_reachable(True)
                await self._decode(fetched)
                self._observe_lag(fetched)
            elif received - self._last_probe >= self.probe_interval_s:
                await self._probe(consumer)
                if self._reachable:
                    await self._check_truncation(consumer)
            batch = await self._release(received)
            if batch is not None:
                yield batch
        # Stopping: what was fetched is processed too, so its offsets can be committed.
        batch = await self._release(time.monotonic(), everything=True)
        if batch is not None:
            yield batch

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Ask a broker for cluster metadata: the cheapest request that proves one answers."""
        self._last_probe = time.monotonic()
        try:
            await asyncio.wait_for(consumer.topics(), self.probe_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            self._set_reachable(False, repr(exc))
        else:
            self._set_reachable(True)

    def _set_reachable(self, reachable: bool, error: str = "") -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            log.info("kafka_reconnected", bootstrap=self.settings.bootstrap)
        else:
            # aiokafka keeps reconnecting by itself; this only makes the outage visible.
            log.warning("kafka_disconnected", bootstrap=self.settings.bootstrap, error=error)

    async def _frontier(self) -> tuple[float, bool]:
        """Event time up to which held messages may be released without starving a partition.

        Kafka hands out a backlog partition by partition, and a topic of logs and one of metrics
        move at different paces: fed as fetched, one partition's records would run the watermark
        past another's and those would all be dropped as late. So a message is released only
        once every partition that still has unread data has shown event time within
        ``lateness_s / 2`` of it (the reorder buffer absorbs the rest), as Kafka Streams aligns
        partitions of one task by timestamp. Also returns whether some partition was taken as
        caught up: its high watermark may predate data produced since, so messages are then
        only released once they have waited ``confirm_s`` for the fetcher to see such data.
        """
        assert self.consumer is not None
        frontier = math.inf
        caught_up = False
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                try:
                    position = await asyncio.wait_for(self.consumer.position(tp), 1.0)
                except (TimeoutError, KafkaError, IllegalStateError):
                    continue
                if position >= high:
                    caught_up = True
                    continue  # caught up: nothing it could still deliver is older than what it has shown
            head = self._head.get(tp)
            if head is None:
                return -math.inf, caught_up  # unread data of unknown time: wait until it has shown some
            frontier = min(frontier, head + self.align_slack_s)
        return frontier, caught_up

    async def _release(self, received: float, everything: bool = False) -> KafkaBatch | None:
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        for tp in [tp for tp in self._held if tp not in assigned]:
            self._forget_held(tp)  # revoked in a rebalance: its new owner reads it again
        if not any(self._held.values()):
            self._resume_all()
            return None
        frontier, caught_up = (math.inf, False) if everything else await self._frontier()
        confirmed = time.monotonic() - self.confirm_s if caught_up else math.inf
        # Messages still waiting for confirmation will be released later: nothing much newer
        # than them may go first, or they would arrive late.
        for held in self._held.values():
            for h in held:
                if h.fetched > confirmed:
                    frontier = min(frontier, h.min_ts + self.align_slack_s)
                    break
        records: list[Record] = []
        offsets: dict[TopicPartition, int] = {}
        by_partition: dict[int, list[Record]] = {}
        messages = 0
        for tp, held in self._held.items():
            while held and held[0].max_ts <= frontier and held[0].fetched <= confirmed:
                h = held.popleft()
                records.extend(h.records)
                if self.split_partitions:
                    by_partition.setdefault(tp.partition, []).extend(h.records)
                offsets[tp] = h.offset + 1
                messages += 1
        self._flow_control()
        if not messages:
            return None
        # Topics interleave by partition; a stable sort by event time spares the reorder buffer.
        records.sort(key=_ts)
        for part in by_partition.values():
            part.sort(key=_ts)
        return KafkaBatch(records=records, offsets=offsets, messages=messages, received=received,
                          by_partition=by_partition)

    def _forget_held(self, tp: TopicPartition) -> None:
        """Drop what is held of a partition; if it comes back, reading resumes at the first dropped."""
        held = self._held.pop(tp, None)
        if held:
            self._read[tp] = held[0].offset

    async def _resume_position(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None
        for tp in assigned:
            ours = self._read.get(tp)
            if ours is None:
                continue  # never read here: the group's committed offset (or the reset policy) decides
            try:
                committed = await asyncio.wait_for(self.consumer.committed(tp), 10.0)
            except (KafkaError, TimeoutError) as exc:
                log.warning("kafka_committed_unknown", topic=tp.topic, partition=tp.partition, error=repr(exc))
                committed = None
            if committed is not None and committed >= ours:
                continue
            self.consumer.seek(tp, ours)
            log.info("kafka_resume_position", topic=tp.topic, partition=tp.partition, offset=ours,
                     committed=committed)

    async def _check_truncation(self, consumer: AIOKafkaConsumer) -> None:
        """Read a partition again whose log ended before our position (its broker lost its data).

        Kafka answers such a fetch with OFFSET_OUT_OF_RANGE and aiokafka applies the reset policy;
        some brokers (Tansu) answer with nothing, which would stall the partition until its new
        log grew past the old position and then skip what came before.
        """
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
            except (TimeoutError, KafkaError, IllegalStateError):
                continue
            if position <= high:
                continue
            log.warning("kafka_partition_truncated", topic=tp.topic, partition=tp.partition, position=position,
                        end=high, reset=self.settings.auto_offset_reset)
            self._read.pop(tp, None)  # what is held from the old log is still processed
            if self.settings.auto_offset_reset == "earliest":
                await consumer.seek_to_beginning(tp)
            else:
                await consumer.seek_to_end(tp)

    def _flow_control(self) -> None:
        """Pause partitions holding more than ``max_batch`` messages so fetches go to the laggards."""
        assert self.consumer is not None
        cap = self.settings.max_batch
        paused = self.consumer.paused()
        for tp, held in self._held.items():
            if len(held) > cap and tp not in paused:
                self.consumer.pause(tp)
            elif len(held) <= cap // 2 and tp in paused:
                self.consumer.resume(tp)

    def _resume_all(self) -> None:
        assert self.consumer is not None
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    async def _decode(self, fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        dead: list[asyncio.Future[Any]] = []
        limit = self.settings.max_message_bytes
        decoder = self.decoder
        messages = 0
        counts: dict[str, int] = {}
        fetched_at = time.monotonic()
        for tp, msgs in fetched.items():
            kind = self._kinds.get(tp.topic, "metric")
            held = self._held.setdefault(tp, deque())
            head = self._head.get(tp, -math.inf)
            for msg in msgs:
                messages += 1
                value = msg.value
                if value is None or not value:
                    errors: list[DecodeError] = [DecodeError("empty", "no value")]
                    got: Sequence[Record] = ()
                elif len(value) > limit:
                    errors = [DecodeError("too_large", f"{len(value)} bytes > {limit}")]
                    got = ()
                elif kind == "metric":
                    got, errors = decoder.metrics(value)
                elif kind == "prediction":
                    got, errors = decode_predictions(value)
                elif kind == "log":
                    kafka_ts = msg.timestamp / 1000.0 if msg.timestamp and msg.timestamp > 0 else None
                    got, errors = decoder.logs(value, msg.key, msg.headers, kafka_ts)
                else:
                    kafka_ts = msg.timestamp / 1000.0 if msg.timestamp and msg.timestamp > 0 else None
                    got, errors = decoder.events(value, kafka_ts)
                max_ts = min_ts = -math.inf
                if got:
                    counts[kind] = counts.get(kind, 0) + len(got)
                    stamps = [r.ts for r in got]
                    max_ts = max(stamps)
                    min_ts = min(stamps)
                    if max_ts > head:
                        head = max_ts
                held.append(_Held(msg.offset, min_ts, max_ts, list(got), fetched_at))
                self._read[tp] = msg.offset + 1
                if errors:
                    where = f"{tp.topic}/{tp.partition}@{msg.offset}"
                    for err in errors:
                        self.rejects.reject("kafka", err.reason, where=where, detail=err.detail)
                    fut = await self._dead_letter(msg, errors[0])
                    if fut is not None:
                        dead.append(fut)
            if head > -math.inf:
                self._head[tp] = head
        if dead:
            # A batch is only "processed" once its bad messages are safely in the dead-letter topic.
            results = await asyncio.gather(*dead, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    log.error("dead_letter_failed", error=repr(r))
        if self.metrics is not None:
            self.metrics.messages_in.labels("kafka").inc(messages)
            for kind, n in counts.items():
                self.metrics.records_in.labels("kafka", kind).inc(n)

    async def _dead_letter(self, msg: ConsumerRecord[Any, Any], err: DecodeError) -> asyncio.Future[Any] | None:
        topic = self.settings.dead_letter_topic
        if not topic or self.producer is None:
            return None
        headers = list(msg.headers or ()) + [
            (REASON_HEADER, err.reason.encode()),
            ("aiops-reject-detail", err.detail.encode("utf-8", "replace")[:500]),
            ("aiops-source-topic", msg.topic.encode()),
            ("aiops-source-partition", str(msg.partition).encode()),
            ("aiops-source-offset", str(msg.offset).encode()),
        ]
        try:
            fut = await self.producer.send(topic, value=msg.value, key=msg.key, headers=headers)
        except KafkaError as exc:
            log.error("dead_letter_failed", topic=topic, error=repr(exc))
            return None
        if self.metrics is not None:
            self.metrics.dead_lettered.labels(topic).inc()
        return fut

    def _observe_lag(self, fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        if self.metrics is None or self.consumer is None:
            return
        for tp, msgs in fetched.items():
            high = self.consumer.highwater(tp)
            if high is not None and msgs:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - (msgs[-1].offset + 1)))

    def mark_processed(self, batch: KafkaBatch) -> None:
        """Record that every record of ``batch`` has been handed to the pipeline."""
        for tp, off in batch.offsets.items():
            if off > self._processed.get(tp, -1):
                self._processed[tp] = off

    async def maybe_commit(self, now: float | None = None) -> None:
        """Commit processed offsets if ``commit_interval_s`` has passed since the last commit."""
        now = time.monotonic() if now is None else now
        if now - self._last_commit >= self.settings.commit_interval_s:
            await self.commit()
            self._last_commit = now

    async def commit(self) -> None:
        """Commit every processed offset not yet committed; a lost partition is logged, not fatal."""
        if self.consumer is None:
            return
        pending = {tp: off for tp, off in self._processed.items() if self._committed.get(tp) != off}
        if not pending:
            return
        assigned = self.consumer.assignment()
        pending = {tp: off for tp, off in pending.items() if tp in assigned}
        if not pending:
            return
        try:
            # aiokafka waits for a coordinator however long the broker is away; the caller (the
            # live processor, between batches) must not stall with it. Not committed now, next time.
            await asyncio.wait_for(self.consumer.commit(pending), self.commit_timeout_s)
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            # After a rebalance the new owner re-reads from the last commit: repeated work, no loss.
            log.warning("kafka_commit_failed", error=repr(exc), partitions=len(pending))
            return
        self._committed.update(pending)

    async def stop(self) -> None:
        """Commit what was processed, then close the consumer and the dead-letter producer."""
        self._stopping = True
        if self.consumer is not None:
            await self.commit()
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        committed = {f"{tp.topic}/{tp.partition}": o for tp, o in self._committed.items()}
        log.info("kafka_source_stopped", committed=committed)


class _KeepPosition(ConsumerRebalanceListener):  # type: ignore[misc]
    """Rebalance callbacks of a :class:`KafkaSource` (see the module docstring)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.source.on_revoked is not None:
            await self.source.on_revoked(set(revoked))
        for tp in revoked:
            self.source._forget_held(tp)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.source._resume_position(assigned)
        if self.source.on_assigned is not None:
            await self.source.on_assigned(set(assigned))


_ts: Callable[[Record], float] = attrgetter("ts")  # in C: called per record by the sorts


__all__ = ["REASON_HEADER", "KafkaBatch", "KafkaSource", "decoder_from", "kafka_client_kwargs"]
