"""``aiops replay`` on hostile scenario directories: bad lines are reported, bad specs are one clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aiops.cli import main

RULES = Path(__file__).resolve().parents[2] / "rules"


def scenario_with_bad_input(d: Path) -> Path:
    d.mkdir()
    (d / "scenario.yaml").write_text(
        "name: hostile\ndescription: every kind of bad line\nstep: 15\n"
        "expect:\n  incidents: []\n  quiet: [[0, 99999999999]]\n"
    )
    lines = []
    for i in range(400):
        ts = 1_767_225_600 + 15 * i
        lines.append(json.dumps({"ts": ts, "name": "http_requests_total",
                                 "labels": {"service": "api", "code": "200"}, "value": 100 * i,
                                 "unknown": {"nested": [1, 2]}}))
        if i % 50 == 7:
            lines.append(json.dumps({"ts": ts, "name": "http_requests_total",  # duplicate sample
                                     "labels": {"service": "api", "code": "200"}, "value": 100 * i}))
        if i % 60 == 3:
            lines.append("{broken json")
            lines.append(json.dumps({"ts": ts, "name": "temp", "labels": {"service": "api"}, "value": math.nan}))
            lines.append('{"ts": %d, "name": "temp", "labels": {"service": "api"}, "value": Infinity}' % ts)
        if i % 90 == 5:
            lines.append(json.dumps({"ts": ts - 40, "name": "temp", "labels": {"service": "api"}, "value": 1.0}))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (d / "logs.jsonl").write_text(
        json.dumps({"ts": 1_767_225_700, "service": "api", "level": "INFO", "message": "x" * 1_000_000}) + "\n"
        + "not json at all\n"
    )
    # events.jsonl is absent: optional files mean "none"
    return d


def test_hostile_scenario_replays_and_reports_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = scenario_with_bad_input(tmp_path / "hostile")
    out = tmp_path / "out.jsonl"
    code = main(["replay", str(d), "--out", str(out), "--check"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "bad records skipped" in printed
    assert "metrics.jsonl:" in printed and "logs.jsonl:2" in printed
    assert "duplicate_sample" in printed and "bad_json" in printed and "infinite_value" in printed
    assert "check: passed" in printed
    assert out.exists()


@pytest.mark.parametrize("spec", [None, "name: [oops", "description: nameless\n"])
def test_missing_or_invalid_scenario_yaml_is_one_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str | None
) -> None:
    d = tmp_path / "s"
    d.mkdir()
    if spec is not None:
        (d / "scenario.yaml").write_text(spec)
    assert main(["replay", str(d)]) == 2
    err = capsys.readouterr().err
    assert "scenario.yaml" in err and len(err.strip().splitlines()) == 1
