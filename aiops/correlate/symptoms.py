"""Which signals are symptoms (users or models are hurt) and which are causes or context.

"Page on symptoms, not on causes" (Beyer et al., *Site Reliability Engineering*, ch. 6):
errors, latency, unavailability, crash loops, memory saturation (a lasting climb toward the
OOM kill) and a model's degraded output are what make an incident; request rates, CPU and
input-feature shifts explain one but, alone, are the daily life of a healthy system (a
traffic burst moves all of them). The correlator
opens an incident only on a lasting symptom; causes and context still join it and feed the
root-cause ranking.

The patterns are generic metric-name globs with the direction that hurts; they name no
service and no scenario.

>>> from aiops.records import Signal, SignalKind
>>> m = lambda name, d: Signal(id="x", ts=0.0, kind=SignalKind.METRIC, service="a", name=name, score=1.0,
...                            direction=d)
>>> is_symptom(m("http_requests_total:error_ratio", "up")), is_symptom(m("http_requests_total:rate", "up"))
(True, False)
>>> is_symptom(m("http_request_duration_seconds:p99", "down"))
False
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from aiops.records import Signal, SignalKind

SYMPTOMS: tuple[tuple[str, str], ...] = (
    ("*error_ratio*", "up"),
    ("*errors*", "up"),
    ("*:p50", "up"),
    ("*:p9*", "up"),
    ("*:mean", "up"),
    ("*latency*", "up"),
    ("*availability*", "down"),
    ("*success*", "down"),
    ("*restarts*", "up"),
    ("*memory*", "up"),
    ("up", "down"),
    ("*accuracy*", "down"),
    ("model_prediction_*", ""),
)
"""(metric glob, bad direction) pairs; an empty direction means either way hurts."""

_ERROR_WORD = re.compile(r"\b(ERROR|FATAL|CRITICAL|PANIC|SEVERE)\b")
LOG_SYMPTOM_LEVELS = ("ERROR", "FATAL", "CRITICAL", "PANIC", "SEVERE")


def is_symptom(sig: Signal) -> bool:
    """True for signals that show harm: see :data:`SYMPTOMS`; drift of a model; error-level logs."""
    if sig.kind is SignalKind.DRIFT:
        return True
    if sig.kind is SignalKind.LOG:
        return is_error_log(sig)
    if sig.kind is not SignalKind.METRIC:
        return False
    return any(fnmatchcase(sig.name, glob) and (not bad or sig.direction == bad) for glob, bad in SYMPTOMS)


def is_error_log(sig: Signal) -> bool:
    """A log signal about error-level lines: its ``level`` label, else the level word in its evidence."""
    level = dict(sig.labels).get("level")
    if level:
        return level.upper() in LOG_SYMPTOM_LEVELS
    return bool(sig.evidence) and bool(_ERROR_WORD.search(sig.evidence[0]))


def family(sig: Signal) -> tuple[str, str, str]:
    """The measurement a signal comes from, for counting independent evidence.

    The p50, p90, p99 and mean of one histogram move together, and so do a request counter's
    rate and its histogram's ``_count`` rate: each is one piece of evidence, not several.

    >>> from aiops.records import Signal, SignalKind
    >>> m = lambda name: Signal(id="x", ts=0.0, kind=SignalKind.METRIC, service="a", name=name, score=1.0)
    >>> family(m("http_request_duration_seconds:p99")) == family(m("http_request_duration_seconds:mean"))
    True
    >>> family(m("http_requests_total:rate")) == family(m("http_request_duration_seconds_count:rate"))
    True
    >>> family(m("http_requests_total:error_ratio")) == family(m("http_requests_total:rate"))
    False
    """
    if sig.kind is not SignalKind.METRIC:
        return (sig.service or "", sig.kind.value, sig.name)
    base, _, derived = sig.name.partition(":")
    if derived == "rate" and (base.endswith("_count") or "request" in base):
        base = "request_rate"  # a histogram's _count rate is the request rate again
    elif derived in ("rate", "error_ratio"):
        base = f"{base}:{derived}"  # errors, and each counter's rate, are their own evidence
    return (sig.service or "", sig.kind.value, base)
