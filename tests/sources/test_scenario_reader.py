"""The scenario reader: contract form, bad lines counted with file and line, clear errors."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, LogRecord, MetricSample
from aiops.sources.scenario import ScenarioError, load_scenario, read_records


def write_scenario(d: Path, spec: str = "name: t\ndescription: test\nstep: 15\n") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "scenario.yaml").write_text(spec)
    return d


def test_minimal_foreign_scenario_reads(tmp_path: Path) -> None:
    d = write_scenario(tmp_path / "s", "name: foreign\ndescription: only metrics\n")
    (d / "metrics.jsonl").write_text(
        json.dumps({"ts": 1.0, "name": "up", "labels": {"service": "a"}, "value": 1}) + "\n"
    )
    sc = load_scenario(d)
    assert sc.step is None and sc.expect is None and sc.topology == {}
    rejects = Rejects()
    records = list(read_records(sc, rejects))
    assert records == [MetricSample(ts=1.0, name="up", labels=(("service", "a"),), value=1.0)]
    assert rejects.total == 0


def test_bad_lines_are_counted_with_file_and_line(tmp_path: Path) -> None:
    d = write_scenario(tmp_path / "s")
    lines = [
        '{"ts": 1, "name": "up", "labels": {"service": "a"}, "value": 1}',
        "{not json",
        '{"ts": 2, "name": "up", "labels": {"service": "a"}, "value": NaN}',
        '{"ts": 3, "name": "up", "labels": {"service": "a"}, "value": Infinity}',
        '{"ts": "yesterday", "name": "up", "value": 1}',
        '{"ts": 4, "name": "up", "labels": {"service": "a"}, "value": 2, "extra": {"unknown": true}}',
        "[1, 2, 3]",
        "",
    ]
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (d / "logs.jsonl").write_text(
        json.dumps({"ts": 2.5, "service": "a", "level": "warn", "message": "x" * 1_000_000}) + "\n"
        + '{"ts": 2.6, "service": 5, "message": "bad service"}\n'
    )
    (d / "events.jsonl").write_text('{"ts": 3.5, "type": "deploy", "service": "a", "version": "v2"}\n')
    rejects = Rejects()
    records = list(read_records(load_scenario(d), rejects))

    assert [type(r) for r in records] == [MetricSample, MetricSample, LogRecord, ChangeEvent, MetricSample]
    assert math.isnan(records[1].value)  # NaN is a gap, kept for the deriver to handle
    log = records[2]
    assert isinstance(log, LogRecord) and log.level == "WARN" and len(log.message) <= 64 * 1024
    event = records[3]
    assert isinstance(event, ChangeEvent) and event.attr("version") == "v2"
    assert rejects.by_reason() == {
        ("scenario", "bad_json"): 1,
        ("scenario", "infinite_value"): 1,
        ("scenario", "bad_ts"): 1,
        ("scenario", "not_an_object"): 1,
        ("scenario", "bad_service"): 1,
    }
    assert any("metrics.jsonl:2" in line for line in rejects.report())
    assert any("logs.jsonl:2" in line for line in rejects.report())


def test_gzipped_files_are_read_when_plain_is_absent(tmp_path: Path) -> None:
    d = write_scenario(tmp_path / "s")
    with gzip.open(d / "logs.jsonl.gz", "wt") as f:
        f.write(json.dumps({"ts": 5, "service": "a", "message": "hello"}) + "\n")
    assert [r.ts for r in read_records(load_scenario(d), Rejects())] == [5.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "missing"),
        ("name: [unclosed", "invalid YAML"),
        ("- a\n- b\n", "mapping"),
        ("description: no name\n", "'name' is required"),
        ("name: x\ndescription: y\nstep: -1\n", "'step'"),
        ("name: x\ndescription: y\nexpect:\n  incidents:\n    - fault_start: 1\n", "root_cause.service"),
    ],
)
def test_invalid_scenario_yaml_is_one_clear_error(tmp_path: Path, spec: str | None, message: str) -> None:
    d = tmp_path / "s"
    d.mkdir()
    if spec is not None:
        (d / "scenario.yaml").write_text(spec)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(d)
