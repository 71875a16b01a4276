"""Per-metric detector overrides from ``rules/detectors.yaml``.

The file holds a list of entries under ``overrides:``; each matches series by a glob on the
derived metric name and, optionally, a glob on the service, and sets any of: ``sensitivity``
(multiplies the deviation before scoring; 2 = twice as touchy), ``direction`` (``up``,
``down`` or ``both``: which way is bad), ``min_duration`` (anomalous steps before an onset).
Entries apply in file order; a later match overrides the fields it sets. Errors name the
file and line.

>>> o = parse_overrides("overrides:\\n  - metric: 'http_*:p99'\\n    direction: up\\n")
>>> o[0].direction, o[0].line, o[0].matches("http_request_duration_seconds:p99", "api")
('up', 2, True)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

_DIRECTIONS = ("up", "down", "both")
_FIELDS = {"metric", "service", "sensitivity", "direction", "min_duration"}


class OverrideError(ValueError):
    """``rules/detectors.yaml`` is invalid; the message starts with ``file:line``."""


@dataclass(frozen=True, slots=True)
class MetricOverride:
    """Detector settings for the series whose metric (and service) match the globs."""

    metric: str
    service: str | None = None
    sensitivity: float | None = None
    direction: str | None = None
    min_duration: int | None = None
    line: int = 0

    def matches(self, metric: str, service: str | None) -> bool:
        if not fnmatch.fnmatchcase(metric, self.metric):
            return False
        if self.service is None:
            return True
        return service is not None and fnmatch.fnmatchcase(service, self.service)


@dataclass(frozen=True, slots=True)
class ResolvedOverride:
    """The merged effect of every override matching one series (None = default)."""

    sensitivity: float | None = None
    direction: str | None = None
    min_duration: int | None = None


def resolve(overrides: Sequence[MetricOverride], metric: str, service: str | None) -> ResolvedOverride:
    """Merge the matching overrides in order (later entries win field by field)."""
    sens: float | None = None
    direction: str | None = None
    min_dur: int | None = None
    for o in overrides:
        if o.matches(metric, service):
            sens = o.sensitivity if o.sensitivity is not None else sens
            direction = o.direction if o.direction is not None else direction
            min_dur = o.min_duration if o.min_duration is not None else min_dur
    return ResolvedOverride(sens, direction, min_dur)


def load_overrides(path: Path | str) -> list[MetricOverride]:
    """Read and validate an overrides file; raises :class:`OverrideError` with ``file:line``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise OverrideError(f"{p}: {exc}") from exc
    return parse_overrides(text, str(p))


def parse_overrides(text: str, source: str = "<string>") -> list[MetricOverride]:
    """Validate overrides given as YAML text (``source`` names it in errors)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise OverrideError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError:  # thousands of nested brackets: PyYAML recurses per level
        raise OverrideError(f"{source}: invalid YAML: nested too deeply") from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise OverrideError(f"{source}:{root.start_mark.line + 1}: top level must be a mapping with 'overrides:'")
    entries_node = None
    for k, v in root.value:
        if k.value != "overrides":
            raise OverrideError(f"{source}:{k.start_mark.line + 1}: unknown top-level key {k.value!r}")
        entries_node = v
    if entries_node is None or (isinstance(entries_node, yaml.ScalarNode) and entries_node.value in ("", "null", "~")):
        return []
    if not isinstance(entries_node, yaml.SequenceNode):
        raise OverrideError(f"{source}:{entries_node.start_mark.line + 1}: 'overrides' must be a list")
    return [_entry(node, source) for node in entries_node.value]


def _entry(node: yaml.Node, source: str) -> MetricOverride:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise OverrideError(f"{source}:{line}: each override must be a mapping")
    fields: dict[str, object] = {}
    for k, v in node.value:
        kline = k.start_mark.line + 1
        if k.value not in _FIELDS:
            raise OverrideError(f"{source}:{kline}: unknown field {k.value!r} (allowed: {', '.join(sorted(_FIELDS))})")
        if not isinstance(v, yaml.ScalarNode):
            raise OverrideError(f"{source}:{kline}: {k.value} must be a single value")
        fields[k.value] = (yaml.safe_load(v.value) if v.style is None else v.value, kline)
    if "metric" not in fields:
        raise OverrideError(f"{source}:{line}: override needs 'metric' (a glob on the derived metric name)")

    def get(name: str) -> tuple[object, int] | None:
        return fields.get(name)  # type: ignore[return-value]

    metric, mline = get("metric")  # type: ignore[misc]
    if not isinstance(metric, str) or not metric:
        raise OverrideError(f"{source}:{mline}: metric must be a non-empty string")
    service = None
    if (got := get("service")) is not None:
        service = got[0]
        if not isinstance(service, str) or not service:
            raise OverrideError(f"{source}:{got[1]}: service must be a non-empty string")
    sensitivity = None
    if (got := get("sensitivity")) is not None:
        val = got[0]
        # compared as is: float() of a 400-digit integer raises OverflowError
        if isinstance(val, bool) or not isinstance(val, int | float) or not 0 < val <= 100:
            raise OverrideError(f"{source}:{got[1]}: sensitivity must be a number in (0, 100], got {val!r}")
        sensitivity = float(val)
    direction = None
    if (got := get("direction")) is not None:
        if got[0] not in _DIRECTIONS:
            raise OverrideError(f"{source}:{got[1]}: direction must be one of {', '.join(_DIRECTIONS)}, got {got[0]!r}")
        direction = str(got[0])
    min_duration = None
    if (got := get("min_duration")) is not None:
        val = got[0]
        if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 1000:
            raise OverrideError(f"{source}:{got[1]}: min_duration must be an integer in [1, 1000], got {val!r}")
        min_duration = val
    return MetricOverride(metric, service, sensitivity, direction, min_duration, line)
