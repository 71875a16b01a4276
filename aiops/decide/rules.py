"""Rules users edit (``rules/*.yaml``): alert routing, severity overrides and remediation.

The format is documented in ``rules/README.md``. Every file in the rules directory is read;
each top-level key belongs to one section (``alerts``, ``remediations``, ``topology``) and
``detectors.yaml`` is validated by the detect stage's own loader. Errors are
:class:`RulesError` with ``file:line`` so ``aiops check-rules`` (in the manner of
``amtool check-config``) points at the line to fix.

Conditions (used by remediation ``when`` and severity rules) are a small tree:

=====================  ==========================================================================
``signal: {...}``      some signal of the scope matches every given field: ``kind``, ``metric``
                       (glob(s) on the signal name), ``direction``, ``min_score``, ``service``
``change: {...}``      a change of the scope's service, of ``type`` (glob(s)), at most
                       ``within_s`` before its first anomaly
``services_at_least``  the incident spans at least N services
``severity``           the correlator's severity is one of the given
``all / any / not``    combine conditions; a mapping with several keys means ``all``
=====================  ==========================================================================

>>> rules = parse_rules({"r.yaml": "remediations:\\n  - name: r\\n    action: rollback\\n"
...                                "    when: {change: {type: deploy, within_s: 600}}\\n"})
>>> rules.remediations[0].action, rules.remediations[0].where
('rollback', 'r.yaml:2')
>>> try:
...     parse_rules({"r.yaml": "remediations:\\n  - name: r\\n    action: rollback\\n    when: {chnage: {}}\\n"})
... except RulesError as exc:
...     print(str(exc)[:40])
r.yaml:4: unknown condition 'chnage' (kn
"""

from __future__ import annotations

import importlib
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DETECTORS_FILE = "detectors.yaml"
ACTIONS_FILE = "actions.yaml"
TOPOLOGY_FILE = "topology.yaml"
SEVERITIES = ("info", "warning", "critical")
SCOPES = ("top_cause", "incident")
TEMPLATE_ROOTS = {
    "service", "services", "severity", "incident_id", "opened", "opened_ms", "metric", "template",
    "summary", "signal", "change",
}


class RulesError(ValueError):
    """A rules file is invalid; the message starts with ``file:line``."""


# -- conditions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalCond:
    kinds: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    direction: str | None = None
    min_score: float | None = None
    services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChangeCond:
    types: tuple[str, ...] = ()
    within_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class Cond:
    """One node of a condition tree: ``op`` is all/any/not/signal/change/services_at_least/severity."""

    op: str
    children: tuple[Cond, ...] = ()
    signal: SignalCond | None = None
    change: ChangeCond | None = None
    number: int = 0
    values: tuple[str, ...] = ()
    where: str = ""


TRUE = Cond(op="all")


# -- sections -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Alert routing: the first route whose ``match`` holds adds its labels/annotations."""

    match: tuple[tuple[str, tuple[str, ...]], ...]  # label -> globs
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    where: str = ""


