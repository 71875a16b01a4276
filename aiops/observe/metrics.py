"""The daemon's own metrics, served on ``/metrics``.

One :class:`SelfMetrics` per daemon, built on a registry passed in (never the global
default), so two daemons in one test process keep separate counts.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> m = SelfMetrics(CollectorRegistry())
>>> m.records_in.labels("kafka", "metric").inc(3)
>>> b'aiops_records_in_total{kind="metric",source="kafka"} 3.0' in generate_latest(m.registry)
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Batch latency spans sub-millisecond (a few records) to seconds (a backlog under load).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SelfMetrics:
    """Counters and gauges for every stage of the live daemon.

    * ``aiops_records_in_total{source,kind}`` — decoded records handed to the pipeline
    * ``aiops_decisions_total{kind,status}`` — incidents, alerts and actions out of the pipeline
    * ``aiops_sink_sent_total{sink,outcome}`` — deliveries per sink (``ok``, ``error``, ``dropped``)
    * ``aiops_consumer_lag{topic,partition}`` — Kafka high watermark minus the consumer position
    * ``aiops_processing_seconds`` — wall time from a batch arriving to the pipeline having processed it
    * ``aiops_event_time_lag_seconds`` — wall clock minus the newest event time seen
    * ``aiops_records_dropped_total{source,reason}`` — records lost to overload (rejected bad
      input is counted by :class:`~aiops.observe.rejects.Rejects` as ``aiops_records_rejected_total``)
    * ``aiops_open_incidents``, ``aiops_actions_total{type,outcome}``, ``aiops_ready``
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records_in = Counter(
            "aiops_records_in", "Decoded records handed to the pipeline", ["source", "kind"], registry=registry)
        self.messages_in = Counter(
            "aiops_messages_in", "Raw messages or requests received", ["source"], registry=registry)
        self.decisions = Counter(
            "aiops_decisions", "Decisions out of the pipeline", ["kind", "status"], registry=registry)
        self.sink_sent = Counter(
            "aiops_sink_sent", "Alert deliveries by sink and outcome", ["sink", "outcome"], registry=registry)
        self.dropped = Counter(
            "aiops_records_dropped", "Records lost to overload, by source and reason", ["source", "reason"],
            registry=registry)
        self.dead_lettered = Counter(
            "aiops_dead_lettered", "Bad messages forwarded to the dead-letter topic", ["topic"], registry=registry)
        self.lag = Gauge(
            "aiops_consumer_lag", "Kafka messages not yet consumed", ["topic", "partition"], registry=registry)
        self.processing = Histogram(
            "aiops_processing_seconds", "Wall time from a batch arriving to its processing",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.event_lag = Gauge(
            "aiops_event_time_lag_seconds", "Wall clock minus the newest event time seen", registry=registry)
        self.open_incidents = Gauge("aiops_open_incidents", "Incidents currently open", registry=registry)
        self.actions = Counter(
            "aiops_actions", "Remediation actions by type and outcome", ["type", "outcome"], registry=registry)
        self.ready = Gauge("aiops_ready", "1 once sources are connected and state is loaded", registry=registry)
        self.task_failures = Counter(
            "aiops_task_failures", "Background tasks that died", ["task"], registry=registry)


class StageCollector(Collector):
    """``aiops_stage_records_total{stage,direction}``: records into and out of each pipeline stage.

    Read from the pipeline's own counters at scrape time, so the hot path pays nothing.
    ``stats`` returns an object with the fields of ``PipelineStats``.

    >>> from types import SimpleNamespace
    >>> st = SimpleNamespace(metric_samples=10, points=4, log_lines=3, change_events=1, signals=2,
    ...                      signals_by_kind={"metric": 1, "log": 1}, incidents=1, alerts=1, actions=0)
    >>> r = CollectorRegistry(); r.register(StageCollector(lambda: st))
    >>> r.get_sample_value("aiops_stage_records_total", {"stage": "derive", "direction": "in"})
    10.0
    """

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        st = self.stats()
        by_kind = st.signals_by_kind
        family = CounterMetricFamily("aiops_stage_records", "Records into and out of each pipeline stage",
                                     labels=["stage", "direction"])
        for stage, n_in, n_out in (
            ("derive", st.metric_samples, st.points),
            ("detect", st.points, by_kind.get("metric", 0)),
            ("logs", st.log_lines, by_kind.get("log", 0)),
            ("correlate", st.signals + st.change_events, st.incidents),
            ("decide", st.incidents, st.alerts + st.actions),
        ):
            family.add_metric([stage, "in"], float(n_in))
            family.add_metric([stage, "out"], float(n_out))
        yield family


__all__ = ["SelfMetrics", "StageCollector"]
