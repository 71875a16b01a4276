"""Prometheus poller: configured PromQL selectors through ``/api/v1/query_range``, incrementally.

Each query keeps the next evaluation timestamp it still owes, aligned to the pipeline step.
A poll asks for ``[next, end]`` with ``end`` the last aligned step at least ``delay_s`` in the
past (scrapes arriving late are in by then), then moves ``next`` to ``end + step``. Because
Prometheus evaluates a range query exactly at ``start + k * step``, consecutive polls meet
without a gap or a repeated sample; a failed request leaves ``next`` where it was, so the next
poll fills the hole. Long catch-ups are split so no request exceeds ``max_points`` per series.

A query result without ``__name__`` (a function or an aggregation) is named by its query text.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog

from aiops.config import PrometheusPollSettings
from aiops.observe.metrics import SelfMetrics
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample, make_labels

log = structlog.get_logger(__name__)


def matrix_samples(result: Any, query: str) -> list[MetricSample]:
    """Samples of a ``query_range`` matrix result, ``__name__`` (or the query) as the name.

    >>> r = [{"metric": {"__name__": "up", "job": "a"}, "values": [[10, "1"], [25, "0"]]}]
    >>> [(s.ts, s.name, s.value) for s in matrix_samples(r, "up")]
    [(10.0, 'up', 1.0), (25.0, 'up', 0.0)]
    """
    out: list[MetricSample] = []
    for series in result or []:
        metric = dict(series.get("metric") or {})
        name = metric.pop("__name__", None) or query
        labels = make_labels(metric)
        for ts, value in series.get("values") or []:
            out.append(MetricSample(ts=float(ts), name=name, labels=labels, value=float(value)))
    out.sort(key=lambda s: s.ts)
    return out


class PrometheusPoller:
    """Runs every configured query each ``interval_s``; yields the new samples of each poll."""

    def __init__(
        self, settings: PrometheusPollSettings, step_s: float, rejects: Rejects, metrics: SelfMetrics | None = None,
        *, clock: Callable[[], float] = time.time, start_ts: float | None = None,
    ) -> None:
        if not settings.url:
            raise ValueError("prometheus.url is required for the poller")
        self.settings = settings
        self.url = settings.url.rstrip("/") + "/api/v1/query_range"
        self.step = step_s
        self.rejects = rejects
        self.metrics = metrics
        self.clock = clock
        first = self._aligned_end() if start_ts is None else math.ceil(start_ts / step_s) * step_s
        self.next: dict[str, float] = {q: first for q in settings.queries}
        self._stop = asyncio.Event()

    def _aligned_end(self) -> float:
        return math.floor((self.clock() - self.settings.delay_s) / self.step) * self.step

    def stop(self) -> None:
        self._stop.set()

    async def poll_once(self, session: aiohttp.ClientSession) -> list[MetricSample]:
        """One round over every query; returns new samples, oldest first."""
        end = self._aligned_end()
        out: list[MetricSample] = []
        chunk = (self.settings.max_points - 1) * self.step
        for query in self.settings.queries:
            while self.next[query] <= end:
                start = self.next[query]
                stop = min(end, start + chunk)
                samples = await self._query(session, query, start, stop)
                if samples is None:
                    break  # keep `next`: the following poll asks again, so no gap
                out.extend(samples)
                self.next[query] = stop + self.step
        out.sort(key=lambda s: s.ts)
        if self.metrics is not None and out:
            self.metrics.records_in.labels("prometheus", "metric").inc(len(out))
        return out

    async def _query(self, session: aiohttp.ClientSession, query: str, start: float, end: float
                     ) -> list[MetricSample] | None:
        params = {"query": query, "start": repr(start), "end": repr(end), "step": repr(self.step)}
        try:
            async with session.get(self.url, params=params) as resp:
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("prometheus_poll_failed", query=query, error=repr(exc))
            return None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error") if isinstance(doc, dict) else repr(doc)[:200]
            log.warning("prometheus_query_error", query=query, error=error)
            self.rejects.reject("prometheus", "query_error", where=query, detail=str(error))
            return None
        data = doc.get("data") or {}
        if data.get("resultType") != "matrix":
            self.rejects.reject("prometheus", "not_a_matrix", where=query, detail=str(data.get("resultType")))
            return None
        try:
            return matrix_samples(data.get("result"), query)
        except (TypeError, ValueError) as exc:
            self.rejects.reject("prometheus", "bad_result", where=query, detail=repr(exc))
            return None

    async def run(self) -> AsyncIterator[list[MetricSample]]:
        """Poll until :meth:`stop`; each non-empty round is yielded."""
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                samples = await self.poll_once(session)
                if samples:
                    yield samples
                try:
                    await asyncio.wait_for(self._stop.wait(), self.settings.interval_s)
                except TimeoutError:
                    pass


__all__ = ["PrometheusPoller", "matrix_samples"]
