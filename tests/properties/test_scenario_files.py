"""Hostile scenario directories: clean records or a ScenarioError, and every bad line counted with a reason."""

from __future__ import annotations

import gzip
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from aiops.decode.jsonline import DecodeError, decode_event, decode_log, decode_metric, parse_json
from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, LogRecord, MetricSample
from aiops.sources.scenario import Scenario, ScenarioError, load_scenario, read_records
from tests.properties.strategies import (
    EXAMPLES,
    dumps,
    event_objects,
    hostile_lines,
    json_values,
    log_objects,
    metric_objects,
    mostly,
    text,
)

FILES = {"metrics.jsonl": (decode_metric, metric_objects), "logs.jsonl": (decode_log, log_objects),
         "events.jsonl": (decode_event, event_objects)}


def _lines(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[list[bytes]]:
    line = objects.map(lambda o: dumps(o).encode()) | hostile_lines | st.just(b"   ")
    # A line is whatever sits between newlines: garbage may not carry its own.
    return st.lists(line.map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")), max_size=12)


def _expected_ok(decode: Any, line: bytes) -> bool | None:
    """What the contract says one line must become: a record (True), a rejection (False), nothing (None)."""
    if not line.strip():
        return None
    try:
        decode(parse_json(line))
    except DecodeError:
        return False
    return True


@EXAMPLES
@given(metrics=_lines(metric_objects), logs=_lines(log_objects), events=_lines(event_objects),
       gz=st.sampled_from(sorted(FILES)) | st.none(), crlf=st.booleans())
def test_every_line_is_a_record_or_a_counted_rejection(metrics: list[bytes], logs: list[bytes], events: list[bytes],
                                                       gz: str | None, crlf: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        (path / "scenario.yaml").write_text("name: t\ndescription: hostile\nstep: 15\n")
        want_ok = want_bad = 0
        for (fname, (decode, _)), lines in zip(FILES.items(), (metrics, logs, events), strict=True):
            for line in lines:
                ok = _expected_ok(decode, line)
                want_ok += ok is True
                want_bad += ok is False
            blob = (b"\r\n" if crlf else b"\n").join(lines)
            if fname == gz:
                (path / (fname + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (path / fname).write_bytes(blob)
        rejects = Rejects(log_examples=False)
        records = list(read_records(load_scenario(path), rejects))
    assert len(records) == want_ok
    assert rejects.total == want_bad
    assert all(stage == "scenario" and reason for stage, reason in rejects.by_reason())
    for r in records:
        assert isinstance(r, MetricSample | LogRecord | ChangeEvent)
        assert math.isfinite(r.ts) and r.ts >= 0


@EXAMPLES
@given(data=st.binary(max_size=200), cut=st.integers(0, 200), which=st.sampled_from(sorted(FILES)))
def test_damaged_gzip_file_is_counted_not_raised(data: bytes, cut: int, which: str) -> None:
    good = dumps({"ts": 1.0, "name": "up", "labels": {"service": "a"}, "value": 1}).encode() + b"\n"
    full = gzip.compress(good * 3, mtime=0)
    # A valid head and a damaged tail: what an interrupted download leaves.
    blob = full[: min(cut, len(full) - 1)] + data
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        (path / "scenario.yaml").write_text("name: t\ndescription: hostile\n")
        (path / (which + ".gz")).write_bytes(blob)
        rejects = Rejects(log_examples=False)
        records = list(read_records(load_scenario(path), rejects))
    assert all(isinstance(r, MetricSample | LogRecord | ChangeEvent) for r in records)
    # Nothing lost silently: every record came through (gzip tolerates some trailing padding), or the
    # loss was counted. An empty file is an empty file.
    assert len(records) == 3 or rejects.total >= 1 or not blob, (blob, records)


odd_numbers = st.sampled_from([0, -1, True, "15", 10**400, math.inf, math.nan, None]) | json_values
yaml_docs = st.fixed_dictionaries({
    "name": mostly(st.just("n"), st.just("") | json_values, 6),
    "description": mostly(text, json_values, 6),
}, optional={
    "step": mostly(st.floats(0.5, 60), odd_numbers, 2),
    "topology": mostly(st.dictionaries(text, st.lists(text, max_size=3) | text | st.none(), max_size=3),
                       json_values, 3),
    "expect": mostly(st.fixed_dictionaries({}, optional={
        "incidents": mostly(st.lists(mostly(st.fixed_dictionaries({
            "root_cause": mostly(st.fixed_dictionaries({"service": text}, optional={"metric": text | json_values,
                                                                                    "template": text | json_values}),
                                 json_values, 6),
            "fault_start": mostly(st.floats(0, 2e9), odd_numbers, 3),
        }, optional={
            "detect_within": mostly(st.floats(0, 900), odd_numbers, 3),
            "actions": mostly(st.lists(text, max_size=2), json_values, 3),
        }), json_values, 6), max_size=3), json_values, 6),
        "quiet": mostly(st.lists(mostly(st.tuples(st.floats(0, 2e9), st.floats(0, 2e9)).map(list),
                                        st.lists(odd_numbers, max_size=3), 3), max_size=3), json_values, 6),
    }), json_values, 6),
})


def _yaml_text(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return "name: [unclosed"


@EXAMPLES
@given(spec=yaml_docs.map(_yaml_text) | text | st.sampled_from([
    "", "---\n---\n", "a: &x [*x]", "!!python/object:os.system {}", "[" * 1200, "name: " + "[" * 1200]))
def test_scenario_yaml_is_loaded_or_refused_clearly(spec: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        (path / "scenario.yaml").write_text(spec, encoding="utf-8")
        try:
            sc = load_scenario(path)
        except ScenarioError as exc:
            assert str(exc).startswith(str(path))
            return
    assert isinstance(sc, Scenario) and isinstance(sc.name, str) and sc.name.strip()
    assert sc.step is None or (math.isfinite(sc.step) and sc.step > 0)
    if sc.expect is not None:
        for inc in sc.expect.incidents:
            assert math.isfinite(inc.fault_start) and math.isfinite(inc.detect_within)
        assert all(math.isfinite(a) and math.isfinite(b) for a, b in sc.expect.quiet)


def test_known_hostile_scenario_yaml_is_refused() -> None:
    """Regressions found by the properties above (each used to raise something else than ScenarioError)."""
    head = "name: a\ndescription: b\n"
    inc = "expect:\n  incidents:\n  - root_cause: {service: a}\n    fault_start: "
    for body in [inc + "1" + "0" * 400, inc + ".inf", inc + "1\n    detect_within: 1" + "0" * 400,
                 "expect:\n  incidents: 5\n", "expect:\n  quiet: 7\n", "expect:\n  quiet: [[0, .nan]]\n",
                 "step: .nan\n", "step: .inf\n", "step: 1" + "0" * 400 + "\n",
                 inc + "1\n    root_cause: {service: a, metric: [x]}\n", "[" * 1200]:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "scenario.yaml").write_text(head + body if not body.startswith("[") else body)
            try:
                load_scenario(Path(d))
            except ScenarioError:
                continue
            raise AssertionError(f"accepted: {body[:60]!r}")
