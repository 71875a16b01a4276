"""The live shell of ``aiops run``: asyncio, sources, sinks, HTTP and signals around the same Pipeline.

Everything that waits lives here; the :class:`~aiops.runtime.pipeline.Pipeline` it drives is the
exact synchronous core that replay runs, so a live run and a replay of the same records decide
the same things.

Data flow::

    Kafka consumer ─┐ (KafkaBatch: records + offsets)
    remote write  ──┼──> inbox (bounded asyncio.Queue) ──> processor: pipeline.feed_many()
    PromQL poller ─┘                                           │   mark offsets processed, commit
                                                               └─> decisions: sinks.send(alert), actions, --out

* **Backpressure** — the inbox is bounded (``kafka.queue_batches`` batches from Kafka, HTTP
  handlers wait on the same queue), so a slow pipeline stops the consumer from fetching and
  slows remote-write responses instead of growing memory.
* **Offsets** — committed only for batches the processor has fed to the pipeline.
* **Idle sources** — with no input for ``live.idle_advance_s``, event time is moved forward as
  far as the wall clock moved since the newest record arrived (``Pipeline.advance``), so
  incidents still resolve when telemetry stops; historic data replayed through Kafka is not
  disturbed because only wall time *since the last record* is added.
* **Supervision** — one ``asyncio.TaskGroup`` owns every task; a task that dies is logged,
  counted and takes the daemon down with exit code 1 (after committing what was processed).
* **SIGTERM / SIGINT** — stop reading, drain the inbox through the pipeline, finish it, flush
  sinks, commit offsets, exit 0, all within ``live.shutdown_timeout_s``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
from prometheus_client import CollectorRegistry

from aiops.config import Settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import Rules
from aiops.notify.base import Sink
from aiops.observe.http import HttpServer
from aiops.observe.metrics import SelfMetrics, StageCollector
from aiops.observe.rejects import Rejects
from aiops.records import Action, Alert, Decision, Incident, IncidentStatus, MetricSample, Record, to_output
from aiops.runtime.pipeline import Pipeline
from aiops.sources.kafka import KafkaBatch, KafkaSource

log = structlog.get_logger(__name__)

ActionHandler = Callable[[Action], Awaitable[None]]


@dataclass(slots=True)
class InboxItem:
    """Records from one source delivery; ``kafka`` carries the offsets to commit once processed."""

    records: list[Record]
    source: str
    received: float
    kafka: KafkaBatch | None = None


_STOP = InboxItem([], "stop", 0.0)


def build_sinks(settings: Settings, metrics: SelfMetrics) -> list[Sink]:
    """Every sink the settings configure: Alertmanager URLs, a webhook URL, a Kafka alerts topic."""
    sinks: list[Sink] = []
    if settings.alertmanager.urls:
        from aiops.notify.alertmanager import AlertmanagerSink

        sinks.append(AlertmanagerSink(settings.alertmanager, metrics))
    if settings.webhook.url:
        from aiops.notify.webhook import WebhookSink

        sinks.append(WebhookSink(settings.webhook, metrics))
    if settings.kafka.alerts_topic:
        from aiops.notify.kafka_sink import KafkaAlertSink

        sinks.append(KafkaAlertSink(settings.kafka, metrics))
    return sinks


class LiveDaemon:
    """Runs the pipeline on live sources until ``stop`` is set; see the module docstring."""

    def __init__(
        self, settings: Settings, rules: Rules, topology: Topology, *,
        registry: CollectorRegistry | None = None, out: IO[str] | None = None,
        kafka: bool = True, step_s: float | None = None, on_action: ActionHandler | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = SelfMetrics(self.registry)
        self.rejects = Rejects(registry=self.registry)
        self.pipeline = Pipeline(settings, rules, topology, self.rejects, step_s=step_s, registry=self.registry)
        self.registry.register(StageCollector(lambda: self.pipeline.stats))
        self.out = out
        self.clock = clock
        self.on_action = on_action
        self.sinks = build_sinks(settings, self.metrics)
        self.kafka = self._kafka_source() if kafka else None
        self.inbox: asyncio.Queue[InboxItem] = asyncio.Queue(maxsize=settings.kafka.queue_batches)
        self.remote_write = None
        routes: dict[tuple[str, str], Any] = {}
        if settings.http.remote_write:
            from aiops.sources.remote_write import RemoteWriteReceiver

            self.remote_write = RemoteWriteReceiver(self._deliver_samples, self.rejects, self.metrics,
                                                    settings.http.max_body_bytes)
            routes[("POST", "/api/v1/write")] = self.remote_write.handle
        self.poller = None
        if settings.prometheus.url and settings.prometheus.queries:
            from aiops.sources.prometheus_poll import PrometheusPoller

            self.poller = PrometheusPoller(settings.prometheus, self.pipeline.step_s, self.rejects, self.metrics)
        self.http = HttpServer(settings.http.host, settings.http.port, self.registry, self._ready, routes,
                               settings.http.max_body_bytes)
        self._state_loaded = True  # no checkpoint restore yet: a fresh pipeline is loaded state
        self._sources_connected = False
        self._open: set[str] = set()
        self._newest_ts: float | None = None
        self._newest_wall = 0.0
        self._last_input_wall = 0.0
        self.processed_records = 0
        self._actions: asyncio.Queue[Action] = asyncio.Queue()
        self._http_room = asyncio.Condition()
        self._http_queued = 0

    def _kafka_source(self) -> KafkaSource:
        # Partitions are aligned to half the reorder buffer's lateness: the other half absorbs
        # disorder inside a partition.
        return KafkaSource(self.settings.kafka, self.rejects, self.metrics,
                           align_slack_s=self.settings.runtime.lateness_s / 2)

    # -- readiness -----------------------------------------------------------------------

    def _ready(self) -> bool:
        return self._sources_connected and self._state_loaded

    # -- sources -------------------------------------------------------------------------

    async def _deliver_samples(self, samples: list[MetricSample]) -> None:
        # Push back on the HTTP client (Prometheus waits and keeps its own queue) while more than
        # live.queue_size pushed records are waiting for the pipeline.
        async with self._http_room:
            await self._http_room.wait_for(
                lambda: self._http_queued == 0 or self._http_queued + len(samples) <= self.settings.live.queue_size)
            self._http_queued += len(samples)
        await self.inbox.put(InboxItem(list(samples), "remote_write", time.monotonic()))

    async def _consume_kafka(self) -> None:
        assert self.kafka is not None
        async for batch in self.kafka.batches():
            await self.inbox.put(InboxItem(batch.records, "kafka", batch.received, batch))

    async def _poll(self) -> None:
        assert self.poller is not None
        async for samples in self.poller.run():
            await self.inbox.put(InboxItem(list(samples), "prometheus", time.monotonic()))

    async def _start_kafka(self, stop: asyncio.Event) -> bool:
        """Connect, retrying with backoff until it works or we are told to stop."""
        assert self.kafka is not None
        delay = 0.5
        while not stop.is_set():
            try:
                await self.kafka.start()
                return True
            except Exception as exc:  # noqa: BLE001 - any connection failure is retried, never fatal
                log.warning("kafka_connect_failed", error=repr(exc), retry_in_s=delay)
                self.kafka = self._kafka_source()
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
        return False

    # -- processing ----------------------------------------------------------------------

    async def _process(self) -> None:
        idle = self.settings.live.idle_advance_s
        while True:
            try:
                item = await asyncio.wait_for(self.inbox.get(), timeout=idle)
            except TimeoutError:
                self._idle_advance()
                continue
            if item is _STOP:
                return
            await self._handle(item)

    async def _handle(self, item: InboxItem) -> None:
        now_wall = self.clock()
        self._last_input_wall = now_wall
        if item.records:
            newest = max(r.ts for r in item.records)
            if self._newest_ts is None or newest > self._newest_ts:
                self._newest_ts = newest
                self._newest_wall = now_wall
            decisions = self.pipeline.feed_many(item.records)
            self.processed_records += len(item.records)
            self._dispatch(decisions)
        if item.kafka is not None and self.kafka is not None:
            self.kafka.mark_processed(item.kafka)
            await self.kafka.maybe_commit()
        elif item.source == "remote_write":
            async with self._http_room:
                self._http_queued -= len(item.records)
                self._http_room.notify_all()
        self.metrics.processing.observe(time.monotonic() - item.received)
        if self._newest_ts is not None:
            self.metrics.event_lag.set(now_wall - self._newest_ts)

    def _idle_advance(self) -> None:
        if self._newest_ts is None:
            return
        now_wall = self.clock()
        if now_wall - self._last_input_wall < self.settings.live.idle_advance_s:
            return
        target = self._newest_ts + (now_wall - self._newest_wall)
        self._dispatch(self.pipeline.advance(target))

    def _dispatch(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Incident):
                self.metrics.decisions.labels("incident", d.status.value).inc()
                if d.status is IncidentStatus.RESOLVED:
                    self._open.discard(d.id)
                else:
                    self._open.add(d.id)
                top = d.root_causes[0].service if d.root_causes else None
                log.info("incident", incident_id=d.id, status=d.status.value, root_cause=top,
                         services=list(d.services), severity=d.severity)
            elif isinstance(d, Alert):
                self.metrics.decisions.labels("alert", d.status.value).inc()
                for sink in self.sinks:
                    sink.send(d)
            elif isinstance(d, Action):
                self.metrics.decisions.labels("action", d.outcome.value).inc()
                self.metrics.actions.labels(d.type, d.outcome.value).inc()
                log.info("action", incident_id=d.incident_id, type=d.type, target=dict(d.target),
                         outcome=d.outcome.value, dry_run=d.dry_run, reason=d.reason)
                if self.on_action is not None:
                    # The act stage owns execution; it gets planned actions in order, off the hot path.
                    self._actions.put_nowait(d)
            if self.out is not None:
                self.out.write(json.dumps(to_output(d), separators=(",", ":")) + "\n")
        if decisions and self.out is not None:
            self.out.flush()
        self.metrics.open_incidents.set(len(self._open))

    async def _run_actions(self) -> None:
        assert self.on_action is not None
        while True:
            await self.on_action(await self._actions.get())

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set, then shut down gracefully; return the process exit code."""
        await self.http.start()
        for sink in self.sinks:
            await sink.start()
        code = 0
        try:
            if self.kafka is not None and not await self._start_kafka(stop):
                return 0  # told to stop before the broker ever answered
            self._sources_connected = True
            self.metrics.ready.set(1)
            log.info("daemon_ready", kafka=self.kafka is not None, remote_write=self.remote_write is not None,
                     poller=self.poller is not None, sinks=[s.name for s in self.sinks])
            code = await self._supervise(stop)
        finally:
            self.metrics.ready.set(0)
            await self._close_everything()
        return code

    async def _supervise(self, stop: asyncio.Event) -> int:
        timeout = self.settings.live.shutdown_timeout_s
        failed = False
        try:
            async with asyncio.TaskGroup() as tg:
                processor = tg.create_task(self._guard("processor", self._process()))
                readers: list[asyncio.Task[None]] = []
                if self.kafka is not None:
                    readers.append(tg.create_task(self._guard("kafka_consumer", self._consume_kafka())))
                if self.poller is not None:
                    readers.append(tg.create_task(self._guard("prometheus_poller", self._poll())))
                helpers = [tg.create_task(self._guard(f"sink_{s.name}", s.run())) for s in self.sinks]
                if self.on_action is not None:
                    helpers.append(tg.create_task(self._guard("act", self._run_actions())))
                await stop.wait()
                log.info("shutdown_started", timeout_s=timeout)
                started = time.monotonic()
                try:
                    await asyncio.wait_for(self._drain(readers, processor), timeout)
                except TimeoutError:
                    log.error("shutdown_timeout", stage="drain", timeout_s=timeout)
                    for t in (*readers, processor):
                        t.cancel()
                    failed = True
                finally:
                    for t in helpers:
                        t.cancel()
                log.info("shutdown_drained", seconds=round(time.monotonic() - started, 3),
                         records=self.processed_records)
        except* Exception as group:
            for exc in group.exceptions:
                log.error("task_failed", error=repr(exc))
            failed = True
        return 1 if failed else 0

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.task_failures.labels(name).inc()
            log.exception("task_died", task=name)
            raise

    async def _drain(self, readers: list[asyncio.Task[None]], processor: asyncio.Task[None]) -> None:
        # 1. stop reading: no new fetches, HTTP sources answer 503 (Prometheus retries later).
        if self.kafka is not None:
            self.kafka.request_stop()
        if self.remote_write is not None:
            self.remote_write.accepting = False
        if self.poller is not None:
            self.poller.stop()
        await asyncio.gather(*readers, return_exceptions=True)
        # 2. drain in-flight records through the pipeline, then end it as replay does.
        await self.inbox.put(_STOP)
        await processor
        self._dispatch(self.pipeline.finish())
        # 3. commit offsets of everything processed (sinks flush in _close_everything).
        if self.kafka is not None:
            await self.kafka.commit()

    async def _close_everything(self) -> None:
        timeout = self.settings.live.shutdown_timeout_s
        await asyncio.gather(*(s.close(timeout / 2) for s in self.sinks), return_exceptions=True)
        if self.kafka is not None:
            try:
                await self.kafka.stop()
            except Exception as exc:  # noqa: BLE001 - closing a broken connection must not hide the exit code
                log.warning("kafka_close_failed", error=repr(exc))
        await self.http.stop()
        if self.out is not None:
            self.out.flush()
        log.info("daemon_stopped", records=self.processed_records, rejected=self.rejects.total)


