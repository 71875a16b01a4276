"""Guard configuration for remediation: ``rules/actions.yaml``, validated with file:line errors.

The decide stage chooses *what* to do; this file says *whether and how* it may be done:
dry run per action type, preconditions, cooldowns, rate limits, concurrency, maintenance
windows, silences, approval and verification. Every guard is off-by-safe: an absent file
means all actions are dry runs.

>>> rules = parse_action_rules("actions:\\n  scale_up: {dry_run: false, max_replicas: 5}\\n", "x.yaml")
>>> rules.rule("scale_up").max_replicas, rules.rule("scale_up").dry_run, rules.rule("rollback").dry_run
(5, False, True)
>>> parse_action_rules("actions:\\n  scale_up:\\n    step: 0\\n", "x.yaml")
Traceback (most recent call last):
...
aiops.act.rules.ActionRulesError: x.yaml:3: actions.scale_up.step: Input should be greater than or equal to 1
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ACTIONS_FILE = "actions.yaml"
"""The file name inside the rules directory that holds the guard configuration."""

SEVERITIES = ("info", "warning", "critical")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ActionRulesError(Exception):
    """``actions.yaml`` is invalid; each line of the message is ``file:line: path: problem``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preconditions(_Strict):
    """What must hold about the incident before an action of this type may run."""

    min_severity: Literal["info", "warning", "critical"] | None = None
    signal_kinds: tuple[Literal["metric", "log", "change", "drift"], ...] = Field(
        (), description="an active signal of one of these kinds must exist on the target service")
    signal_names: tuple[str, ...] = Field((), description="regexes; an active signal's name must match one")
    top_root_cause: bool = Field(False, description="the target service must be the incident's top root cause")
    deploy_within_s: float | None = Field(
        None, ge=0, description="a deploy of the target service must precede the incident onset by at most this")

    @field_validator("signal_names")
    @classmethod
    def _regexes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        return v


_DEFAULT_PRECONDITIONS: dict[str, Preconditions] = {
    # Scaling helps saturation, not a bad release: require a metric anomaly on the service itself.
    "scale_up": Preconditions(signal_kinds=("metric",)),
    # `rollout undo` is only right when the service's own deploy is the best explanation.
    "rollback": Preconditions(top_root_cause=True, deploy_within_s=1800.0),
    # A drift signal, or a model-quality metric (model_*) the metric detector flagged.
    "retrain": Preconditions(signal_kinds=("drift", "metric"), signal_names=("_drift$", "^model_")),
}


class ActionRule(_Strict):
    """Guards and parameters for one action type."""

    enabled: bool = True
    dry_run: bool = Field(True, description="plan only; both this and the global setting must be off to act")
    approval: bool = Field(False, description="wait for `aiops approve ID` or the HTTP approval before acting")
    approval_ttl_s: float = Field(900.0, gt=0, description="an unapproved action expires after this")
    cooldown_s: float = Field(1800.0, ge=0, description="no action on the same target for this long after one")
    verify_s: float = Field(600.0, gt=0, description="the incident's signals must recover within this")
    max_per_target_per_hour: int = Field(2, ge=0)
    preconditions: Preconditions | None = None  # None: the type's default
    # scale_up
    step: int = Field(1, ge=1, description="replicas added per action")
    max_replicas: int = Field(10, ge=1, description="never scale above this")

    def effective_preconditions(self, action_type: str) -> Preconditions:
        if self.preconditions is not None:
            return self.preconditions
        return _DEFAULT_PRECONDITIONS.get(action_type, Preconditions())


class Limits(_Strict):
    """Limits across all targets."""

    global_per_hour: int = Field(10, ge=0, description="executions per rolling hour, all targets")
    max_concurrent: int = Field(2, ge=0, description="actions executing or awaiting verification at once")
    max_targets_per_incident: int = Field(2, ge=0, description="distinct targets one incident may act on")
    failure_backoff_s: float = Field(
        86400.0, ge=0, description="after an action fails, the same action on the same target is refused this long")


