"""The log stage: mines templates from log lines and turns them into ``Signal(kind=log)``.

Three kinds of signal, all keyed by service:

1. **New template** (name = template id): a template first seen after the service's warm-up
   (``LogSettings.warmup_s`` of event time since its first line), at WARN or above (or, when the
   line has no level, containing error words), once it repeats: ``NEW_MIN_LINES`` lines within
   ``NEW_WINDOW_S``, spread over ``NEW_MIN_SPAN_S`` at least. One stray line or blip does not
   page. It ends when the template has been silent for ``RECOVER_STEPS`` steps.
2. **Template burst** (name = template id): a template's count per step departs upward from its
   own baseline (:class:`~aiops.logs.baseline.RateBaseline`): WARN+ / error-word templates by a
   moderate margin, any other template only by a large factor. Only templates with a mature
   baseline qualify, so routine INFO and steady WARN lines never signal.
3. **Error burst** (name ``log_errors``): ERROR+ lines per step of the service vs their baseline
   (a template with its own open signal counts there at its usual rate only: its excess is told
   once, and the baseline keeps the service's usual errors through the burst).

**Template cap: eviction, counted and visible.** Each service's miner keeps at most
``LogSettings.max_templates_per_service`` templates and evicts the least recently seen one to
make room. New templates are deliberately *not* refused at the cap (as new metric series are):
a burst of brand-new templates is itself what this stage exists to notice — a deploy or a
failure brings wording never seen before, while old templates fall silent — and refusing them
would blind it exactly then. An evicted template that comes back is simply learned again (as a
template first seen after warm-up it may signal as new, which a flood of novelty deserves).
Evictions are counted per service (``TemplateMiner.evicted``, kept in checkpoints), summed by
:attr:`LogStage.evicted`, exported by :class:`TemplateCollector` as
``aiops_log_templates_evicted_total``, and logged as ``log_templates_evicted`` at most once per
service per ``EVICT_WARN_S`` of event time.

Onsets and recoveries share an id; a recovery has ``end_ts`` set. The stage is pure and driven by
event time: ``process`` per line, ``tick(ts)`` once per step after that step's lines (the runtime
calls it for every step, also empty ones), so each tick closes one step of counts.

>>> from aiops.config import LogSettings
>>> from aiops.records import LogRecord
>>> st = LogStage(LogSettings(warmup_s=60))
>>> for i in range(8):
...     _ = st.process(LogRecord(ts=i * 10.0, service="api", message=f"GET /x {i}", level="INFO"))
...     _ = st.tick(i * 10.0)
>>> out = [s for i in range(3) for s in st.process(
...     LogRecord(ts=100.0 + 10 * i, service="api", level="ERROR", message=f"connection refused to db:{5430 + i}"))]
>>> [(s.name == out[0].name, s.ts, s.evidence[0][:48]) for s in out]
[(True, 100.0, 'new ERROR template "connection refused to db:<*>')]
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aiops.config import LogSettings
from aiops.logs.baseline import RateBaseline
from aiops.logs.miner import TemplateMiner
from aiops.records import LogRecord, Signal, SignalKind

SNAPSHOT_VERSION = 1

NEW_MIN_LINES = 3
"""A new template signals once it has this many lines ..."""
NEW_WINDOW_S = 60.0
"""... within this many seconds."""
NEW_MIN_SPAN_S = 20.0
"""... spread over at least this long: a one-off blip of lines in the same second is not a fault."""
NEW_HORIZON_S = 900.0
"""A template that has not repeated enough this long after its first line is no longer 'new':
it has been around, at a low rate; from then on only its bursts count."""
RECOVER_STEPS = 8
"""Calm steps before a signal ends (2 minutes at 15 s: intermittent faults do not flap)."""
CONFIRM_STEPS = 2
"""Consecutive anomalous steps before a burst onset is confirmed."""
MATURE_STEPS = 20
"""Steps of history a template's baseline needs before its bursts count."""
ADAPT_STEPS = 240
"""A burst that lasts this many steps is the new normal: the signal ends and the baseline moves."""
BURST_MIN = 5
"""Fewest lines in a step for a WARN+ burst."""
BURST_RATIO = 3.0
BURST_Z = 4.0
LARGE_MIN = 50
"""Fewest lines in a step for a burst of an INFO/DEBUG template ..."""
LARGE_RATIO = 10.0
"""... which must also exceed its baseline by this factor."""
LARGE_Z = 8.0
SAMPLES = 3
ERROR_SIGNAL = "log_errors"
EVICT_WARN_S = 300.0
"""Event time between two ``log_templates_evicted`` warnings about one service."""

