"""Scale-out on Kafka: several ``aiops run`` instances share the partitions; one correlates for all.

``live.mode: scale_out`` runs this daemon instead of the single one (docs/scale-out.md has the
topology and its limits). Per instance:

* **Detection per partition.** The instance's share of the input partitions comes from the
  consumer group (``kafka.group_id``). Producers key every record by service and the topics are
  co-partitioned, so partition ``p`` of the metrics, logs and events topics feeds one
  :class:`~aiops.runtime.pipeline.DetectHalf`. Its state lives in the Kafka changelog
  (:class:`~aiops.state.kafka.KafkaChangelogStore`, changelog partition ``p``, key
  ``<group>/detect``): restored when the partition is assigned (the consumer then seeks to the
  offsets the state covers, so the new owner starts warm), checkpointed every
  ``live.checkpoint_interval_s`` and when the partition is revoked. ``/readyz`` is not ready while
  an assigned partition is being restored.
* **Signals before offsets.** After each batch every half's closed steps (signals, change events,
  progress) go to the one-partition signals topic (acks=all, awaited). A checkpoint is taken only
  after that, and offsets are committed only after the checkpoint, so a crash at any point
  repeats steps (the gate drops the repeats) and loses none.
* **One correlator.** Every instance joins a second consumer group (``<group>.correlate``) on the
  signals topic; Kafka gives its one partition to one member, which restores the correlator,
  decider and :class:`~aiops.runtime.gate.ProgressGate` from the changelog (partition 0, key
  ``<group>/correlator``), seeks to the signals offset they cover, and releases steps as the gate
  allows: to the correlator, the decider, then sinks, the act stage and ``--out`` exactly as the
  single daemon does. If it dies, the group gives the partition to another member (failover).

Remote write and the PromQL poller carry no partition: in this mode their records are counted as
rejected (``scale_out_needs_kafka``), not processed.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from aiops.act.executor import JournalError
from aiops.act.handover import ActJournal
from aiops.act.ledger import LedgerEntry
from aiops.config import Settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import Rules
from aiops.notify.firing import FiringAlerts
from aiops.records import Action, ActionOutcome, Decision, Incident
from aiops.runtime.checkpointing import LIVE_KEY, live_part_in, live_part_out
from aiops.runtime.gate import ProgressGate, steps_message
from aiops.runtime.live import InboxItem, LiveDaemon
from aiops.runtime.pipeline import ClosedStep, CorrelateHalf, DetectHalf, PipelineStats
from aiops.runtime.signals_topic import WireError, decode_message, encode_message
from aiops.sources.kafka import KafkaBatch, KafkaSource, kafka_client_kwargs
from aiops.state.kafka import KafkaChangelogStore
from aiops.state.pipeline_state import (
    IncompatibleState,
    restore_correlate,
    restore_detect,
    snapshot_correlate,
    snapshot_detect,
)

log = structlog.get_logger(__name__)

CORRELATOR_PARTITION = 0
"""Changelog partition holding the correlator's state (any partition would do; 0 always exists)."""


@dataclass
class _Partition:
    """One assigned input partition: its detect half and how far it has read, published and saved."""

    number: int
    half: DetectHalf
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # after the last record fed
    published: int | None = None  # last step published to the signals topic
    vouched: int | None = None  # last idle progress published for a half with no record yet
    dirty: bool = False  # fed or advanced since the last checkpoint


def _through(half: DetectHalf) -> int | None:
    nxt = half.next_step
    return None if nxt is None else nxt - 1