def _to_ts(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected unix seconds or an ISO 8601 time")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:  # pydantic reports ValueError with the field's line, not OverflowError
            raise ValueError("expected unix seconds or an ISO 8601 time, got an integer too large") from None
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected unix seconds or an ISO 8601 time, got {v!r}") from None
    else:
        raise ValueError("expected unix seconds or an ISO 8601 time")
    if dt.tzinfo is None:
        raise ValueError(f"time {v!s} needs a timezone (e.g. 'Z')")
    return dt.timestamp()


def _hhmm(v: str) -> int:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", v)
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59:
        raise ValueError(f"expected HH:MM, got {v!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


class Weekly(_Strict):
    """A recurring UTC window, e.g. Saturdays 02:00-04:00."""

    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = _DAYS  # type: ignore[assignment]
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _check(cls, v: str) -> str:
        _hhmm(v)
        return v

    def contains(self, ts: float) -> bool:
        dt = datetime.fromtimestamp(ts, tz=UTC)
        minute = dt.hour * 60 + dt.minute
        start, end = _hhmm(self.start), _hhmm(self.end)
        day = _DAYS[dt.weekday()]
        if start <= end:
            return day in self.days and start <= minute < end
        # Crosses midnight: the part after midnight belongs to the previous day's window.
        prev_day = _DAYS[(dt.weekday() - 1) % 7]
        return (day in self.days and minute >= start) or (prev_day in self.days and minute < end)


class Window(_Strict):
    """A maintenance window (absolute and/or weekly) or a silence: matching actions are blocked."""

    name: str = ""
    start: float | None = None
    end: float | None = None
    weekly: Weekly | None = None
    services: tuple[str, ...] = ()  # empty: every service
    types: tuple[str, ...] = ()  # empty: every action type
    comment: str = ""

    @field_validator("start", "end", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> float | None:
        return None if v is None else _to_ts(v)

    @model_validator(mode="after")
    def _bounded(self) -> Window:
        if self.weekly is None and (self.start is None or self.end is None):
            raise ValueError("needs start and end, or weekly")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def matches(self, ts: float, service: str, action_type: str) -> bool:
        if self.services and service not in self.services:
            return False
        if self.types and action_type not in self.types:
            return False
        if self.start is not None and ts < self.start:
            return False
        if self.end is not None and ts >= self.end:
            return False
        return self.weekly is None or self.weekly.contains(ts)


class Workload(_Strict):
    """Where a service runs in Kubernetes."""

    namespace: str | None = None
    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str | None = None  # defaults to the service name


class KubernetesRules(_Strict):
    namespace: str = "default"
    workloads: dict[str, Workload] = Field(default_factory=dict)

    def workload(self, service: str) -> tuple[str, str, str]:
        """Return ``(namespace, kind, name)`` for a service."""
        w = self.workloads.get(service, Workload())
        return (w.namespace or self.namespace, w.kind, w.name or service)


class RetrainRules(_Strict):
    """How a retrain is triggered; one backend."""

    backend: Literal["http", "kafka", "job"] = "http"
    url: str | None = None  # http: pipeline run endpoint (Kubeflow/Argo/Airflow-style)
    token_file: Path | None = None  # http: bearer token, read at start
    topic: str | None = None  # kafka
    job_template: Path | None = None  # job: a batch/v1 Job manifest (YAML), relative to the rules dir
    data_window_s: float = Field(7 * 86400.0, gt=0, description="training data ends now and spans this far back")
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _backend_needs(self) -> RetrainRules:
        need = {"http": "url", "kafka": "topic", "job": "job_template"}[self.backend]
        if getattr(self, need) is None and need != "url":
            raise ValueError(f"backend {self.backend} needs {need}")
        return self


class ActionRules(_Strict):
    """The whole guard configuration (``rules/actions.yaml``)."""

    defaults: ActionRule = Field(default_factory=ActionRule)
    actions: dict[str, ActionRule] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    maintenance: tuple[Window, ...] = ()
    silences: tuple[Window, ...] = ()
    kubernetes: KubernetesRules = Field(default_factory=KubernetesRules)
    retrain: RetrainRules = Field(default_factory=RetrainRules)
    source: str = ""  # the file it came from, for messages

    def rule(self, action_type: str) -> ActionRule:
        return self.actions.get(action_type, self.defaults)


def parse_action_rules(text: str, where: str = ACTIONS_FILE) -> ActionRules:
    """Parse and validate actions.yaml text; raise :class:`ActionRulesError` with file:line."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ActionRulesError(f"{where}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple[Any, ...], int] = {}
    data = {} if node is None else _construct(node, (), lines)
    if not isinstance(data, dict):
        raise ActionRulesError(f"{where}:1: top level must be a mapping")
    data = _merge_defaults(data)
    try:
        return ActionRules.model_validate({**data, "source": where})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_for(loc, lines)
            path = ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(top)"
            problems.append(f"{where}:{line}: {path}: {err['msg'].removeprefix('Value error, ')}")
        raise ActionRulesError("\n".join(problems)) from None


def load_action_rules(rules_dir: Path) -> ActionRules:
    """Load ``rules_dir/actions.yaml``; an absent file gives the safe defaults (all dry run).

    The decide stage's ``load_rules`` calls this so ``aiops check-rules`` reports its errors too.
    """
    path = rules_dir / ACTIONS_FILE
    if not path.is_file():
        return ActionRules(source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ActionRulesError(f"{path}: {exc}") from None
    rules = parse_action_rules(text, str(path))
    if rules.retrain.job_template is not None and not rules.retrain.job_template.is_absolute():
        job = rules_dir / rules.retrain.job_template
        rules = rules.model_copy(update={"retrain": rules.retrain.model_copy(update={"job_template": job})})
    return rules


def _merge_defaults(data: dict[str, Any]) -> dict[str, Any]:
    # Per-action entries inherit from `defaults`, so a field set once applies to every type.
    defaults = data.get("defaults")
    actions = data.get("actions")
    if isinstance(defaults, dict) and isinstance(actions, dict):
        data = {**data, "actions": {k: ({**defaults, **v} if isinstance(v, dict) else v) for k, v in actions.items()}}
    return data


def _construct(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    """Build plain Python data from a composed YAML node, remembering each path's line."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            out[key] = _construct(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1
