"""Rules validation: every mistake names file:line; the bundled rules load."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiops.decide.rules import RulesError, load_rules, parse_rules

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"

GOOD = """\
remediations:
  - name: a
    action: rollback
    when:
      all:
        - change: {type: deploy, within_s: 600}
        - signal: {metric: "*:error_ratio"}
"""


def test_bundled_rules_load() -> None:
    rules = load_rules(REPO_RULES)
    assert {r.action for r in rules.remediations} >= {"rollback", "scale_up", "retrain"}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("remediations:\n  - name: a\n    action: rollback\n    when: {signal: {metric: 3}}\n", 4, "signal.metric"),
    ("remediations:\n  - name: a\n    action: rollback\n    when:\n      any: []\n", 5, "at least one"),
    ("remediations:\n  - name: a\n    action: rollback\n", 2, "needs 'when'"),
    ("remediations:\n  - name: a\n    action: x\n    when: {severity: huge}\n", 4, "severity"),
    ("remediations:\n  - name: a\n    action: x\n    when: {signal: {kind: metric}}\n    scope: world\n", 5,
     "scope"),
    ("remediations:\n  - name: a\n    action: x\n    when: {signal: {}}\n    params: {v: '{nope}'}\n", 5,
     "unknown template variable"),
    ("remediations:\n  - name: a\n    action: x\n    when: {signal: {}}\n    colour: red\n", 5, "unknown field"),
    ("alerts:\n  routes:\n    - match: {severity: critical}\n      lables: {team: x}\n", 4, "unknown field"),
    ("alerts:\n  severity:\n    - when: {services_at_least: 0}\n      severity: critical\n", 3,
     "positive integer"),
    ("alerts: {}\nbogus: 1\n", 2, "unknown section"),
    ("remediations:\n  - name: a\n    action: x\n    when: {signal: {direction: sideways}}\n", 4, "up or down"),
    ("remediations: [\n", 2, "invalid YAML"),
    # Numbers float() cannot hold, and NaN (which compares false with any minimum), are refused too.
    ("remediations:\n  - name: a\n    action: x\n    when: {change: {within_s: 1" + "0" * 400 + "}}\n", 4,
     "401 digits"),
    ("remediations:\n  - name: a\n    action: x\n    when: {change: {within_s: .nan}}\n", 4, "finite"),
])
def test_errors_name_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules({"rules/x.yaml": text})
    msg = str(err.value)
    assert msg.startswith(f"rules/x.yaml:{line}:"), msg
    assert words in msg


def test_duplicate_names_across_files() -> None:
    with pytest.raises(RulesError, match=r"b.yaml:2: remediation name 'a' is used twice"):
        parse_rules({"a.yaml": GOOD, "b.yaml": GOOD})


def test_load_rules_checks_detectors_file(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(GOOD)
    (tmp_path / "detectors.yaml").write_text("overrides:\n  - metric: x\n    direction: sideways\n")
    with pytest.raises(RulesError, match=r"detectors.yaml:3"):
        load_rules(tmp_path)


def test_topology_section_and_file(tmp_path: Path) -> None:
    (tmp_path / "topology.yaml").write_text("web: [api]\napi: [db]\n")
    (tmp_path / "more.yaml").write_text("topology:\n  api: cache\n")
    rules = load_rules(tmp_path)
    assert rules.topology_mapping() == {"api": ["cache", "db"]} | {"web": ["api"]} or \
        sorted(rules.topology) == sorted([("web", ("api",)), ("api", ("db",)), ("api", ("cache",))])


def test_load_rules_checks_actions_file(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(GOOD)
    (tmp_path / "actions.yaml").write_text("defaults:\n  dry_run: true\n  cooldown_s: -5\n")
    with pytest.raises(RulesError, match=r"actions.yaml:\d+"):
        load_rules(tmp_path)