class ScaleOutDaemon(LiveDaemon):
    """``aiops run`` with ``live.mode: scale_out`` (see the module docstring)."""

    def __init__(
        self, settings: Settings, rules: Rules, topology: Topology, *,
        registry: CollectorRegistry | None = None, out: IO[str] | None = None, step_s: float | None = None,
        changelog: KafkaChangelogStore | None = None,
    ) -> None:
        super().__init__(settings, rules, topology, registry=registry, out=out, kafka=True, step_s=step_s)
        self.rules = rules
        self.topology = topology
        self.step_s = self.pipeline.step_s
        group = settings.kafka.group_id
        self.detect_key = f"{group}/detect"
        self.correlator_key = f"{group}/correlator"
        self.acted_prefix = f"{group}/acted/"
        self._acted: set[str] = set()  # planned actions some correlator owner handed to its act stage
        self.journal = ActJournal(self._action_key)  # their ledger entries, for the next owner
        self.correlate_group = f"{group}.correlate"
        stale_s = settings.live.stale_s
        self.stale_steps = max(1, math.ceil(stale_s / self.step_s)) if stale_s > 0 else None
        self.partitions: int | None = None  # the input topics' partition count, read at start
        self.changelog = changelog
        self._parts: dict[int, _Partition] = {}
        self._parked: dict[int, _Partition] = {}  # revoked in a rebalance, saved; reused if handed back
        self._restoring = 0
        self._lock = asyncio.Lock()  # batches, rebalances and checkpoints of the detect halves, one at a time
        self._epoch = 0  # bumped by each rebalance: batches fetched before it are dropped (re-read after seek)
        self._producer: AIOKafkaProducer | None = None
        self._corr_consumer: AIOKafkaConsumer | None = None
        self._corr_lock = asyncio.Lock()
        self._owner = False
        self._corr_restoring = False
        self._corr_offset: int | None = None
        self._corr_dirty = False
        self._corr_last_save = time.monotonic()
        self._stopping = False
        self.correlate = CorrelateHalf(settings, rules, topology)
        self.gate = self._new_gate()
        # The daemon's own pipeline is never fed here; its counters (exported by StageCollector) add up
        # the work this instance did in its halves, so they only grow, whatever partitions come and go.
        self._counted: dict[object, dict[str, Any]] = {}
        reg = self.registry
        self.m_owned = Gauge("aiops_scaleout_partitions", "Input partitions this instance detects on", registry=reg)
        self.m_owner = Gauge("aiops_scaleout_correlator_owner", "1 while this instance owns the correlator",
                             registry=reg)
        self.m_restored = Counter("aiops_scaleout_restores", "State restores on assignment, by part and warmth",
                                  ["part", "how"], registry=reg)
        self.m_published = Counter("aiops_scaleout_signal_messages", "Messages published to the signals topic",
                                   registry=reg)
        self.m_dropped = Counter("aiops_scaleout_dropped_batches",
                                 "Batches fetched before a rebalance, dropped (their partitions are read again)",
                                 registry=reg)
        Gauge("aiops_scaleout_gate_late_items", "Signals and changes that reached the correlator after their step",
              registry=reg).set_function(lambda: self.gate.late_items)
        Gauge("aiops_scaleout_gate_duplicate_steps", "Repeated steps the gate dropped",
              registry=reg).set_function(lambda: self.gate.duplicate_steps)

    # -- wiring --------------------------------------------------------------------------------------

    def _new_gate(self, snapshot: dict[str, Any] | None = None) -> ProgressGate:
        if snapshot is not None:
            return ProgressGate.from_snapshot(snapshot, self.step_s, partitions=self.partitions,
                                              stale_steps=self.stale_steps, rejects=self.rejects)
        return ProgressGate(self.step_s, partitions=self.partitions, stale_steps=self.stale_steps,
                            rejects=self.rejects)

    def _kafka_source(self) -> KafkaSource:
        return KafkaSource(self.settings.kafka, self.rejects, self.metrics,
                           align_slack_s=self.settings.runtime.lateness_s / 2,
                           predictions_topic=self.settings.drift.predictions_topic, split_partitions=True,
                           on_revoked=self._on_revoked, on_assigned=self._on_assigned)

    def _ready(self) -> bool:
        return super()._ready() and self._restoring == 0 and not self._corr_restoring

    async def _restore(self) -> None:
        """Start-up: the changelog store, the signals topic and its producer (state is restored per partition)."""
        delay = 0.5
        for attempt in range(60):
            try:
                await self._connect()
                break
            except (KafkaError, OSError, RuntimeError) as exc:
                if attempt == 59:
                    raise
                log.warning("scaleout_connect_failed", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._state_loaded = True

    async def _connect(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        kw = kafka_client_kwargs(self.settings.kafka)
        live = self.settings.live
        probe = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **kw)
        await probe.start()
        try:
            await probe.topics()
            counts = [len(probe.partitions_for_topic(t) or ()) for t in self._input_topics()]
        finally:
            await probe.stop()
        partitions = max([1, *counts])
        self.partitions = partitions
        admin = AIOKafkaAdminClient(**kw)
        await admin.start()
        try:
            resp = await admin.create_topics([NewTopic(live.signals_topic, 1, 1)])
            code = resp.topic_errors[0][1]
            if code not in (0, 36):  # 36: already exists
                raise RuntimeError(f"cannot create signals topic {live.signals_topic}: error {code}")
        finally:
            await admin.close()
        if self.changelog is None:
            self.changelog = KafkaChangelogStore(kw, topic=live.changelog_topic, partitions=partitions,
                                                 registry=self.registry)
        await self.changelog.start()
        self._producer = AIOKafkaProducer(acks="all", linger_ms=0, max_request_size=4 * 1024 * 1024, **kw)
        await self._producer.start()
        log.info("scaleout_started", partitions=partitions, signals_topic=live.signals_topic,
                 changelog_topic=self.changelog.topic, group=self.settings.kafka.group_id,
                 correlate_group=self.correlate_group)

    def _input_topics(self) -> list[str]:
        k = self.settings.kafka
        return [t for t in (k.metrics_topic, k.logs_topic, k.events_topic, self.settings.drift.predictions_topic) if t]

    async def _seek_to_checkpoint(self) -> None:
        """Nothing to do here: each partition seeks when it is assigned (:meth:`_on_assigned`)."""

    # -- rebalances of the detect group ----------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            self._epoch += 1
            numbers = sorted({tp.partition for tp in revoked} & set(self._parts))
            for p in numbers:
                part = self._parts.pop(p)
                await self._save_partition(part)
                self._parked[p] = part
            self.m_owned.set(len(self._parts))
            if numbers:
                log.info("partitions_revoked", partitions=numbers)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self._epoch += 1
            numbers = sorted({tp.partition for tp in assigned})
            self._restoring += 1
            try:
                for p in numbers:
                    if p in self._parts:
                        continue
                    parked = self._parked.pop(p, None)
                    self._parts[p] = parked if parked is not None else await self._load_partition(p)
                for gone in self._parked.values():  # given to another member: its state is in the changelog
                    self._counted.pop(gone.half, None)
                self._parked.clear()
            finally:
                self._restoring -= 1
            consumer = self.kafka.consumer if self.kafka is not None else None
            if consumer is not None and self.kafka is not None:
                # The consumer may fetch the new partitions (from the group's committed offsets) while
                # the states above load, and batches of those records may already sit in the inbox with
                # this rebalance's epoch or be held by the source. Fed as well as read again after the
                # seek, records newer than the restored watermark went into the half twice (log lines
                # counted twice, "duplicate_sample" rejects; the fault test's incident then differed from
                # one pipeline's). So every assigned position is set here, from where the restored state
                # stands, everything fetched before is dropped, and the epoch moves on once more.
                for tp in assigned:
                    part = self._parts.get(tp.partition)
                    off = part.offsets.get(tp) if part is not None else None
                    if off is None:
                        off = await self._start_offset(consumer, tp)
                    if off is not None:
                        consumer.seek(tp, off)
                        self.kafka._forget_held(tp)
                self._epoch += 1
            self.m_owned.set(len(self._parts))
            log.info("partitions_assigned", partitions=numbers)

    async def _start_offset(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
        """Where a partition the restored state never read from starts: the group's commit, else the reset policy."""
        try:
            committed = await asyncio.wait_for(consumer.committed(tp), 10.0)
            if committed is not None:
                return int(committed)
            ends = (consumer.beginning_offsets if self.settings.kafka.auto_offset_reset == "earliest"
                    else consumer.end_offsets)
            return int((await asyncio.wait_for(ends([tp]), 10.0))[tp])
        except (KafkaError, TimeoutError) as exc:
            log.warning("kafka_start_offset_unknown", topic=tp.topic, partition=tp.partition, error=repr(exc))
            return None

    async def _load_partition(self, p: int) -> _Partition:
        assert self.changelog is not None
        half = DetectHalf(self.settings, self.rules, self.rejects, step_s=self.step_s)
        started = time.perf_counter()
        cp = None
        try:
            cp = await self.changelog.load_checkpoint(p, self.detect_key)
        except (KafkaError, OSError, TimeoutError, ValueError) as exc:
            # Cold is safe (the group's committed offsets are only ever those of a saved state), warm is better.
            log.error("partition_restore_failed", partition=p, error=repr(exc))
        part = _Partition(p, half)
        if cp is not None:
            try:
                restore_detect(half, cp.state)
            except IncompatibleState as exc:
                await self.changelog.set_aside(p, self.detect_key, "incompatible_state", str(exc))
                cp = None
                part = _Partition(p, DetectHalf(self.settings, self.rules, self.rejects, step_s=self.step_s))
        if cp is not None:
            part.offsets = {TopicPartition(t, q): o for (t, q), o in cp.offsets.items() if q == p}
            part.published = _through(half)  # published before it was saved (signals before checkpoints)
        self._count(part.half, part.half.stats, baseline=True)
        how = "warm" if cp is not None else "cold"
        self.m_restored.labels("detect", how).inc()
        log.info("partition_restored", partition=p, warm=cp is not None,
                 event_ts=cp.created_event_ts if cp is not None else None,
                 next_step=half.next_step, steps=half.stats.steps, samples=half.stats.metric_samples,
                 offsets={f"{tp.topic}/{tp.partition}": o for tp, o in sorted(part.offsets.items())},
                 seconds=round(time.perf_counter() - started, 3))
        return part

    async def _save_partition(self, part: _Partition) -> bool:
        """Checkpoint one partition's half with its offsets, then commit them; ``True`` once saved."""
        assert self.changelog is not None
        if not part.dirty:
            return True
        started = time.perf_counter()
        try:
            state = await asyncio.to_thread(snapshot_detect, part.half)
            wm = part.half.reorder.watermark
            await self.changelog.save(part.number, self.detect_key, state,
                                      event_ts=wm if math.isfinite(wm) else None,
                                      offsets={(tp.topic, tp.partition): o for tp, o in part.offsets.items()})
        except Exception as exc:  # noqa: BLE001 - broker trouble: keep running, do not commit
            log.error("checkpoint_failed", partition=part.number, error=repr(exc))
            return False
        part.dirty = False
        log.info("checkpoint_taken", partition=part.number, seconds=round(time.perf_counter() - started, 3),
                 offsets={f"{tp.topic}/{tp.partition}": o for tp, o in sorted(part.offsets.items())})
        if self.kafka is not None and part.offsets:
            self.kafka.mark_processed(KafkaBatch(records=[], offsets=dict(part.offsets), messages=0))
            await self.kafka.commit()
        return True

    # -- detection -----------------------------------------------------------------------------------

    async def _consume_kafka(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._guard("correlator", self._correlate_loop()))
            assert self.kafka is not None
            async for batch in self.kafka.batches():
                await self.inbox.put(_Epoch(batch.records, "kafka", batch.received, batch, epoch=self._epoch))
            self._stopping = True

    async def _handle(self, item: InboxItem) -> None:
        if item.kafka is None:
            for _ in item.records:
                self.rejects.reject("runtime", "scale_out_needs_kafka", detail=f"from {item.source}")
            if item.source == "remote_write":
                async with self._http_room:
                    self._http_queued -= len(item.records)
                    self._http_room.notify_all()
            return
        now_wall = self.clock()
        self._last_input_wall = now_wall
        async with self._lock:
            if getattr(item, "epoch", -1) != self._epoch:
                self.m_dropped.inc()  # its partitions were sought back to their saved offsets: read again
                return
            batch = item.kafka
            steps: dict[int, list[ClosedStep]] = {}
            for p, records in batch.by_partition.items():
                part = self._parts.get(p)
                if part is None:
                    continue
                steps[p] = part.half.feed_many(records)
                part.dirty = True
            for tp, off in batch.offsets.items():
                part = self._parts.get(tp.partition)
                if part is not None and off > part.offsets.get(tp, -1):
                    part.offsets[tp] = off
                    part.dirty = True
            if item.records:
                newest = max(r.ts for r in item.records)
                if self._newest_ts is None or newest > self._newest_ts:
                    self._newest_ts, self._newest_wall = newest, now_wall
            self.processed_records += len(item.records)
            await self._publish(steps)
        self.metrics.processing.observe(time.monotonic() - item.received)
        if self._newest_ts is not None:
            self.metrics.event_lag.set(now_wall - self._newest_ts)

    def _count(self, key: object, stats: PipelineStats, *, baseline: bool = False) -> None:
        """Add what ``stats`` counted since the last call for ``key`` to the instance's counters.

        ``baseline``: only remember where ``stats`` stands (state restored from another instance).
        """
        now = {f: getattr(stats, f) for f in _COUNTS}
        now["signals_by_kind"] = dict(stats.signals_by_kind)
        before = self._counted.get(key)
        self._counted[key] = now
        if baseline:
            return
        total = self.pipeline.stats
        for f in _COUNTS:
            setattr(total, f, getattr(total, f) + now[f] - (before[f] if before else 0))
        for kind, n in now["signals_by_kind"].items():
            old = before["signals_by_kind"].get(kind, 0) if before else 0
            total.signals_by_kind[kind] = total.signals_by_kind.get(kind, 0) + n - old
        total.first_ts = min(total.first_ts, stats.first_ts)
        total.last_ts = max(total.last_ts, stats.last_ts)

    def _caught_up(self, part: _Partition) -> bool:
        """Whether this instance has processed everything partition ``part`` holds (as far as it knows)."""
        consumer = self.kafka.consumer if self.kafka is not None else None
        if consumer is None:
            return False
        tps = [tp for tp in consumer.assignment() if tp.partition == part.number]
        if not tps:
            return False
        for tp in tps:
            high = consumer.highwater(tp)
            if high is None or part.offsets.get(tp, 0) < high:
                return False
        return True

    def _follow(self, steps: dict[int, list[ClosedStep]]) -> None:
        """Caught-up halves follow the instance's event time, as partitions sharing one reorder buffer do.

        A partition whose services went quiet would otherwise never close another step and hold
        the correlator back for good. Only caught-up ones: a partition with unread records (one
        just taken over, say) must not be moved past them, or they would all be late.
        """
        if self._newest_ts is None:
            return
        for p, part in self._parts.items():
            if part.half.next_step is not None and part.half.reorder._max_ts < self._newest_ts \
                    and self._caught_up(part):
                closed = part.half.advance(self._newest_ts)
                if closed:
                    steps.setdefault(p, []).extend(closed)
                    part.dirty = True

    async def _publish(self, steps: dict[int, list[ClosedStep]]) -> None:
        """Send every half's new steps and progress; returns once all are acknowledged (acks=all)."""
        assert self._producer is not None
        self._follow(steps)
        topic = self.settings.live.signals_topic
        started = [t for t in (_through(p.half) for p in self._parts.values()) if t is not None]
        vouch = max(started) if started else None
        futures = []
        for p, part in sorted(self._parts.items()):
            through = _through(part.half)
            new = steps.get(p, [])
            if through is not None:
                if not new and part.published is not None and through <= part.published:
                    continue
                msg = steps_message(p, self.step_s, new, through)
                part.published = through
            elif not self._caught_up(part):
                continue
            elif vouch is not None and (part.vouched is None or vouch > part.vouched):
                msg = steps_message(p, self.step_s, (), None, idle_through=vouch)
                part.vouched = vouch
            elif vouch is None and part.vouched is None:
                msg = steps_message(p, self.step_s, (), None, empty=True)
                part.vouched = -1  # said once; a later vouch (any real step) still goes out
            else:
                continue
            futures.append(await self._producer.send(topic, encode_message(msg), key=str(p).encode()))
        if futures:
            await asyncio.gather(*futures)
            self.m_published.inc(len(futures))
        for part in self._parts.values():
            self._count(part.half, part.half.stats)

    async def _idle_advance(self) -> None:
        """No input for ``live.idle_advance_s``: caught-up halves follow the wall clock (as the single daemon).

        Also reports partitions that are caught up but never had a record, so an instance whose
        partitions are all empty still tells the correlator not to wait for them.
        """
        if self.kafka is None or not self.kafka.connected:
            now_wall = self.clock()
            self._newest_wall = self._last_input_wall = now_wall
            return
        steps: dict[int, list[ClosedStep]] = {}
        now_wall = self.clock()
        async with self._lock:
            if self._newest_ts is not None and now_wall - self._last_input_wall >= self.settings.live.idle_advance_s:
                target = self._newest_ts + (now_wall - self._newest_wall)
                for p, part in self._parts.items():
                    if part.half.next_step is not None and self._caught_up(part):
                        closed = part.half.advance(target)
                        if closed:
                            steps[p] = closed
                            part.dirty = True
            await self._publish(steps)

    async def _maybe_checkpoint(self) -> None:
        if self.checkpointer_due():
            await self._checkpoint()

    def checkpointer_due(self) -> bool:
        return time.monotonic() - self._corr_last_save >= self.settings.live.checkpoint_interval_s

    async def _checkpoint(self) -> None:
        """Every interval: each dirty partition's half, then the correlator if this instance owns it."""
        self._corr_last_save = time.monotonic()
        async with self._lock:
            for part in list(self._parts.values()):
                await self._save_partition(part)
        async with self._corr_lock:
            await self._save_correlator()

    # -- the correlator ------------------------------------------------------------------------------

    async def _correlate_loop(self) -> None:
        kw = kafka_client_kwargs(self.settings.kafka)
        consumer = AIOKafkaConsumer(group_id=self.correlate_group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **kw)
        self._corr_consumer = consumer
        consumer.subscribe([self.settings.live.signals_topic], listener=_Ownership(self))
        await consumer.start()
        try:
            while not self._stopping:
                fetched = await consumer.getmany(timeout_ms=500, max_records=1000)
                async with self._corr_lock:
                    if not self._owner:
                        continue
                    for msgs in fetched.values():
                        for msg in msgs:
                            self._take(msg.value, msg.offset)
                    await self._release()
        finally:
            self._corr_consumer = None
            async with self._corr_lock:
                await self._save_correlator()
                self._owner = False
            await consumer.stop()

    def _take(self, value: bytes | None, offset: int) -> None:
        try:
            self.gate.add(decode_message(value))
        except WireError as exc:
            self.rejects.reject("signals", exc.reason, where=f"{self.settings.live.signals_topic}@{offset}",
                                detail=exc.detail)
        self._corr_offset = offset + 1
        self._corr_dirty = True

    async def _release(self) -> None:
        steps = self.gate.close()
        if not steps:
            return
        await self._start_act(steps[0].ts)
        await self._dispatch(self.correlate.on_steps(steps))
        self._count("correlate", self.correlate.stats)

    async def _dispatch(self, decisions: list[Decision]) -> None:
        """As the single daemon's, with the act stage ticking on the correlator's event time."""
        for d in decisions:
            self._emit(d)
            if self.act is None or self._act_next_tick is None:
                continue
            if isinstance(d, Action) and d.outcome is ActionOutcome.PLANNED and not await self._hand_over(d):
                continue
            if isinstance(d, Incident) or (isinstance(d, Action) and d.outcome is ActionOutcome.PLANNED):
                await self._act_tick(d.ts)
                await self._emit_all(await self.act.on_decision(d), acted=True)
        await self._act_tick(self.gate.watermark)
        if decisions and self.out is not None:
            self.out.flush()
        self.metrics.open_incidents.set(len(self._open))

    def _acted_key(self, a: Action) -> str:
        return self._action_key(a.incident_id, a.type, a.target)

    def _action_key(self, incident_id: str, kind: str, target: tuple[tuple[str, str], ...]) -> str:
        crc = zlib.crc32(json.dumps(sorted(target), separators=(",", ":")).encode())
        incident, kind = (re.sub(r"[^A-Za-z0-9_.=:-]", "_", x) for x in (incident_id, kind))
        return f"{self.acted_prefix}{incident}/{kind}/{crc:08x}"

    async def _journal_entries(self, entries: Sequence[LedgerEntry]) -> None:
        """The act stage wrote ledger entries: store each touched action's history under its marker key.

        Awaited by the executor before any actuator call, so the next owner never knows less than
        was done. A failed write is logged and raised as :class:`JournalError`: the executor then
        does not run an action the entries would start (it fails it and escalates: a next owner not
        knowing it ran might run it again); other entries stand, and a next owner continues from
        the entry before (an action it sees executing is failed as in doubt).
        """
        if not self._owner or self.changelog is None:
            # An approval posted to an instance that does not own the correlator lands in its own
            # ledger only; the owner never sees it (approve on the owner).
            log.warning("act_journal_not_owner", entries=len(entries))
            return
        core = self.act.executor.core if self.act is not None else None
        failed: list[str] = []
        for key, value in self.journal.record(entries, core.incident if core is not None else lambda _: None).items():
            try:
                await self.changelog.save(CORRELATOR_PARTITION, key, value, event_ts=max(e.ts for e in entries))
            except Exception as exc:  # noqa: BLE001 - broker trouble: reported to the executor below
                log.error("act_journal_failed", key=key, error=repr(exc))
                failed.append(repr(exc))
        if failed:
            raise JournalError(failed[0])

    def _import_act(self) -> None:
        """A new owner takes over what earlier owners' act stages were tracking (see aiops/act/handover.py).

        The journal's entries its own ledger lacks are appended to it, so its act stage continues
        approval waits and verifications; the act stage is started again at the next release, which
        fails an action left executing as in doubt (it may have run) and escalates it.
        """
        if self.act is None:
            return
        self.act.executor.journal = self._journal_entries
        ledger = self.act.executor.ledger
        wm = self.gate.watermark
        since = wm - self.act.retention_s if math.isfinite(wm) and self.act.retention_s is not None else None
        missing = self.journal.missing(ledger.book, since)
        ledger.append(missing)
        for inc in self.journal.incidents():
            self.act.executor.core.remember(inc)
        self._act_next_tick = None
        pending = sorted({ledger.book.get(e.action_id).state.value for e in missing  # type: ignore[union-attr]
                          if ledger.book.get(e.action_id) is not None})
        log.info("act_tracking_imported", entries=len(missing), actions=len({e.action_id for e in missing}),
                 states=pending, journaled=len(self.journal), unreadable=self.journal.unreadable)

    async def _hand_over(self, a: Action) -> bool:
        """Whether this planned action goes to the act stage: not if an earlier correlator owner handed it over.

        The action ledger is per instance, so after a failover the decisions replayed since the last
        correlator checkpoint would reach a ledger that never saw them. A marker in the changelog,
        written (acks=all) before the action goes to the act stage, makes the hand-over at most once:
        an owner that died between the marker and the action leaves it not run (as the ledger's
        "in doubt" does), never run twice.
        """
        assert self.changelog is not None
        key = self._acted_key(a)
        if key in self._acted:
            log.warning("action_already_handed_over", incident_id=a.incident_id, type=a.type, key=key)
            return False
        context = self.act.executor.core.incident(a.incident_id) if self.act is not None else None
        try:
            await self.changelog.save(CORRELATOR_PARTITION, key,
                                      self.journal.value(key, a.incident_id, a.type, a.target, context),
                                      event_ts=a.ts)
        except Exception as exc:  # noqa: BLE001 - unrecorded: hand it over anyway (the single daemon's guarantee)
            log.error("action_marker_failed", incident_id=a.incident_id, type=a.type, error=repr(exc))
        self._acted.add(key)
        return True

    async def _acquire_correlator(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """This instance now owns the signals partition: restore the correlator and seek to its offset."""
        assert self.changelog is not None
        self._corr_restoring = True
        try:
            async with self._corr_lock:
                self.correlate = CorrelateHalf(self.settings, self.rules, self.topology)
                self.gate = self._new_gate()
                self._corr_offset = None
                cp = None
                try:
                    cp = await self.changelog.load_checkpoint(CORRELATOR_PARTITION, self.correlator_key)
                except (KafkaError, OSError, TimeoutError, ValueError) as exc:
                    log.error("correlator_restore_failed", error=repr(exc))
                firing, open_incidents = FiringAlerts(), ()
                if cp is not None:
                    try:
                        restore_correlate(self.correlate, cp.state["correlate"])
                        self.gate = self._new_gate(cp.state["gate"])
                        firing, open_incidents = live_part_in(cp.state.get(LIVE_KEY), log)
                    except (IncompatibleState, KeyError, TypeError, ValueError) as exc:
                        await self.changelog.set_aside(CORRELATOR_PARTITION, self.correlator_key,
                                                       "incompatible_state", str(exc))
                        self.correlate = CorrelateHalf(self.settings, self.rules, self.topology)
                        self.gate = self._new_gate()
                        cp = None
                try:
                    markers = await self.changelog.restore(CORRELATOR_PARTITION, prefix=self.acted_prefix)
                    self._acted = set(markers)
                    self.journal.load({k: m.state for k, m in markers.items()})
                except (KafkaError, OSError, TimeoutError, ValueError) as exc:
                    log.error("action_markers_unread", error=repr(exc))
                self._import_act()
                offset = cp.offsets.get((tp.topic, tp.partition)) if cp is not None else None
                if offset is not None:
                    consumer.seek(tp, offset)
                    self._corr_offset = offset
                self._reannounce(firing, open_incidents)
                self.metrics.open_incidents.set(len(self._open))
                self._count("correlate", self.correlate.stats, baseline=True)
                self._owner = True
                self._corr_dirty = False
                self.m_owner.set(1)
                self.m_restored.labels("correlator", "warm" if cp is not None else "cold").inc()
                log.info("correlator_acquired", warm=cp is not None, offset=offset,
                         next_step=self.gate.next_step, firing=len(self._firing.alerts()),
                         actions_handed=len(self._acted))
        finally:
            self._corr_restoring = False

    async def _release_correlator(self) -> None:
        async with self._corr_lock:
            if not self._owner:
                return
            await self._save_correlator()
            self._owner = False
            self.m_owner.set(0)
            log.info("correlator_released", offset=self._corr_offset)

    async def _save_correlator(self) -> None:
        """Checkpoint correlator, decider, gate and firing alerts with the signals offset, then commit it."""
        if not self._owner or not self._corr_dirty or self._corr_offset is None:
            return
        assert self.changelog is not None
        self._forget_escalations()
        state = {"correlate": snapshot_correlate(self.correlate), "gate": self.gate.snapshot(),
                 LIVE_KEY: live_part_out(self._firing, self._open)}
        tp = TopicPartition(self.settings.live.signals_topic, 0)
        wm = self.gate.watermark
        try:
            await self.changelog.save(CORRELATOR_PARTITION, self.correlator_key, state,
                                      event_ts=wm if math.isfinite(wm) else None,
                                      offsets={(tp.topic, tp.partition): self._corr_offset})
        except Exception as exc:  # noqa: BLE001 - keep running, do not commit
            log.error("checkpoint_failed", part="correlator", error=repr(exc))
            return
        self._corr_dirty = False
        log.info("correlator_checkpoint_taken", offset=self._corr_offset, next_step=self.gate.next_step,
                 late_items=self.gate.late_items, duplicate_steps=self.gate.duplicate_steps,
                 waiting_for=self.gate.waiting_for())
        consumer = self._corr_consumer
        if consumer is not None and tp in consumer.assignment():
            try:
                await asyncio.wait_for(consumer.commit({tp: self._corr_offset}), 5.0)
            except (KafkaError, TimeoutError) as exc:
                log.warning("kafka_commit_failed", part="correlator", error=repr(exc))

    # -- shutdown --------------------------------------------------------------------------------------

    async def _drain(self, readers: list[asyncio.Task[None]], processor: asyncio.Task[None]) -> None:
        self._stopping = True
        await super()._drain(readers, processor)
        await self._checkpoint()

    async def _close_everything(self) -> None:
        self._stopping = True
        for closer in (self._producer, self.changelog):
            if closer is None:
                continue
            try:
                await closer.stop() if isinstance(closer, AIOKafkaProducer) else await closer.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the exit code
                log.warning("scaleout_close_failed", error=repr(exc))
        await super()._close_everything()


_COUNTS = ("metric_samples", "log_lines", "change_events", "predictions", "steps", "points", "signals",
           "incidents", "alerts", "actions")


@dataclass(slots=True)
class _Epoch(InboxItem):
    """A Kafka batch with the rebalance epoch it was fetched in."""

    epoch: int = 0


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    """The signals partition coming to / leaving this instance: correlator failover by the group."""

    def __init__(self, daemon: ScaleOutDaemon) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self.daemon._release_correlator()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.daemon._corr_consumer
        for tp in assigned:
            if consumer is not None:
                await self.daemon._acquire_correlator(consumer, tp)


__all__ = ["ScaleOutDaemon"]
