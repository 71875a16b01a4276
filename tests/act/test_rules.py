"""actions.yaml: safe defaults, validation errors with file:line, and the bundled file is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiops.act.rules import ActionRulesError, load_action_rules, parse_action_rules

REPO = Path(__file__).resolve().parents[2]


def test_absent_file_means_everything_is_a_dry_run(tmp_path: Path) -> None:
    rules = load_action_rules(tmp_path)
    assert all(rules.rule(t).dry_run for t in ("scale_up", "rollback", "retrain", "anything"))


def test_defaults_section_applies_to_every_action() -> None:
    rules = parse_action_rules("defaults: {cooldown_s: 60}\nactions:\n  rollback: {approval: true}\n")
    assert rules.rule("rollback").cooldown_s == 60 and rules.rule("rollback").approval
    assert rules.rule("scale_up").cooldown_s == 60


@pytest.mark.parametrize(("text", "expected"), [
    ("actions:\n  scale_up:\n    max_replicas: -1\n", "x.yaml:3: actions.scale_up.max_replicas: Input should be"),
    ("limits:\n  max_concurent: 1\n", "x.yaml:2: limits.max_concurent: Extra inputs are not permitted"),
    ("maintenance:\n  - name: w\n    start: 2026-01-01T00:00:00\n    end: 5\n",
     "x.yaml:3: maintenance.0.start: time 2026-01-01 00:00:00 needs a timezone"),
    ("silences:\n  - {name: s, start: 10, end: 5}\n", "x.yaml:2: silences.0: end must be after start"),
    ("silences:\n  - {name: s, start: 1" + "0" * 400 + ", end: 5}\n", "x.yaml:2: silences.0.start: expected unix seconds"),
    ("actions:\n  scale_up:\n    preconditions: {signal_names: ['(']}\n",
     "x.yaml:3: actions.scale_up.preconditions.signal_names: bad regex '('"),
    ("retrain: {backend: kafka}\n", "x.yaml:1: retrain: backend kafka needs topic"),
    ("actions: [1, 2\n", "x.yaml:2: invalid YAML"),
])
def test_errors_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ActionRulesError) as err:
        parse_action_rules(text, "x.yaml")
    assert str(err.value).startswith(expected), str(err.value)


def test_bundled_actions_yaml_is_valid_and_safe() -> None:
    rules = load_action_rules(REPO / "rules")
    assert rules.source.endswith("actions.yaml")
    # the shipped file only plans: acting needs an explicit edit as well as the global switch
    assert all(rules.rule(t).dry_run for t in ("scale_up", "rollback", "retrain"))
    assert rules.rule("scale_up").max_replicas == 10