@dataclass(frozen=True, slots=True)
class SeverityRule:
    when: Cond
    severity: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class AlertRules:
    labels: tuple[tuple[str, str], ...] = (("alertname", "AiopsIncident"),)
    annotations: tuple[tuple[str, str], ...] = ()
    routes: tuple[Route, ...] = ()
    severity: tuple[SeverityRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Remediation:
    """Plan ``action`` for the incident's top root cause when ``when`` holds in ``scope``."""

    name: str
    action: str
    when: Cond
    scope: str = "top_cause"
    target: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    continue_: bool = False
    plan_within_s: float = 900.0
    where: str = ""


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything in the rules directory, validated."""

    alerts: AlertRules = field(default_factory=AlertRules)
    remediations: tuple[Remediation, ...] = ()
    topology: tuple[tuple[str, tuple[str, ...]], ...] = ()
    detector_overrides: tuple[Any, ...] = ()
    action_rules: Any = None  # aiops.act.rules.ActionRules when that stage is present
    files: tuple[str, ...] = ()

    def topology_mapping(self) -> dict[str, list[str]]:
        return {caller: list(callees) for caller, callees in self.topology}


# -- YAML with line numbers ---------------------------------------------------------------


class _Map(dict):  # type: ignore[type-arg]
    """A mapping that remembers the line of itself and of each key."""

    line: int
    key_lines: dict[str, int]


class _List(list):  # type: ignore[type-arg]
    line: int
    item_lines: list[int]


def _convert(node: yaml.Node, ctor: yaml.SafeLoader, source: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        m = _Map()
        m.line = node.start_mark.line + 1
        m.key_lines = {}
        for k, v in node.value:
            key = _convert(k, ctor, source)
            if not isinstance(key, str):
                raise RulesError(f"{source}:{k.start_mark.line + 1}: keys must be strings, got {key!r}")
            if key in m:
                raise RulesError(f"{source}:{k.start_mark.line + 1}: duplicate key {key!r}")
            m[key] = _convert(v, ctor, source)
            m.key_lines[key] = k.start_mark.line + 1
        return m
    if isinstance(node, yaml.SequenceNode):
        seq = _List(_convert(v, ctor, source) for v in node.value)
        seq.line = node.start_mark.line + 1
        seq.item_lines = [v.start_mark.line + 1 for v in node.value]
        return seq
    return ctor.construct_object(node, deep=True)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise RulesError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:  # thousands of nested brackets: PyYAML recurses per level
        raise RulesError(f"{source}: invalid YAML: nested too deeply") from None
    if root is None:
        return None
    try:
        return _convert(root, yaml.SafeLoader(""), source)
    except RecursionError:
        raise RulesError(f"{source}: invalid YAML: nested too deeply") from None


class _Ctx:
    """Where we are in a file, for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def at(self, line: int) -> str:
        return f"{self.source}:{line}"

    def fail(self, line: int, msg: str) -> RulesError:
        return RulesError(f"{self.at(line)}: {msg}")


def _line(m: _Map, key: str) -> int:
    return m.key_lines.get(key, m.line)


def _expect_map(ctx: _Ctx, value: Any, line: int, what: str) -> _Map:
    if not isinstance(value, _Map):
        raise ctx.fail(getattr(value, "line", line), f"{what} must be a mapping")
    return value


def _expect_list(ctx: _Ctx, value: Any, line: int, what: str) -> _List:
    if not isinstance(value, _List):
        raise ctx.fail(getattr(value, "line", line), f"{what} must be a list")
    return value


def _known_keys(ctx: _Ctx, m: _Map, allowed: Sequence[str], what: str) -> None:
    for key in m:
        if key not in allowed:
            raise ctx.fail(_line(m, key), f"unknown field {key!r} in {what} (allowed: {', '.join(sorted(allowed))})")


def _globs(ctx: _Ctx, value: Any, line: int, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(x, str) and x for x in items):
        raise ctx.fail(line, f"{what} must be a non-empty string or a list of them")
    return tuple(items)


def _number(ctx: _Ctx, value: Any, line: int, what: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.fail(line, f"{what} must be a number >= {minimum:g}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # a YAML integer of hundreds of digits
        raise ctx.fail(line, f"{what} must be a finite number, got an integer of {len(str(value))} digits") from None
    # NaN compares false with everything, so it would slip past the minimum; infinity is no duration.
    if not math.isfinite(number) or number < minimum:
        raise ctx.fail(line, f"{what} must be a finite number >= {minimum:g}, got {value!r}")
    return number


def _template(ctx: _Ctx, value: Any, line: int, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ctx.fail(line, f"{what} must be a string")
    text = str(value)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ctx.fail(line, f"{what}: bad template {text!r}: {exc}") from None
    for f in fields:
        root = f.split(".", 1)[0].split("[", 1)[0]
        if root not in TEMPLATE_ROOTS:
            raise ctx.fail(line, f"{what}: unknown template variable {{{f}}} "
                                 f"(known: {', '.join(sorted(TEMPLATE_ROOTS))}, signal.LABEL, change.ATTR)")
    return text


def _string_map(ctx: _Ctx, value: Any, line: int, what: str) -> tuple[tuple[str, str], ...]:
    m = _expect_map(ctx, value, line, what)
    return tuple((k, _template(ctx, v, _line(m, k), f"{what}.{k}")) for k, v in m.items())


CONDITION_OPS = ("all", "any", "change", "not", "services_at_least", "severity", "signal")


def _cond(ctx: _Ctx, value: Any, line: int) -> Cond:
    m = _expect_map(ctx, value, line, "a condition")
    if not m:
        raise ctx.fail(m.line, "empty condition")
    parts = []
    for key, v in m.items():
        kl = _line(m, key)
        if key not in CONDITION_OPS:
            raise ctx.fail(kl, f"unknown condition {key!r} (known: {', '.join(CONDITION_OPS)})")
        where = ctx.at(kl)
        if key in ("all", "any"):
            items = _expect_list(ctx, v, kl, key)
            if not items:
                raise ctx.fail(kl, f"{key} needs at least one condition")
            parts.append(Cond(op=key, children=tuple(_cond(ctx, c, ln) for c, ln in zip(items, items.item_lines,
                                                                                            strict=True)),
                              where=where))
        elif key == "not":
            parts.append(Cond(op="not", children=(_cond(ctx, v, kl),), where=where))
        elif key == "signal":
            s = _expect_map(ctx, v if v is not None else _empty_map(kl), kl, "signal")
            _known_keys(ctx, s, ("kind", "metric", "direction", "min_score", "service"), "signal")
            kinds = _globs(ctx, s["kind"], _line(s, "kind"), "signal.kind") if "kind" in s else ()
            for k in kinds:
                if k not in ("metric", "log", "drift", "change"):
                    raise ctx.fail(_line(s, "kind"), f"signal.kind {k!r} is not one of metric, log, drift, change")
            direction = s.get("direction")
            if direction is not None and direction not in ("up", "down"):
                raise ctx.fail(_line(s, "direction"), f"signal.direction must be up or down, got {direction!r}")
            parts.append(Cond(op="signal", where=where, signal=SignalCond(
                kinds=kinds,
                metrics=_globs(ctx, s["metric"], _line(s, "metric"), "signal.metric") if "metric" in s else (),
                direction=direction,
                min_score=_number(ctx, s["min_score"], _line(s, "min_score"), "signal.min_score",
                                  minimum=-1e9) if "min_score" in s else None,
                services=_globs(ctx, s["service"], _line(s, "service"), "signal.service") if "service" in s else (),
            )))
        elif key == "change":
            c = _expect_map(ctx, v if v is not None else _empty_map(kl), kl, "change")
            _known_keys(ctx, c, ("type", "within_s"), "change")
            parts.append(Cond(op="change", where=where, change=ChangeCond(
                types=_globs(ctx, c["type"], _line(c, "type"), "change.type") if "type" in c else (),
                within_s=_number(ctx, c["within_s"], _line(c, "within_s"), "change.within_s")
                if "within_s" in c else 1800.0,
            )))
        elif key == "services_at_least":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ctx.fail(kl, f"services_at_least must be a positive integer, got {v!r}")
            parts.append(Cond(op="services_at_least", number=v, where=where))
        else:  # severity
            vals = _globs(ctx, v, kl, "severity")
            for x in vals:
                if x not in SEVERITIES:
                    raise ctx.fail(kl, f"severity {x!r} is not one of {', '.join(SEVERITIES)}")
            parts.append(Cond(op="severity", values=vals, where=where))
    return parts[0] if len(parts) == 1 else Cond(op="all", children=tuple(parts), where=ctx.at(m.line))


def _empty_map(line: int) -> _Map:
    m = _Map()
    m.line, m.key_lines = line, {}
    return m


# -- sections -----------------------------------------------------------------------------


def _alerts(ctx: _Ctx, value: Any, line: int) -> AlertRules:
    m = _expect_map(ctx, value, line, "alerts")
    _known_keys(ctx, m, ("labels", "annotations", "routes", "severity"), "alerts")
    labels = dict(AlertRules().labels)
    if "labels" in m:
        labels.update(_string_map(ctx, m["labels"], _line(m, "labels"), "alerts.labels"))
    annotations = _string_map(ctx, m["annotations"], _line(m, "annotations"), "alerts.annotations") \
        if "annotations" in m else ()
    routes = []
    if "routes" in m:
        items = _expect_list(ctx, m["routes"], _line(m, "routes"), "alerts.routes")
        for item, il in zip(items, items.item_lines, strict=True):
            r = _expect_map(ctx, item, il, "a route")
            _known_keys(ctx, r, ("match", "labels", "annotations"), "a route")
            match: list[tuple[str, tuple[str, ...]]] = []
            if "match" in r:
                mm = _expect_map(ctx, r["match"], _line(r, "match"), "route.match")
                match = [(k, _globs(ctx, v, _line(mm, k), f"match.{k}")) for k, v in mm.items()]
            routes.append(Route(
                match=tuple(match),
                labels=_string_map(ctx, r["labels"], _line(r, "labels"), "route.labels") if "labels" in r else (),
                annotations=_string_map(ctx, r["annotations"], _line(r, "annotations"), "route.annotations")
                if "annotations" in r else (),
                where=ctx.at(il),
            ))
    sev_rules = []
    if "severity" in m:
        items = _expect_list(ctx, m["severity"], _line(m, "severity"), "alerts.severity")
        for item, il in zip(items, items.item_lines, strict=True):
            r = _expect_map(ctx, item, il, "a severity rule")
            _known_keys(ctx, r, ("when", "severity"), "a severity rule")
            if "severity" not in r or r["severity"] not in SEVERITIES:
                raise ctx.fail(_line(r, "severity"), f"severity must be one of {', '.join(SEVERITIES)}")
            when = _cond(ctx, r["when"], _line(r, "when")) if "when" in r else TRUE
            sev_rules.append(SeverityRule(when=when, severity=r["severity"], where=ctx.at(il)))
    return AlertRules(labels=tuple(labels.items()), annotations=annotations, routes=tuple(routes),
                      severity=tuple(sev_rules))


def _remediations(ctx: _Ctx, value: Any, line: int) -> list[Remediation]:
    items = _expect_list(ctx, value, line, "remediations")
    out = []
    for item, il in zip(items, items.item_lines, strict=True):
        r = _expect_map(ctx, item, il, "a remediation")
        _known_keys(ctx, r, ("name", "action", "when", "scope", "target", "params", "reason", "continue",
                             "plan_within_s"), "a remediation")
        for required in ("name", "action", "when"):
            if required not in r:
                raise ctx.fail(il, f"a remediation needs {required!r}")
        for key in ("name", "action"):
            if not isinstance(r[key], str) or not r[key]:
                raise ctx.fail(_line(r, key), f"{key} must be a non-empty string")
        scope = r.get("scope", "top_cause")
        if scope not in SCOPES:
            raise ctx.fail(_line(r, "scope"), f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        cont = r.get("continue", False)
        if not isinstance(cont, bool):
            raise ctx.fail(_line(r, "continue"), "continue must be true or false")
        out.append(Remediation(
            name=r["name"], action=r["action"], when=_cond(ctx, r["when"], _line(r, "when")), scope=scope,
            target=_string_map(ctx, r["target"], _line(r, "target"), "target") if "target" in r else (),
            params=_string_map(ctx, r["params"], _line(r, "params"), "params") if "params" in r else (),
            reason=_template(ctx, r["reason"], _line(r, "reason"), "reason") if "reason" in r else "",
            continue_=cont, where=ctx.at(il),
            plan_within_s=_number(ctx, r["plan_within_s"], _line(r, "plan_within_s"), "plan_within_s")
            if "plan_within_s" in r else 900.0,
        ))
    _unique_names(out)
    return out


def _unique_names(remediations: Sequence[Remediation]) -> None:
    seen: dict[str, str] = {}
    for r in remediations:
        if r.name in seen:
            raise RulesError(f"{r.where}: remediation name {r.name!r} is used twice (first at {seen[r.name]})")
        seen[r.name] = r.where


def _topology(ctx: _Ctx, value: Any, line: int) -> list[tuple[str, tuple[str, ...]]]:
    m = _expect_map(ctx, value, line, "topology")
    out = []
    for caller, callees in m.items():
        if callees is None:
            callees = []
        if isinstance(callees, str):
            callees = [callees]
        if not isinstance(callees, list) or not all(isinstance(c, str) for c in callees):
            raise ctx.fail(_line(m, caller), f"topology.{caller} must be a list of callee service names")
        out.append((caller, tuple(callees)))
    return out


def parse_rules(files: Mapping[str, str]) -> Rules:
    """Validate rules given as ``{file name: YAML text}`` (the tests' and doctest's entry point)."""
    alerts: AlertRules | None = None
    remediations: list[Remediation] = []
    topology: list[tuple[str, tuple[str, ...]]] = []
    for source, text in files.items():
        ctx = _Ctx(source)
        doc = _parse_yaml(text, source)
        if doc is None:
            continue
        if Path(source).name == TOPOLOGY_FILE and isinstance(doc, _Map) and "topology" not in doc:
            topology.extend(_topology(ctx, doc, doc.line))
            continue
        if not isinstance(doc, _Map):
            raise ctx.fail(getattr(doc, "line", 1), "top level must be a mapping (alerts:, remediations:, topology:)")
        for key, value in doc.items():
            kl = _line(doc, key)
            if key == "alerts":
                if alerts is not None:
                    raise ctx.fail(kl, "'alerts' is defined in more than one file")
                alerts = _alerts(ctx, value, kl)
            elif key == "remediations":
                if value is not None:
                    remediations.extend(_remediations(ctx, value, kl))
            elif key == "topology":
                topology.extend(_topology(ctx, value, kl))
            else:
                raise ctx.fail(kl, f"unknown section {key!r} (known: alerts, remediations, topology)")
    _unique_names(remediations)
    return Rules(alerts=alerts or AlertRules(), remediations=tuple(remediations), topology=tuple(topology),
                 files=tuple(files))


def load_rules(rules_dir: Path) -> Rules:
    """Read and validate every ``*.yaml`` / ``*.yml`` in ``rules_dir``; raise :class:`RulesError`.

    ``detectors.yaml`` and ``actions.yaml`` belong to other stages: they are handed to the
    detect stage's and the act stage's loaders (when present), so one command checks every
    file a user may edit.
    """
    if not rules_dir.is_dir():
        raise RulesError(f"{rules_dir}: not a directory")
    files: dict[str, str] = {}
    detectors: tuple[Any, ...] = ()
    for path in sorted([*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")]):
        if path.name == DETECTORS_FILE:
            detectors = tuple(_load_detectors(path))
            continue
        if path.name == ACTIONS_FILE:
            continue
        try:
            files[str(path)] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(f"{path}: cannot read: {exc}") from None
    rules = parse_rules(files)
    return Rules(alerts=rules.alerts, remediations=rules.remediations, topology=rules.topology,
                 detector_overrides=detectors, action_rules=_load_actions(rules_dir),
                 files=tuple(str(p) for p in sorted(rules_dir.glob("*.y*ml"))))


def _foreign_loader(module: str, name: str, error: str) -> tuple[Any, type[Exception]]:
    """Another stage's loader and its error class, or ``(None, ValueError)`` when absent."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None, ValueError
    err = getattr(mod, error, ValueError)
    return getattr(mod, name, None), err if isinstance(err, type) and issubclass(err, Exception) else ValueError


def _load_actions(rules_dir: Path) -> Any:
    loader, error = _foreign_loader("aiops.act.rules", "load_action_rules", "ActionRulesError")
    if loader is None:
        return None
    try:
        return loader(rules_dir)
    except error as exc:  # already names file:line
        raise RulesError(str(exc)) from None


def _load_detectors(path: Path) -> list[Any]:
    loader, error = _foreign_loader("aiops.detect.overrides", "load_overrides", "OverrideError")
    if loader is None:
        return []
    try:
        return list(loader(path))
    except error as exc:  # already names file:line
        raise RulesError(str(exc)) from None