log = structlog.get_logger(__name__)

_LEVELS = {
    "trace": 0, "debug": 0, "fine": 0, "finer": 0, "finest": 0, "verbose": 0,
    "info": 0, "information": 0, "notice": 0, "informational": 0,
    "warn": 1, "warning": 1,
    "error": 2, "err": 2, "severe": 2,
    "fatal": 3, "critical": 3, "crit": 3, "alert": 3, "emerg": 3, "emergency": 3, "panic": 3,
}
_RANK_NAME = {0: "INFO", 1: "WARN", 2: "ERROR", 3: "FATAL"}
_ERROR_WORDS = re.compile(
    r"(?i)\b(?:error|errors|exception|traceback|fail(?:ed|ure|s|ing)?|fatal|panic|refused|timed? ?out|"
    r"denied|unreachable|unavailable|oom|killed|crash(?:ed)?|abort(?:ed)?|critical|severe)"
)


def level_rank(level: str | None) -> int | None:
    """0 for INFO and below, 1 WARN, 2 ERROR, 3 FATAL; None when the level is missing or unknown.

    >>> level_rank("Warning"), level_rank("ERR"), level_rank(None), level_rank("42")
    (1, 2, None, None)
    """
    if not level:
        return None
    return _LEVELS.get(level.strip().lower())


