"""Checkpoints of the live daemon: pipeline state and source offsets saved together.

The live shell (:mod:`aiops.runtime.live`) uses one :class:`Checkpointer` to

* **restore** at start: the newest usable checkpoint is loaded into the pipeline
  (:func:`~aiops.state.pipeline_state.resume`; an unusable one is set aside and counted, the
  previous generation tried, none left means a cold start) and the offsets it covers are
  returned so the consumer can seek to them;
* **save** every ``live.checkpoint_interval_s`` of wall time and at shutdown, *between*
  batches, with the offsets after the last record fed to the pipeline. The caller commits those
  offsets to Kafka only after :meth:`Checkpointer.save` returned ``True`` ("commit after
  checkpoint", as Kafka Streams and Flink pair state with input position): a crash then replays
  at most the records after the last checkpoint, and loses none.

Besides the pipeline, a checkpoint carries the alerts that were firing (``live`` part of the
state, a :class:`~aiops.notify.firing.FiringAlerts` snapshot: incidents' own alerts and the act
stage's escalations) and the open incidents: a restarted daemon announces them again to its sinks,
which keep only in-memory state, so an incident that is still open, and an escalation about it,
stay active in Alertmanager instead of expiring.

Self-metrics (on the daemon's registry): ``aiops_checkpoint_duration_seconds`` (snapshot, encode,
write), ``aiops_checkpoint_age_seconds`` (since the last successful checkpoint, or since start
while there has been none), ``aiops_checkpoint_failures_total{op}`` (``save`` or ``restore``).
The store adds ``aiops_checkpoint_saves_total``, ``aiops_checkpoint_unusable_total{reason}`` and
``aiops_checkpoint_bytes``.

>>> import structlog
>>> from aiops.config import Settings
>>> from aiops.correlate.topology import Topology
>>> from aiops.decide.rules import parse_rules
>>> from aiops.observe.rejects import Rejects
>>> from aiops.records import MetricSample
>>> from aiops.runtime.pipeline import Pipeline
>>> from aiops.state.memory import MemoryCheckpointStore
>>> def new() -> Pipeline:
...     return Pipeline(Settings(), parse_rules({}), Topology(), Rejects(log_examples=False), step_s=15)
>>> quiet = structlog.wrap_logger(structlog.ReturnLogger())
>>> store = MemoryCheckpointStore(logger=quiet)
>>> p = new()
>>> _ = p.feed_many(MetricSample(t * 15.0, "up", (("service", "api"),), 1.0) for t in range(10))
>>> Checkpointer(store, CollectorRegistry(), 30.0, logger=quiet).save(p, {("aiops.metrics", 0): 10})
True
>>> restored = Checkpointer(store, CollectorRegistry(), 30.0, logger=quiet).restore(new())
>>> restored.offsets, restored.event_ts
({('aiops.metrics', 0): 10}, 75.0)
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aiops.notify.firing import FiringAlerts, alert_out
from aiops.records import Alert
from aiops.runtime.pipeline import Pipeline
from aiops.state.base import CheckpointStore, Offsets
from aiops.state.pipeline_state import resume, snapshot_pipeline

LIVE_KEY = "live"
"""Key of the live shell's own part in a checkpointed state (the pipeline ignores it)."""

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restored checkpoint covers: where to resume reading, and what was firing."""

    offsets: dict[tuple[str, int], int]
    event_ts: float | None  # the pipeline watermark the state covers
    firing: tuple[Alert, ...]  # everything firing: incidents' own alerts first, then escalations
    alerts: FiringAlerts | None = None  # the same, as the tracker the daemon continues with
    open_incidents: tuple[str, ...] = ()  # open incident ids (older checkpoints: those with a firing alert)


def checkpoint_name(group_id: str | None) -> str:
    """The store name for a daemon: per consumer group, since offsets only mean something there.

    >>> checkpoint_name("aiops"), checkpoint_name(None), checkpoint_name("team/a b")
    ('live-aiops', 'live', 'live-team_a_b')
    """
    if not group_id:
        return "live"
    return "live-" + re.sub(r"[^A-Za-z0-9_.=-]", "_", group_id)


class Checkpointer:
    """Saves and restores a pipeline with its offsets through a :class:`CheckpointStore`.

    ``clock`` is a monotonic wall clock; it only paces checkpoints and feeds the age metric,
    never the pipeline (which runs on event time).
    """

    def __init__(self, store: CheckpointStore, registry: CollectorRegistry, interval_s: float, *,
                 clock: Callable[[], float] = time.monotonic, logger: Any = None) -> None:
        self.store = store
        self.interval_s = interval_s
        self.clock = clock
        self.log = logger if logger is not None else structlog.get_logger(__name__)
        self._last_attempt = clock()
        self._last_ok: float | None = None
        self._started = self._last_attempt
        self.saved = 0
        self.duration = Histogram("aiops_checkpoint_duration_seconds",
                                  "Wall time to snapshot, encode and write one checkpoint",
                                  buckets=_DURATION_BUCKETS, registry=registry)
        self.failures = Counter("aiops_checkpoint_failures", "Checkpoints that could not be saved or restored",
                                ["op"], registry=registry)
        age = Gauge("aiops_checkpoint_age_seconds",
                    "Seconds since the last successful checkpoint (since start while there has been none)",
                    registry=registry)
        age.set_function(self.age)

    def age(self) -> float:
        """Seconds since the last successful checkpoint, or since start if there was none."""
        return self.clock() - (self._last_ok if self._last_ok is not None else self._started)

    def due(self) -> bool:
        """Whether ``interval_s`` has passed since the last attempt (successful or not)."""
        return self.clock() - self._last_attempt >= self.interval_s

    def restore(self, pipeline: Pipeline) -> Restored | None:
        """Load the newest usable checkpoint into ``pipeline``; ``None`` means a cold start.

        Never raises for bad stored data: an unusable checkpoint is set aside by the store or by
        :func:`resume`; an unreadable state directory is counted and logged, and the daemon
        starts cold (Kafka then resumes from the group's committed offsets).
        """
        started = time.perf_counter()
        try:
            cp = resume(pipeline, self.store)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable directory: start cold, loudly
            self.failures.labels("restore").inc()
            self.log.error("checkpoint_restore_failed", error=repr(exc))
            return None
        if cp is None:
            self.log.info("checkpoint_none", detail="cold start")
            return None
        alerts, open_incidents = live_part_in(cp.state.get(LIVE_KEY), self.log)
        firing = tuple(alerts.alerts())
        self._last_ok = self.clock()
        self.log.info("checkpoint_restored", event_ts=cp.created_event_ts, offsets=_offsets_out(cp.offsets),
                      firing=len(firing), seconds=round(time.perf_counter() - started, 3))
        return Restored(dict(cp.offsets), cp.created_event_ts, firing, alerts, open_incidents)

    def save(self, pipeline: Pipeline, offsets: Offsets, firing: Iterable[Alert] | FiringAlerts = (),
             open_incidents: Iterable[str] = ()) -> bool:
        """Checkpoint ``pipeline`` with the ``offsets`` after its last record; ``True`` once durable.

        Do not feed the pipeline until this returns (it may run in a worker thread). A failure
        is counted and logged and returns ``False``: the caller must then not commit offsets.
        """
        self._last_attempt = self.clock()
        started = time.perf_counter()
        try:
            state = snapshot_pipeline(pipeline)
            state[LIVE_KEY] = live_part_out(firing, open_incidents)
            wm = pipeline.reorder.watermark
            self.store.save(state, event_ts=wm if math.isfinite(wm) else None, offsets=offsets)
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: keep running, do not commit
            self.failures.labels("save").inc()
            self.log.error("checkpoint_failed", error=repr(exc))
            return False
        seconds = time.perf_counter() - started
        self.duration.observe(seconds)
        self._last_ok = self.clock()
        self.saved += 1
        self.log.info("checkpoint_taken", seconds=round(seconds, 3), offsets=_offsets_out(offsets))
        return True


def _offsets_out(offsets: Mapping[tuple[str, int], int]) -> dict[str, int]:
    return {f"{t}/{p}": o for (t, p), o in sorted(offsets.items())}


def live_part_out(firing: Iterable[Alert] | FiringAlerts, open_incidents: Iterable[str] = ()) -> dict[str, Any]:
    """The live shell's part of a checkpoint: the firing alerts (own and escalations) and the open incidents."""
    if not isinstance(firing, FiringAlerts):
        # Plain alerts are incidents' own (the daemon passes its tracker, which knows escalations).
        return {"firing": [alert_out(a) for a in firing], "open": sorted(open_incidents)}
    return {**firing.snapshot(), "open": sorted(open_incidents)}


def live_part_in(live: Any, logger: Any) -> tuple[FiringAlerts, tuple[str, ...]]:
    """Undo :func:`live_part_out`; a damaged part loses only the re-announcement, never the restore."""
    if live is None:
        return FiringAlerts(), ()
    try:
        alerts = FiringAlerts.from_snapshot(live)
        opened = live.get("open")
        open_incidents = (tuple(sorted(alerts.incidents())) if opened is None
                          else tuple(sorted({str(x) for x in opened} | alerts.incidents())))
        return alerts, open_incidents
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The pipeline state is good; only the re-announcement is lost (alerts fire again on their next update).
        logger.warning("checkpoint_live_part_unusable", error=repr(exc))
        return FiringAlerts(), ()


__all__ = ["LIVE_KEY", "Checkpointer", "Restored", "checkpoint_name", "live_part_in", "live_part_out"]