def tune_gc() -> None:
    """Process-wide GC settings for a long-running streaming daemon (call once at start).

    The hot path allocates a record per sample and keeps little of it, so CPython's default
    generation-0 threshold (700 allocations) runs a collection every few hundred samples and
    rescans the long-lived pipeline state on each older-generation pass. Freezing what exists
    after start-up (rules, models, state) and collecting less often cut CPU per sample by
    10-40 % in bench/kafka_throughput.py. Memory stays bounded: cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the daemon drains and exits 0."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def run_command(settings: Settings, *, out: Path | None, kafka: bool, step_s: float | None) -> int:
    """``aiops run``: load rules and topology, serve until SIGTERM; the exit code says how it ended."""
    import sys

    from aiops.decide.rules import RulesError, load_rules

    try:
        rules = load_rules(settings.rules_dir)
    except RulesError as exc:
        print(f"aiops run: {exc}", file=sys.stderr)
        return 2
    topology = Topology.from_mapping(rules.topology_mapping())

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        stream = out.open("a", encoding="utf-8") if out is not None else None
        try:
            daemon = LiveDaemon(settings, rules, topology, out=stream, kafka=kafka, step_s=step_s)
            tune_gc()
            return await daemon.run(stop)
        finally:
            if stream is not None:
                stream.close()

    return asyncio.run(main())


__all__ = ["InboxItem", "LiveDaemon", "build_sinks", "install_signal_handlers", "run_command", "tune_gc"]