def _hhmmss(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S")


def _signal_id(service: str, name: str, kind: str, onset: float) -> str:
    raw = f"{service}\x00{name}\x00{kind}\x00{onset:.3f}".encode("utf-8", "replace")
    return "log-" + hashlib.blake2b(raw, digest_size=8).hexdigest()


def _quote(text: str, limit: int = 160) -> str:
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return '"' + text.replace('"', "'") + '"'


class _TemplateStats:
    """Per-template counters and signal state (one per live template of a service)."""

    __slots__ = (
        "tid", "rank", "errorish", "first_ts", "last_ts", "count", "step_first_ts", "samples",
        "baseline", "last_step", "new_state", "new_times", "burst_run", "burst_onset", "burst_active",
        "calm", "burst_peak",
    )

    def __init__(self, tid: str, rank: int | None, errorish: bool, ts: float, step: int) -> None:
        self.tid = tid
        self.rank = rank
        self.errorish = errorish
        self.first_ts = ts
        self.last_ts = ts
        self.count = 0
        self.step_first_ts = ts
        self.samples: list[str] = []
        self.baseline = RateBaseline()
        self.last_step = step  # the last step whose count the baseline has learned (or skipped)
        self.new_state = ""  # "", "candidate", "active", "done"
        self.new_times: list[float] = []
        self.burst_run = 0
        self.burst_onset = 0.0
        self.burst_active: str | None = None  # signal id of an open burst / new-template signal
        self.calm = 0
        self.burst_peak = 0

    @property
    def watchful(self) -> bool:
        return (self.rank is not None and self.rank >= 1) or (self.rank is None and self.errorish)

    @property
    def level_name(self) -> str:
        return _RANK_NAME[self.rank] if self.rank is not None else "error-like"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tid": self.tid, "rank": self.rank, "errorish": self.errorish, "first_ts": self.first_ts,
            "last_ts": self.last_ts, "count": self.count, "step_first_ts": self.step_first_ts,
            "samples": self.samples, "baseline": self.baseline.to_list(), "last_step": self.last_step,
            "new_state": self.new_state, "new_times": self.new_times, "burst_run": self.burst_run,
            "burst_onset": self.burst_onset, "burst_active": self.burst_active, "calm": self.calm,
            "burst_peak": self.burst_peak,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _TemplateStats:
        s = cls(str(d["tid"]), d["rank"], bool(d["errorish"]), float(d["first_ts"]), int(d["last_step"]))
        s.last_ts = float(d["last_ts"])
        s.count = int(d["count"])
        s.step_first_ts = float(d["step_first_ts"])
        s.samples = [str(x) for x in d["samples"]]
        s.baseline = RateBaseline.from_list(d["baseline"])
        s.new_state = str(d["new_state"])
        s.new_times = [float(x) for x in d["new_times"]]
        s.burst_run = int(d["burst_run"])
        s.burst_onset = float(d["burst_onset"])
        s.burst_active = d["burst_active"]
        s.calm = int(d["calm"])
        s.burst_peak = int(d["burst_peak"])
        return s


class _Service:
    """Everything the stage keeps for one service: its miner, template stats, error counts."""

    __slots__ = ("name", "first_ts", "miner", "stats", "touched", "err", "err_count", "err_first_ts", "err_tids",
                 "evicted_warned", "evict_warned_ts", "err_told")

    def __init__(self, name: str, first_ts: float, miner: TemplateMiner) -> None:
        self.name = name
        self.first_ts = first_ts
        self.miner = miner
        self.stats: dict[str, _TemplateStats] = {}
        self.touched: dict[str, _TemplateStats] = {}  # templates with lines this step or an open signal
        self.err = _TemplateStats(ERROR_SIGNAL, 2, True, first_ts, 0)
        self.err_count = 0
        self.err_first_ts = first_ts
        self.err_tids: Counter[str] = Counter()
        self.err_told: Counter[str] = Counter()  # error lines of this step told by their template's own signal
        self.evicted_warned = miner.evicted  # the miner's eviction count at the last warning
        self.evict_warned_ts: float | None = None


class LogStage:
    """Online template mining and log signals for every service (see the module docstring)."""

    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self._services: dict[str, _Service] = {}
        self._step = 0  # number of ticks so far
        self.lines = 0
        self.truncated = 0
        self._max_line = settings.max_line_bytes
        self._ranks: dict[str | None, int | None] = {}  # raw level -> rank, a few distinct values

    # -- per line ----------------------------------------------------------------------------
    def process(self, record: LogRecord) -> list[Signal]:
        """Mine one line; returns a new-template signal when this line confirms one."""
        self.lines += 1
        svc = self._services.get(record.service)
        if svc is None:
            svc = self._services[record.service] = _Service(
                record.service, record.ts,
                TemplateMiner(max_templates=self.settings.max_templates_per_service, namespace=record.service),
            )
        message = record.message
        if len(message) > self._max_line:
            message = message[: self._max_line]
            self.truncated += 1
        level = record.level
        rank = self._ranks.get(level, -1)
        if rank == -1:
            rank = level_rank(level)
            if len(self._ranks) < 256:
                self._ranks[level] = rank
        miner = svc.miner
        tpl = miner.add(message, "" if rank is None else _RANK_NAME[rank])
        ts = record.ts
        if miner.merges:
            out: list[Signal] = []
            self._apply_merges(svc, ts, out)
        else:
            out = []
        st = svc.stats.get(tpl.id)
        if st is None:
            if len(svc.stats) > len(miner) + 64:
                self._prune(svc)
            st = svc.stats[tpl.id] = _TemplateStats(
                tpl.id, rank, rank is None and _ERROR_WORDS.search(message) is not None, ts, self._step
            )
            if st.watchful and ts - svc.first_ts >= self.settings.warmup_s:
                st.new_state = "candidate"
        st.count += 1
        if st.count == 1:
            st.step_first_ts = ts
            svc.touched[st.tid] = st
        if ts > st.last_ts:
            st.last_ts = ts
        if len(st.samples) < SAMPLES:
            st.samples.append(message[:300])
        # Lines of a template that already has its own open signal would only repeat that evidence.
        if rank is None and st.errorish or rank is not None and rank >= 2:
            if st.burst_active is not None:
                svc.err_told[st.tid] += 1
            else:
                svc.err.last_ts = ts
                if svc.err_count == 0:
                    svc.err_first_ts = ts
                svc.err_count += 1
                svc.err_tids[st.tid] += 1
        if st.new_state == "candidate":
            out.extend(self._new_candidate(svc, st, ts))
        return out

    def _apply_merges(self, svc: _Service, ts: float, out: list[Signal]) -> None:
        """Templates the miner merged: their counts, samples and open signals move to the keeper."""
        merges = svc.miner.merges
        while merges:
            gone_id, keep_id = merges.popleft()
            gone = svc.stats.pop(gone_id, None)
            svc.touched.pop(gone_id, None)
            if gone is None:
                continue
            keep = svc.stats.get(keep_id)
            if keep is None:
                gone.tid = keep_id
                svc.stats[keep_id] = gone
                if gone.count or gone.burst_active is not None:
                    svc.touched[keep_id] = gone
                continue
            keep.count += gone.count
            keep.first_ts = min(keep.first_ts, gone.first_ts)
            keep.last_ts = max(keep.last_ts, gone.last_ts)
            keep.samples = (keep.samples + gone.samples)[:SAMPLES]
            keep.baseline.mean += gone.baseline.mean
            keep.baseline.var += gone.baseline.var
            keep.errorish = keep.errorish or gone.errorish
            if keep.new_state == "candidate" and gone.new_state == "candidate":
                keep.new_times = sorted(keep.new_times + gone.new_times)[-64:]
            if gone.burst_active is not None:
                if keep.burst_active is None:
                    keep.burst_active, keep.burst_onset = gone.burst_active, gone.burst_onset
                    keep.burst_run, keep.calm, keep.new_state = gone.burst_run, gone.calm, gone.new_state
                else:
                    out.append(self._end(svc, gone, ts, "template merged into a more general one"))
            if keep.count or keep.burst_active is not None:
                svc.touched[keep_id] = keep

    def _new_candidate(self, svc: _Service, st: _TemplateStats, ts: float) -> list[Signal]:
        if ts - st.first_ts > NEW_HORIZON_S:
            st.new_state = "done"
            st.new_times = []
            return []
        times = st.new_times
        times.append(ts)
        cutoff = ts - NEW_WINDOW_S
        while times and times[0] < cutoff:
            times.pop(0)
        if len(times) < NEW_MIN_LINES or ts - times[0] < NEW_MIN_SPAN_S:
            return []
        st.new_state = "active"
        n_window = len(times)
        span = max(ts - times[0], 1.0)
        st.new_times = []
        sid = _signal_id(svc.name, st.tid, "new", st.first_ts)
        st.burst_active = sid
        st.calm = 0
        tpl = svc.miner.get(st.tid)
        text = tpl.text if tpl is not None else st.samples[0]
        evidence = [
            f"new {st.level_name} template {_quote(text)} in {svc.name} first seen {_hhmmss(st.first_ts)}, "
            f"{n_window} lines in {span:.0f} s"
        ]
        evidence.extend(self._sample_evidence(tpl, st.samples))
        score = {1: 0.6, 2: 0.8, 3: 0.95}.get(st.rank or 0, 0.7)
        svc.touched[st.tid] = st
        return [Signal(
            id=sid, ts=st.first_ts, kind=SignalKind.LOG, service=svc.name, name=st.tid, score=score,
            direction="up", evidence=tuple(evidence), labels=(("signal", "new_template"),),
        )]

    @staticmethod
    def _sample_evidence(tpl: Any, samples: list[str]) -> list[str]:
        out = []
        for line in samples[:SAMPLES]:
            params = tpl.parameters(line) if tpl is not None else ()
            shown = ", ".join(p[:60] for p in params[:6])
            out.append(f"e.g. {_quote(line)}" + (f" (parameters: {shown})" if shown else ""))
        return out

    # -- per step ----------------------------------------------------------------------------
    def tick(self, ts: float) -> list[Signal]:
        """Close one step of counts at ``ts``: burst onsets, recoveries, baseline learning."""
        self._step += 1
        step = self._step
        out: list[Signal] = []
        for svc in self._services.values():
            warm = ts - svc.first_ts >= self.settings.warmup_s
            if svc.touched:
                keep: dict[str, _TemplateStats] = {}
                for st in svc.touched.values():
                    self._step_template(svc, st, ts, step, warm, out)
                    if st.burst_active is not None or st.burst_run:
                        keep[st.tid] = st
                svc.touched = keep
            self._step_errors(svc, ts, step, warm, out)
            if svc.miner.evicted != svc.evicted_warned:
                self._warn_evictions(svc, ts)
        return out

    def _warn_evictions(self, svc: _Service, ts: float) -> None:
        if svc.evict_warned_ts is not None and ts - svc.evict_warned_ts < EVICT_WARN_S:
            return
        log.warning("log_templates_evicted", service=svc.name, evicted=svc.miner.evicted - svc.evicted_warned,
                    evicted_total=svc.miner.evicted, templates=len(svc.miner),
                    cap=self.settings.max_templates_per_service, since_s=None if svc.evict_warned_ts is None
                    else ts - svc.evict_warned_ts)
        svc.evicted_warned = svc.miner.evicted
        svc.evict_warned_ts = ts

    @property
    def evicted(self) -> int:
        """Templates evicted at the per-service cap so far, over all services (checkpoints keep it)."""
        return sum(svc.miner.evicted for svc in self._services.values())

    def templates_by_service(self) -> dict[str, tuple[int, int]]:
        """``service -> (templates held, templates evicted so far)``."""
        return {name: (len(svc.miner), svc.miner.evicted) for name, svc in self._services.items()}

    def _step_template(
        self, svc: _Service, st: _TemplateStats, ts: float, step: int, warm: bool, out: list[Signal]
    ) -> None:
        c = st.count
        base = st.baseline
        base.skip(step - 1 - st.last_step)
        st.last_step = step
        if st.new_state == "active":
            # A new template has no baseline yet: it is over once it falls silent.
            st.calm = st.calm + 1 if c == 0 else 0
            if st.calm >= RECOVER_STEPS:
                out.append(self._end(svc, st, ts, "new template silent"))
                st.new_state = "done"
                base.n = max(base.n, MATURE_STEPS)  # known to be quiet: a comeback is a burst
            self._reset_step(st)
            return
        if st.new_state == "candidate" and ts - st.first_ts > NEW_HORIZON_S:
            st.new_state = "done"
        mean = base.mean
        z = base.z(c)
        if st.watchful:
            anomalous = c >= BURST_MIN and c >= BURST_RATIO * mean and z >= BURST_Z
        else:
            anomalous = c >= LARGE_MIN and c >= LARGE_RATIO * max(mean, 1.0) and z >= LARGE_Z
        eligible = warm and base.n >= MATURE_STEPS and st.new_state != "candidate"
        if st.burst_active is not None:
            if anomalous:
                st.calm = 0
                st.burst_run += 1
                st.burst_peak = max(st.burst_peak, c)
                if st.burst_run >= ADAPT_STEPS:
                    out.append(self._end(svc, st, ts, "rate became the new normal"))
                    base.mean, base.var = float(c), 0.0
            else:
                st.calm += 1
                if st.calm >= RECOVER_STEPS:
                    out.append(self._end(svc, st, ts, "rate back to baseline"))
                    base.update(c)
        elif anomalous and eligible:
            if st.burst_run == 0:
                st.burst_onset = st.step_first_ts
            st.burst_run += 1
            st.burst_peak = max(st.burst_peak, c)
            if st.burst_run >= CONFIRM_STEPS:
                out.append(self._burst_signal(svc, st, c, mean, z))
        else:
            st.burst_run = 0
            st.burst_peak = 0
            base.update(c)
        self._reset_step(st)

    @staticmethod
    def _reset_step(st: _TemplateStats) -> None:
        st.count = 0
        if st.new_state != "candidate":
            st.samples.clear()

    def _burst_signal(self, svc: _Service, st: _TemplateStats, c: int, mean: float, z: float) -> Signal:
        sid = _signal_id(svc.name, st.tid, "burst", st.burst_onset)
        st.burst_active = sid
        st.calm = 0
        tpl = svc.miner.get(st.tid)
        text = tpl.text if tpl is not None else (st.samples[0] if st.samples else st.tid)
        evidence = [
            f"{st.level_name} template {_quote(text)} in {svc.name} bursting since {_hhmmss(st.burst_onset)}: "
            f"{c} lines in the last step vs a baseline of {mean:.1f}"
        ]
        evidence.extend(self._sample_evidence(tpl, st.samples))
        return Signal(
            id=sid, ts=st.burst_onset, kind=SignalKind.LOG, service=svc.name, name=st.tid,
            score=z / (z + 8.0), direction="up", evidence=tuple(evidence), labels=(("signal", "template_burst"),),
        )

    def _end(self, svc: _Service, st: _TemplateStats, ts: float, why: str) -> Signal:
        sid = st.burst_active or _signal_id(svc.name, st.tid, "burst", st.burst_onset)
        onset = st.first_ts if st.new_state == "active" else st.burst_onset
        kind = "new_template" if st.new_state == "active" else (
            "error_burst" if st.tid == ERROR_SIGNAL else "template_burst")
        st.burst_active = None
        st.burst_run = 0
        st.calm = 0
        st.burst_peak = 0
        return Signal(
            id=sid, ts=onset, kind=SignalKind.LOG, service=svc.name, name=st.tid, score=0.0, direction="up",
            evidence=(f"{why} at {_hhmmss(ts)} (last line {_hhmmss(st.last_ts)})",), end_ts=ts,
            labels=(("signal", kind),),
        )

    def _step_errors(self, svc: _Service, ts: float, step: int, warm: bool, out: list[Signal]) -> None:
        st = svc.err
        c = svc.err_count
        # Errors of templates with their own open signal (or confirming one as new) are told there;
        # counting them again would double the evidence for one cause. Their usual share stays in
        # the count (at most what they logged), since the baseline holds it: when the bursting
        # template is the one that carries the service's usual errors (callers' "upstream X returned
        # 500"), leaving it all out would teach the baseline zero during the burst, and the usual rate
        # would then look like an error burst of its own for an hour after the template calmed down.
        told = svc.err_told  # left out of err_count as their lines came (a burst was open)
        for tid, n in svc.err_tids.items():
            tst = svc.stats.get(tid)
            if tst is not None and (tst.burst_active is not None or tst.new_state == "candidate"):
                told[tid] += n
                c -= n
        for tid, n in told.items():
            tst = svc.stats.get(tid)
            # a new template (confirming or told as new) has no usual share, nor has a young one
            if tst is not None and tst.new_state in ("", "done") and tst.baseline.n >= MATURE_STEPS:
                c += min(n, round(tst.baseline.mean))
        base = st.baseline
        mean = base.mean
        z = base.z(c)
        anomalous = c >= BURST_MIN and c >= BURST_RATIO * mean and z >= BURST_Z
        if st.burst_active is not None:
            if anomalous:
                st.calm = 0
                st.burst_run += 1
                if st.burst_run >= ADAPT_STEPS:
                    out.append(self._end(svc, st, ts, "error rate became the new normal"))
                    base.mean, base.var = float(c), 0.0
            else:
                st.calm += 1
                if st.calm >= RECOVER_STEPS:
                    out.append(self._end(svc, st, ts, "error rate back to baseline"))
                    base.update(c)
        elif anomalous and warm and base.n >= MATURE_STEPS:
            if st.burst_run == 0:
                st.burst_onset = svc.err_first_ts
            st.burst_run += 1
            if st.burst_run >= CONFIRM_STEPS:
                sid = _signal_id(svc.name, ERROR_SIGNAL, "burst", st.burst_onset)
                st.burst_active = sid
                st.calm = 0
                top = []
                for tid, n in svc.err_tids.most_common(3):
                    tpl = svc.miner.get(tid)
                    if tpl is not None:
                        top.append(f"{n} x {_quote(tpl.text, 120)}")
                evidence = [
                    f"ERROR lines in {svc.name} rising since {_hhmmss(st.burst_onset)}: {c} in the last step "
                    f"vs a baseline of {mean:.1f}"
                ]
                if top:
                    evidence.append("top templates: " + "; ".join(top))
                out.append(Signal(
                    id=sid, ts=st.burst_onset, kind=SignalKind.LOG, service=svc.name, name=ERROR_SIGNAL,
                    score=z / (z + 8.0), direction="up", evidence=tuple(evidence),
                    labels=(("signal", "error_burst"),),
                ))
        else:
            st.burst_run = 0
            base.update(c)
        svc.err_count = 0
        svc.err_told.clear()
        svc.err_tids.clear()

    def _prune(self, svc: _Service) -> None:
        """Drop stats of templates the miner has evicted (keeps memory bounded with the cap)."""
        live = svc.miner.get
        for tid in [t for t, s in svc.stats.items() if live(t) is None and s.burst_active is None]:
            del svc.stats[tid]
            svc.touched.pop(tid, None)

    # -- state -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state: miners, per-template stats and signal state, step counter."""
        services = {}
        for name, svc in self._services.items():
            services[name] = {
                "first_ts": svc.first_ts,
                "miner": svc.miner.snapshot(),
                "stats": [s.to_dict() for s in svc.stats.values()],
                "touched": list(svc.touched),
                "err": svc.err.to_dict(),
                "err_count": svc.err_count,
                "err_first_ts": svc.err_first_ts,
                "err_tids": dict(svc.err_tids),
                "err_told": dict(svc.err_told),
            }
        return {"version": SNAPSHOT_VERSION, "step": self._step, "lines": self.lines, "services": services}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], settings: LogSettings) -> LogStage:
        """Rebuild a stage from :meth:`snapshot` output."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported log stage snapshot version {data.get('version')!r}")
        stage = cls(settings)
        stage._step = int(data["step"])
        stage.lines = int(data.get("lines", 0))
        for name, d in data["services"].items():
            miner = TemplateMiner.from_snapshot(d["miner"], max_templates=settings.max_templates_per_service)
            svc = _Service(name, float(d["first_ts"]), miner)
            for sd in d["stats"]:
                st = _TemplateStats.from_dict(sd)
                svc.stats[st.tid] = st
            svc.touched = {tid: svc.stats[tid] for tid in d["touched"] if tid in svc.stats}
            svc.err = _TemplateStats.from_dict(d["err"])
            svc.err_count = int(d["err_count"])
            svc.err_first_ts = float(d["err_first_ts"])
            svc.err_tids = Counter({str(k): int(v) for k, v in d["err_tids"].items()})
            svc.err_told = Counter({str(k): int(v) for k, v in d.get("err_told", {}).items()})  # absent: older
            stage._services[name] = svc
        return stage


class TemplateCollector(Collector):
    """Exports the log stage's template counts at scrape time: register once, survives restores.

    ``stage`` is called at each scrape (``lambda: pipeline.logs``), so a stage replaced by a
    checkpoint restore is read without registering anything twice. No service label: the number
    of services is itself unbounded input.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> reg = CollectorRegistry()
    >>> reg.register(TemplateCollector(lambda: LogStage(LogSettings())))
    >>> b"aiops_log_templates_evicted_total 0.0" in generate_latest(reg)
    True
    """

    def __init__(self, stage: Callable[[], LogStage]) -> None:
        self._stage = stage

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stage = self._stage()
        evicted = CounterMetricFamily("aiops_log_templates_evicted",
                                      "Log templates evicted at the per-service cap (least recently seen first)")
        evicted.add_metric([], stage.evicted)
        held = GaugeMetricFamily("aiops_log_templates", "Log templates held, over all services")
        held.add_metric([], sum(n for n, _ in stage.templates_by_service().values()))
        yield evicted
        yield held
