"""The rules/detectors.yaml loader: valid files load, invalid ones fail with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiops.detect import MetricOverride, OverrideError, load_overrides, parse_overrides
from aiops.detect.overrides import resolve

REPO = Path(__file__).resolve().parents[2]


def test_bundled_file_loads() -> None:
    overrides = load_overrides(REPO / "rules" / "detectors.yaml")
    assert overrides and all(isinstance(o, MetricOverride) for o in overrides)


def test_fields_and_matching() -> None:
    text = """overrides:
  - metric: "http_*"
    sensitivity: 2
  - metric: "http_request_duration_seconds:p99"
    service: "check*"
    min_duration: 3
    direction: both
"""
    o = parse_overrides(text)
    assert o[1].line == 4
    r = resolve(o, "http_request_duration_seconds:p99", "checkout")
    assert (r.sensitivity, r.direction, r.min_duration) == (2.0, "both", 3)
    r = resolve(o, "http_request_duration_seconds:p99", "cart")
    assert (r.sensitivity, r.direction, r.min_duration) == (2.0, None, None)
    assert resolve(o, "container_memory_working_set_bytes", None).sensitivity is None


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("overrides:\n  - metric: a\n    direction: sideways\n", 3, "direction"),
    ("overrides:\n  - metric: a\n  - service: b\n", 3, "needs 'metric'"),
    ("overrides:\n  - metric: a\n    sensitivity: -1\n", 3, "sensitivity"),
    ("overrides:\n  - metric: a\n    min_duration: 1.5\n", 3, "min_duration"),
    ("overrides:\n  - metric: a\n    colour: red\n", 3, "unknown field"),
    ("overides: []\n", 1, "unknown top-level"),
    ("overrides:\n  - metric: [a\n", 3, "invalid YAML"),
    ("overrides: 3\n", 1, "must be a list"),
])
def test_errors_name_the_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "detectors.yaml"
    path.write_text(text)
    with pytest.raises(OverrideError) as err:
        load_overrides(path)
    assert str(err.value).startswith(f"{path}:{line}:"), str(err.value)
    assert fragment in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OverrideError):
        load_overrides(tmp_path / "nope.yaml")


def test_empty_file_means_no_overrides() -> None:
    assert parse_overrides("") == [] and parse_overrides("overrides:\n") == []


@pytest.mark.parametrize("value", ["1" + "0" * 400, "-" + "1" + "0" * 400, ".nan", "1e400"])
def test_absurd_sensitivity_is_refused_not_a_crash(value: str) -> None:
    with pytest.raises(OverrideError, match="detectors.yaml:3: sensitivity"):
        parse_overrides(f"overrides:\n  - metric: x\n    sensitivity: {value}\n", "detectors.yaml")
