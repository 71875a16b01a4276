"""Read a scenario directory (SCENARIO_FORMAT.md) into typed records.

``scenario.yaml`` is required and validated; ``metrics.jsonl``, ``logs.jsonl`` and
``events.jsonl`` are optional (a ``.jsonl.gz`` file is read when the plain one is absent,
which keeps large bundled scenarios small). Bad lines are counted in :class:`Rejects`
with file and line number and skipped; the replay goes on.
"""

from __future__ import annotations

import gzip
import heapq
import io
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from aiops.decode.jsonline import DecodeError, decode_event, decode_log, decode_metric, parse_json
from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, LogRecord, MetricSample, Record

MAX_LINE_BYTES = 4 * 1024 * 1024
"""Lines longer than this are skipped unread (a log message is truncated far below it anyway)."""


class ScenarioError(Exception):
    """The scenario directory cannot be replayed; the message says why and where."""


@dataclass(frozen=True, slots=True)
class ExpectedIncident:
    service: str
    fault_start: float
    detect_within: float
    metric: str | None = None
    template: str | None = None
    actions: tuple[str, ...] | None = None  # None: not specified, any action allowed


@dataclass(frozen=True, slots=True)
class Expect:
    incidents: tuple[ExpectedIncident, ...] = ()
    quiet: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    path: Path
    name: str
    description: str
    step: float | None
    topology: dict[str, tuple[str, ...]] = field(default_factory=dict)
    expect: Expect | None = None


def load_scenario(path: Path) -> Scenario:
    """Load and validate ``scenario.yaml``; raise :class:`ScenarioError` with one clear message."""
    if not path.is_dir():
        raise ScenarioError(f"{path}: not a directory")
    spec_path = path / "scenario.yaml"
    if not spec_path.is_file():
        raise ScenarioError(f"{spec_path}: missing (a scenario directory needs scenario.yaml)")
    try:
        doc = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{spec_path}{at}: invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{spec_path}: unreadable: {exc}") from None
    except RecursionError:  # thousands of nested brackets: PyYAML's parser recurses per level
        raise ScenarioError(f"{spec_path}: invalid YAML: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"{spec_path}: top level must be a mapping")
    where = str(spec_path)
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: 'name' is required and must be a string")
    description = doc.get("description")
    if not isinstance(description, str):
        raise ScenarioError(f"{where}: 'description' is required and must be a string")
    step = doc.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                             or not 0 < _num(step, "'step'", where) < math.inf):
        raise ScenarioError(f"{where}: 'step' must be a positive number of seconds")
    return Scenario(
        path=path,
        name=name,
        description=description,
        step=float(step) if step is not None else None,
        topology=_topology(doc.get("topology"), where),
        expect=_expect(doc.get("expect"), where),
    )


def _topology(raw: Any, where: str) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: 'topology' must map a caller to a list of callees")
    out: dict[str, tuple[str, ...]] = {}
    for caller, callees in raw.items():
        if isinstance(callees, str):
            callees = [callees]
        if callees is None:
            callees = []
        if not isinstance(callees, list) or not all(isinstance(c, str) for c in callees):
            raise ScenarioError(f"{where}: topology.{caller} must be a list of service names")
        out[str(caller)] = tuple(callees)
    return out


def _num(raw: Any, what: str, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ScenarioError(f"{where}: {what} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond float range
        value = math.inf
    if not math.isfinite(value):
        raise ScenarioError(f"{where}: {what} must be a finite number, got {str(raw)[:40]}")
    return value


def _expect(raw: Any, where: str) -> Expect | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: 'expect' must be a mapping")
    incidents = []
    for key in ("incidents", "quiet"):
        if not isinstance(raw.get(key) or [], list):
            raise ScenarioError(f"{where}: expect.{key} must be a list")
    for i, inc in enumerate(raw.get("incidents") or []):
        at = f"expect.incidents[{i}]"
        if not isinstance(inc, dict):
            raise ScenarioError(f"{where}: {at} must be a mapping")
        rc = inc.get("root_cause")
        if not isinstance(rc, dict) or not isinstance(rc.get("service"), str):
            raise ScenarioError(f"{where}: {at}.root_cause.service is required")
        for key in ("metric", "template"):
            if rc.get(key) is not None and not isinstance(rc.get(key), str):
                raise ScenarioError(f"{where}: {at}.root_cause.{key} must be a string")
        actions = inc.get("actions")
        if actions is not None and (not isinstance(actions, list) or not all(isinstance(a, str) for a in actions)):
            raise ScenarioError(f"{where}: {at}.actions must be a list of action types")
        incidents.append(ExpectedIncident(
            service=rc["service"],
            metric=rc.get("metric"),
            template=rc.get("template"),
            fault_start=_num(inc.get("fault_start"), f"{at}.fault_start", where),
            detect_within=_num(inc.get("detect_within", 600), f"{at}.detect_within", where),
            actions=tuple(actions) if actions is not None else None,
        ))
    quiet = []
    for i, span in enumerate(raw.get("quiet") or []):
        if not isinstance(span, list) or len(span) != 2:
            raise ScenarioError(f"{where}: expect.quiet[{i}] must be [start, end]")
        quiet.append((_num(span[0], f"expect.quiet[{i}][0]", where), _num(span[1], f"expect.quiet[{i}][1]", where)))
    return Expect(incidents=tuple(incidents), quiet=tuple(quiet))


def _open(path: Path) -> IO[bytes] | None:
    if path.is_file():
        return path.open("rb")
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gzip.open(gz, "rb")
    return None


def _read_lines(
    path: Path, decode: Callable[[Any], Record], rejects: Rejects
) -> Iterator[Record]:
    stream = _open(path)
    if stream is None:
        return
    lineno = 0
    try:
        with stream:
            reader = io.BufferedReader(stream) if not isinstance(stream, io.BufferedReader) else stream
            while True:
                line = reader.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                lineno += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    rejects.reject("scenario", "line_too_long", where=f"{path.name}:{lineno}")
                    while line and not line.endswith(b"\n"):  # skip the rest of the line
                        line = reader.readline(MAX_LINE_BYTES)
                    continue
                if not line.strip():
                    continue
                try:
                    yield decode(parse_json(line))
                except DecodeError as exc:
                    rejects.reject("scenario", exc.reason, where=f"{path.name}:{lineno}", detail=exc.detail)
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated or damaged .gz (an interrupted copy): keep what was read, count the rest as lost.
        rejects.reject("scenario", "unreadable_file", where=f"{path.name}:{lineno + 1}", detail=str(exc)[:200])


def _ts_key(record: Record) -> float:
    return record.ts


def read_records(scenario: Scenario, rejects: Rejects) -> Iterator[Record]:
    """All records of the scenario, the three files merged by timestamp.

    The merge assumes each file is roughly in order (the contract says non-decreasing);
    residual disorder is the runtime's job (its watermark tolerates bounded lateness).
    """
    streams: list[Iterator[Record]] = [
        _read_lines(scenario.path / "metrics.jsonl", decode_metric, rejects),
        _read_lines(scenario.path / "logs.jsonl", decode_log, rejects),
        _read_lines(scenario.path / "events.jsonl", decode_event, rejects),
    ]
    return heapq.merge(*streams, key=_ts_key)


__all__ = [
    "ChangeEvent", "Expect", "ExpectedIncident", "LogRecord", "MetricSample", "Scenario",
    "ScenarioError", "load_scenario", "read_records",
]
