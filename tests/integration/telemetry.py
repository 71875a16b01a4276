"""A small synthetic incident built in the test: three services, a bad deploy of one, recovery.

Small enough to push through Kafka in a second, long enough for detectors to warm up and for
the incident to resolve: ``warmup_min`` calm minutes, ``fault_min`` minutes in which ``api``
returns ~30 % 5xx after a deploy (its caller ``frontend`` passes some of it on), then
``recover_min`` calm minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiops.records import ChangeEvent, LogRecord, MetricSample, Record, make_labels

T0 = 1767225600.0  # 2026-01-01 00:00 UTC
STEP = 15.0
TOPOLOGY = {"frontend": ["api"], "api": ["db"]}


@dataclass(frozen=True)
class Incident:
    root_cause: str
    fault_start: float
    fault_end: float
    end: float


def build(seed: int = 7, warmup_min: float = 60, fault_min: float = 20, recover_min: float = 25,
          t0: float = T0) -> tuple[list[Record], Incident]:
    rng = np.random.default_rng(seed)
    fault_start = t0 + warmup_min * 60
    fault_end = fault_start + fault_min * 60
    end = fault_end + recover_min * 60
    n = int((end - t0) / STEP)
    err_base = {"frontend": 0.004, "api": 0.003, "db": 0.001}
    rps = {"frontend": 120.0, "api": 90.0, "db": 200.0}
    counters = {(s, c): 0.0 for s in rps for c in ("200", "500")}
    records: list[Record] = [ChangeEvent(ts=fault_start - 45, type="deploy", service="api",
                                         attrs=(("previous_version", "v1.8.2"), ("version", "v1.9.0")))]
    for i in range(n):
        ts = t0 + i * STEP
        in_fault = fault_start <= ts < fault_end
        for svc, base in rps.items():
            err = err_base[svc]
            if in_fault and svc == "api":
                err = 0.30
            elif in_fault and svc == "frontend":
                err = 0.15
            total = rng.poisson(base * STEP)
            bad = rng.binomial(total, err)
            counters[(svc, "200")] += total - bad
            counters[(svc, "500")] += bad
            for code in ("200", "500"):
                labels = make_labels({"service": svc, "code": code, "instance": f"{svc}-0"})
                records.append(MetricSample(ts=ts + 0.1, name="http_requests_total", labels=labels,
                                            value=counters[(svc, code)]))
            latency = 0.05 * (1 + 0.05 * rng.standard_normal()) * (4.0 if in_fault and svc != "db" else 1.0)
            records.append(MetricSample(ts=ts + 0.2, name="request_latency_seconds",
                                        labels=make_labels({"service": svc, "instance": f"{svc}-0"}), value=latency))
            for j in range(3):
                item = int(rng.integers(1000))
                ms = int(rng.integers(5, 60))
                records.append(LogRecord(ts=ts + 1 + j, service=svc, level="INFO",
                                         message=f"GET /items/{item} 200 {ms}ms"))
            if in_fault and svc == "api":
                for j in range(5):
                    order = int(rng.integers(10**6))
                    records.append(LogRecord(ts=ts + 5 + j, service=svc, level="ERROR",
                                             message=f"NullPointerException in OrderHandler.apply (order {order})"))
    records.sort(key=lambda r: r.ts)
    return records, Incident("api", fault_start, fault_end, end)
